"""VM records, VBDs and lookups through XAPI: the driver's side of a VM.

The driver owns the VM lifecycle; it never touches a disk's contents. These
helpers take a :class:`nova_xen_split.xenhost.xapi.XapiSession` and plain values.
"""

import logging
import time

from nova_xen_split.xenhost import marks, teardown
from rpc import exceptions

LOG = logging.getLogger(__name__)

# Nova's userdevice numbers, so a guest sees its disks where Nova put them.
USERDEVICE_ROOT = "0"
USERDEVICE_SWAP = "1"
USERDEVICE_EPHEMERAL = "2"
USERDEVICE_CONFIGDRIVE = "3"

# Nova's power_state values, from XAPI's power_state names.
NOSTATE, RUNNING, PAUSED, SHUTDOWN, CRASHED, SUSPENDED = 0, 1, 3, 4, 6, 7
POWER_STATE = {
    "running": RUNNING,
    "paused": PAUSED,
    "halted": SHUTDOWN,
    "suspended": SUSPENDED,
    "crashed": CRASHED,
}

MiB = 1024 * 1024


# Nova's VMMode.canonicalize: the old names of the two modes.
_VM_MODE_NAMES = {"xen": "xen", "pv": "xen", "hvm": "hvm", "hv": "hvm"}


def vm_mode_for(image_meta):
    """'xen' (PV, booted by pygrub) or 'hvm', as Nova's determine_vm_mode
    decided: the image's ``vm_mode``, else its ``os_type`` (linux: PV,
    windows: HVM), else its format (a VHD or ``ami`` image is a PV guest
    with a bootloader; anything else boots as HVM, as most images do)."""
    mode = _VM_MODE_NAMES.get(str(image_meta.properties.get("vm_mode") or "").lower())
    if mode is not None:
        return mode
    os_type = str(image_meta.properties.get("os_type") or "").lower()
    if os_type == "linux":
        return "xen"
    if os_type == "windows":
        return "hvm"
    return "xen" if image_meta.disk_format in ("vhd", "ami") else "hvm"


def vm_record(instance, flavor, vm_mode):
    """The record for ``VM.create``, shaped as Nova's ``create_vm`` made it.

    int64 fields go as strings, as XAPI puts them on the wire.
    """
    memory_bytes = str(int(flavor.memory_mb) * MiB)
    vcpus = str(int(flavor.vcpus))
    record = {
        "name_label": instance.name,
        "name_description": "",
        "is_a_template": False,
        "user_version": "0",
        "memory_static_min": "0",
        "memory_static_max": memory_bytes,
        "memory_dynamic_min": memory_bytes,
        "memory_dynamic_max": memory_bytes,
        "memory_target": memory_bytes,
        "VCPUs_max": vcpus,
        "VCPUs_at_startup": vcpus,
        "VCPUs_params": {},
        "actions_after_shutdown": "destroy",
        "actions_after_reboot": "restart",
        "actions_after_crash": "destroy",
        "affinity": "",
        "blocked_operations": {},
        "ha_always_run": False,
        "ha_restart_priority": "",
        "PV_args": "",
        "PV_bootloader": "",
        "PV_bootloader_args": "",
        "PV_kernel": "",
        "PV_ramdisk": "",
        "PV_legacy_args": "",
        "HVM_boot_policy": "",
        "HVM_boot_params": {},
        "platform": {"acpi": "true", "apic": "true", "pae": "true",
                     "viridian": "true", "timeoffset": "0"},
        "PCI_bus": "",
        "recommendations": "",
        "tags": [],
        "xenstore_data": {"vm-data/allowvssprovider": "false"},
        "other_config": marks.vm_marks(instance.uuid),
    }
    if vm_mode == "xen":
        record["PV_bootloader"] = "pygrub"
        record["PV_args"] = "root=/dev/xvda1 console=hvc0"
    else:
        record["HVM_boot_policy"] = "BIOS order"
        record["HVM_boot_params"] = {"order": "dc"}
    return record


def create_vm(session, instance, flavor, vm_mode):
    vm_ref = session.call("VM.create", vm_record(instance, flavor, vm_mode))
    LOG.debug("Created VM %s for instance %s", vm_ref, instance.uuid)
    return vm_ref


def create_vbd(session, vm_ref, vdi_ref, userdevice, bootable=False, read_only=False):
    """A VBD of a guest's disk (Nova's ``create_vbd``), not plugged."""
    record = {
        "VM": vm_ref,
        "VDI": vdi_ref,
        "userdevice": str(userdevice),
        "bootable": bool(bootable),
        "mode": "RO" if read_only else "RW",
        "type": "Disk",
        "unpluggable": True,
        "empty": False,
        "other_config": {},
        "qos_algorithm_type": "",
        "qos_algorithm_params": {},
        "qos_supported_algorithms": [],
    }
    return session.call("VBD.create", record)


def find_vm(session, instance_uuid):
    """The VM of an instance (by its VM mark, Nova's ``nova_uuid``), or None."""
    for vm_ref, rec in instance_vms(session).items():
        if marks.vm_instance(rec.get("other_config")) == instance_uuid:
            return vm_ref
    return None


def instance_vms(session):
    """``{vm_ref: record}`` of every VM the driver made (it has a VM mark)."""
    return {
        ref: rec for ref, rec in session.call("VM.get_all_records").items()
        if not rec.get("is_a_template") and not rec.get("is_control_domain")
        and marks.vm_instance(rec.get("other_config"))
    }


def power_state(session, vm_ref):
    return POWER_STATE.get(str(session.call("VM.get_power_state", vm_ref)).lower(), NOSTATE)


def start(session, vm_ref):
    """Start the VM (not paused, not forced) and wait for its task.

    A start on a real host can take long (the bootloader, the domain
    build): waiting on the task, bounded by the session's call timeout,
    gives XAPI's own outcome, where a cut-off synchronous call would leave
    it unknown.
    """
    session.call_async("VM.start", vm_ref, False, False)


def hard_shutdown(session, vm_ref):
    """Stop the VM now; an already halted VM is fine."""
    if power_state(session, vm_ref) == SHUTDOWN:
        return
    try:
        session.call("VM.hard_shutdown", vm_ref)
    except exceptions.XapiFailure as e:
        if e.code != "VM_BAD_POWER_STATE":
            raise


def clean_shutdown(session, vm_ref):
    """Ask the guest to shut down; fall back to a hard shutdown if it cannot."""
    if power_state(session, vm_ref) == SHUTDOWN:
        return
    try:
        session.call("VM.clean_shutdown", vm_ref)
    except exceptions.XapiFailure as e:
        if e.code == "CONNECTION_FAILED":
            raise  # the clean shutdown may still be running: not the moment to pull the plug
        LOG.warning("Clean shutdown of %s failed (%s); shutting down hard", vm_ref, e.code)
        hard_shutdown(session, vm_ref)


def vm_disks(session, vm_ref):
    """``[(vbd_ref, vdi_uuid or None)]`` of a VM's VBDs."""
    disks = []
    for vbd_ref in session.call("VM.get_VBDs", vm_ref):
        vbd = session.call("VBD.get_record", vbd_ref)
        vdi_uuid = None
        if not vbd.get("empty") and vbd.get("VDI") not in (None, "", "OpaqueRef:NULL"):
            try:
                vdi_uuid = session.call("VDI.get_uuid", vbd["VDI"])
            except exceptions.XapiFailure as e:
                if e.code != "HANDLE_INVALID":
                    raise
        disks.append((vbd_ref, vdi_uuid))
    return disks


def destroy_vm(session, vm_ref):
    """Stop the VM, destroy its VBDs and the VM. Returns the VDI uuids it used."""
    hard_shutdown(session, vm_ref)
    vdi_uuids = []
    for vbd_ref, vdi_uuid in vm_disks(session, vm_ref):
        teardown.destroy_vbd(session, vbd_ref)
        if vdi_uuid:
            vdi_uuids.append(vdi_uuid)
    session.call("VM.destroy", vm_ref)
    return vdi_uuids


def tagged_vdis(session, instance_uuid):
    """``{vdi_ref: record}`` of VDIs marked with the instance's uuid."""
    return {
        ref: rec for ref, rec in session.call("VDI.get_all_records").items()
        if marks.vdi_instance(rec.get("other_config")) == instance_uuid
    }


def abandon_pending_chains(session, instance_uuid):
    """Mark the instance's pending VHD chains abandoned; returns how many.

    A chain a dom0 plugin is still landing has no VDI yet, so no sweep can
    find it; the agent still fetching it (its caller timed out) sees the mark
    once the chain has landed and destroys it, and an agent that died leaves
    the entry for its restart's cleanup, which does the same.
    """
    marked = 0
    for sr_ref, rec in session.call("SR.get_all_records").items():
        for chain in marks.pending_chains(rec.get("other_config")):
            if chain.abandoned or chain.instance_uuid != instance_uuid:
                continue
            # other_config has no replace; the agent reads a missing entry
            # of a running fetch as abandoned too.
            marks.set_mark(session, "SR", sr_ref, *marks.abandoned_mark(chain))
            LOG.info("VHD chain %s of %s marked abandoned", chain.leaf_uuid, instance_uuid)
            marked += 1
    return marked


def _pool(session):
    return session.call("pool.get_all")[0]


def mark_gave_up(session, instance_uuid):
    """Record on the pool that the driver has swept the instance's disks, so
    an agent still making one for it (its call timed out, the broker went
    away) destroys it instead of leaving it to nobody."""
    marks.set_mark(session, "pool", _pool(session),
                   *marks.gave_up_mark(instance_uuid, time.time()))


def forget_gave_up(session, instance_uuid):
    """A new spawn of the instance wants disks again: remove its gave-up mark."""
    pool = _pool(session)
    if marks.gave_up_key(instance_uuid) in (session.call("pool.get_other_config", pool) or {}):
        session.call("pool.remove_from_other_config", pool, marks.gave_up_key(instance_uuid))


def sweep_instance_vdis(session, instance_uuid):
    """Destroy, through XAPI, what is left of an instance's VDIs.

    The agent's ``destroy_vdis`` is the normal way; this is the fallback for
    an agent that died mid-operation, or still at work after its caller gave
    up: the instance is marked given up (:func:`mark_gave_up`) and its
    pending VHD chains abandoned first
    (:func:`abandon_pending_chains`), then every VDI tagged with the
    instance uuid is unplugged from wherever it is attached and destroyed,
    and nothing else (an attached volume, another instance's disk). Returns
    how many VDIs were destroyed.
    """
    try:
        mark_gave_up(session, instance_uuid)
    except exceptions.XapiFailure as e:  # the sweep below matters more
        LOG.warning("Could not mark instance %s given up: %s", instance_uuid, e)
    try:
        abandon_pending_chains(session, instance_uuid)
    except exceptions.XapiFailure as e:  # likewise
        LOG.warning("Could not mark the pending VHD chains of %s abandoned: %s",
                    instance_uuid, e)
    return sum(teardown.destroy_vdi(session, vdi_ref)
               for vdi_ref in tagged_vdis(session, instance_uuid))


def vdi_ref(session, vdi_uuid):
    return session.call("VDI.get_by_uuid", vdi_uuid)
