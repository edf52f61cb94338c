"""What the driver puts on a config drive: OpenStack metadata in Nova's shape.

``meta_data.json`` as Nova's metadata service writes it (uuid, name,
hostname, launch_index, availability_zone, project_id, public_keys, meta,
files), ``network_data.json`` from the instance's network_info, and the
user data decoded from the base64 text Nova stores, bounded by Nova's
64 KiB limit. Nothing here talks to the agent: a bad request is refused
before any disk is made.
"""

import base64
import binascii
import ipaddress

from nova_xen_split import driver_errors

MAX_USER_DATA_BYTES = 65536
# Where injected files appear inside the drive, as Nova numbers them.
CONTENT_PATH = "/content/%04d"


def decode_user_data(instance):
    """The instance's user data as bytes (None if unset).

    Raises :class:`InstanceUserDataMalformed` for text that is not base64,
    :class:`InstanceUserDataTooLarge` above 64 KiB once decoded.
    """
    text = instance.user_data
    if text in (None, ""):
        return None
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise driver_errors.InstanceUserDataMalformed(
            instance_uuid=instance.uuid, reason=str(e)) from None
    if len(data) > MAX_USER_DATA_BYTES:
        raise driver_errors.InstanceUserDataTooLarge(
            instance_uuid=instance.uuid, length=len(data), maxsize=MAX_USER_DATA_BYTES)
    return data


def injected_files_list(injected_files):
    """Nova's ``injected_files`` (``[(path, contents)]``) as ``[[path, bytes]]``."""
    files = []
    for path, contents in injected_files or ():
        if isinstance(contents, str):
            contents = contents.encode("utf-8")
        files.append([str(path), bytes(contents)])
    return files


def build_meta_data(instance, injected_files=()):
    """The content of ``openstack/<version>/meta_data.json``."""
    public_keys = {}
    if instance.key_name and instance.key_data:
        public_keys[instance.key_name] = instance.key_data
    meta = {
        "uuid": instance.uuid,
        "name": instance.display_name or instance.hostname,
        "hostname": instance.hostname,
        "launch_index": int(instance.launch_index or 0),
        "availability_zone": instance.availability_zone,
        "project_id": instance.project_id,
        "public_keys": public_keys,
        "meta": {str(k): str(v) for k, v in (instance.metadata or {}).items()},
        "files": [{"path": path, "content_path": CONTENT_PATH % i}
                  for i, (path, _contents) in enumerate(injected_files or ())],
    }
    if public_keys:
        meta["keys"] = [{"name": name, "type": "ssh", "data": data}
                        for name, data in public_keys.items()]
    return meta


def build_network_data(network_info):
    """``network_data.json`` (links, networks, services) from network_info.

    ``network_info`` is Nova's list of VIFs (dicts with ``id``, ``address``,
    ``network`` → ``subnets`` → ``ips``/``gateway``/``dns``/``routes``).
    None when the instance has no VIFs.
    """
    if not network_info:
        return None
    links, networks, services = [], [], []
    for index, vif in enumerate(network_info):
        link_id = "tap%s" % str(vif.get("id", index))[:11]
        network = vif.get("network") or {}
        links.append({
            "id": link_id,
            "vif_id": vif.get("id"),
            "type": vif.get("type") or "bridge",
            "ethernet_mac_address": vif.get("address"),
            "mtu": (network.get("meta") or {}).get("mtu"),
        })
        for subnet in network.get("subnets") or ():
            networks.extend(_subnet_networks(subnet, link_id, network, len(networks)))
            for dns in subnet.get("dns") or ():
                service = {"type": "dns", "address": dns.get("address")}
                if service not in services:
                    services.append(service)
    return {"links": links, "networks": networks, "services": services}


def _subnet_networks(subnet, link_id, network, first_index):
    cidr = subnet.get("cidr")
    net = ipaddress.ip_network(cidr, strict=False) if cidr else None
    kind = "ipv6" if net is not None and net.version == 6 else "ipv4"
    gateway = (subnet.get("gateway") or {}).get("address")
    entries = []
    for ip in subnet.get("ips") or ():
        if ip.get("type", "fixed") != "fixed":
            continue
        routes = []
        if gateway:
            default = "::" if kind == "ipv6" else "0.0.0.0"
            routes.append({"network": default, "netmask": default, "gateway": gateway})
        for route in subnet.get("routes") or ():
            rnet = ipaddress.ip_network(route["cidr"], strict=False)
            routes.append({"network": str(rnet.network_address),
                           "netmask": str(rnet.netmask),
                           "gateway": (route.get("gateway") or {}).get("address")})
        entries.append({
            "id": "network%d" % (first_index + len(entries)),
            "type": kind,
            "link": link_id,
            "ip_address": ip.get("address"),
            "netmask": str(net.netmask) if net is not None else None,
            "routes": routes,
            "network_id": network.get("id"),
        })
    return entries
