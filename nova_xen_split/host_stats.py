"""What the hypervisor has: CPUs, memory and storage, from XAPI's records.

The old XenAPI driver's ``HostState``, reduced to what Nova's resource
tracker and placement need, and Nova-free: sizes come from the host's
``host_cpu`` records, its ``host_metrics`` and the default SR (the pool's
``default_SR``, where the agent makes every disk). Memory held by the
control domain is reported apart, since no guest can have it.
"""

import collections

MiB = 1024 * 1024
GiB = 1024 ** 3

HostStats = collections.namedtuple("HostStats", [
    "host_uuid", "hostname", "address", "vcpus", "cpu_info", "memory_mb",
    "memory_mb_free", "control_domain_memory_mb", "disk_gb", "disk_gb_used",
    "product_version",
])


def this_host(session):
    """``(host_ref, record)`` of the host the session is on (the pool master
    when the connection URL names a pool)."""
    pool_ref = next(iter(session.call("pool.get_all")))
    host_ref = session.call("pool.get_master", pool_ref)
    return host_ref, session.call("host.get_record", host_ref)


def read(session):
    """A :class:`HostStats` of the served host, in Nova's units."""
    host_ref, host = this_host(session)
    cpus = [session.call("host_cpu.get_record", ref) for ref in host.get("host_CPUs") or []]
    metrics = session.call("host_metrics.get_record", host["metrics"])
    memory_mb = int(metrics["memory_total"]) // MiB
    free_mb = int(metrics["memory_free"]) // MiB
    dom0_mb = 0
    if host.get("control_domain") not in (None, "", "OpaqueRef:NULL"):
        dom0_mb = int(session.call("VM.get_memory_static_max", host["control_domain"])) // MiB
    sr_ref = session.call("pool.get_default_SR", next(iter(session.call("pool.get_all"))))
    sr = session.call("SR.get_record", sr_ref)
    first = cpus[0] if cpus else {}
    software = host.get("software_version") or {}
    return HostStats(
        host_uuid=host["uuid"],
        hostname=host.get("hostname") or host.get("name_label") or "",
        address=host.get("address") or "",
        vcpus=len(cpus),
        cpu_info={"vendor": first.get("vendor"), "model": first.get("modelname"),
                  "features": sorted((first.get("flags") or "").split()),
                  "topology": {"sockets": 1, "cores": len(cpus), "threads": 1}},
        memory_mb=memory_mb,
        memory_mb_free=free_mb,
        control_domain_memory_mb=dom0_mb,
        disk_gb=int(sr["physical_size"]) // GiB,
        disk_gb_used=-(-int(sr["physical_utilisation"]) // GiB),
        product_version=software.get("product_version") or software.get("xapi") or "",
    )
