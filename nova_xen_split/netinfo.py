"""The instance's network_info, checked once, and what is written from it.

Nova hands the driver a list of VIFs (dicts, or Nova's ``NetworkInfo`` model,
which is a list of dicts): ``id``, ``address`` (the MAC), ``type`` and
``network`` → ``bridge``, ``meta`` (``mtu``, ``injected``) and ``subnets`` → ``cidr``,
``ips``, ``gateway``, ``dns``, ``routes``. :func:`parse` checks all of it
before a spawn makes anything, so a bad value is an
:class:`InvalidNetworkInfo` naming the field, not a failure half-way through
the spawn. Both renderings read the parsed form: ``network_data.json`` for
the config drive and, with ``flat_injected``, ``/etc/network/interfaces``
(Debian's ifupdown) written into the image. Every value that reaches the
interfaces file is an IP address, a network, a MAC or an integer, so nothing
from network_info can add a line of its own to it.
"""

import collections
import ipaddress
import re

from nova_xen_split import driver_errors

MAX_VIFS = 64
_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}\Z")

Vif = collections.namedtuple(
    "Vif", ["index", "vif_id", "mac", "vif_type", "network_id", "mtu", "injected", "subnets",
            "bridge"])
Subnet = collections.namedtuple("Subnet", ["net", "gateway", "ips", "dns", "routes"])
Route = collections.namedtuple("Route", ["net", "gateway"])


def _fail(where, reason):
    raise driver_errors.InvalidNetworkInfo(field=where, reason=reason)


def _mapping(value, where, optional=False):
    if value is None and optional:
        return {}
    if not hasattr(value, "get") or not hasattr(value, "items"):
        _fail(where, "must be a mapping, not %s" % type(value).__name__)
    return value


def _sequence(value, where):
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        _fail(where, "must be a list, not %s" % type(value).__name__)
    return list(value)


def _text(value, where, optional=True):
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.isprintable():
        _fail(where, "must be printable text")
    return value


def _address(value, where, version=None):
    try:
        addr = ipaddress.ip_address(value)
    except (TypeError, ValueError):
        _fail(where, "%r is not an IP address" % (value,))
    if getattr(addr, "scope_id", None) is not None:
        _fail(where, "an address with a zone index (%...) is not accepted")
    if version is not None and addr.version != version:
        _fail(where, "%s is not an IPv%d address" % (addr, version))
    return addr


def _network(value, where, version=None):
    try:
        net = ipaddress.ip_network(value, strict=False)
    except (TypeError, ValueError):
        _fail(where, "%r is not an IP network" % (value,))
    if getattr(net.network_address, "scope_id", None) is not None:
        _fail(where, "a network with a zone index (%...) is not accepted")
    if version is not None and net.version != version:
        _fail(where, "%s is not an IPv%d network" % (net, version))
    return net


def _ip_of(value, where, version=None, optional=False):
    """An IP model (``{"address": …}``) → address; None when optional and unset."""
    if value is None and optional:
        return None
    value = _mapping(value, where)
    if value.get("address") is None and optional:
        return None
    return _address(value.get("address"), where + ".address", version)


def parse(network_info):
    """``network_info`` → ``[Vif]``; raises :class:`InvalidNetworkInfo`."""
    vifs = []
    entries = _sequence(network_info, "network_info")
    if len(entries) > MAX_VIFS:
        _fail("network_info", "has %d VIFs, at most %d" % (len(entries), MAX_VIFS))
    for index, vif in enumerate(entries):
        where = "network_info[%d]" % index
        vif = _mapping(vif, where)
        mac = vif.get("address")
        if mac is not None and not (isinstance(mac, str) and _MAC_RE.match(mac)):
            _fail(where + ".address", "%r is not a MAC address" % (mac,))
        network = _mapping(vif.get("network"), where + ".network", optional=True)
        meta = _mapping(network.get("meta"), where + ".network.meta", optional=True)
        mtu = meta.get("mtu")
        if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int)
                                or not 68 <= mtu <= 65535):
            _fail(where + ".network.meta.mtu", "%r is not an MTU (68 to 65535)" % (mtu,))
        vif_id = vif.get("id")
        if vif_id is not None:
            vif_id = _text(str(vif_id), where + ".id")
        subnets = [_subnet(subnet, "%s.network.subnets[%d]" % (where, i))
                   for i, subnet in enumerate(_sequence(network.get("subnets"),
                                                        where + ".network.subnets"))]
        vifs.append(Vif(index=index, vif_id=vif_id, mac=mac.lower() if mac else None,
                        vif_type=_text(vif.get("type"), where + ".type"),
                        network_id=_text(network.get("id"), where + ".network.id"),
                        mtu=mtu, injected=meta.get("injected") is not False,
                        subnets=subnets,
                        bridge=_text(network.get("bridge"), where + ".network.bridge")))
    return vifs


def _subnet(subnet, where):
    subnet = _mapping(subnet, where)
    net = _network(subnet.get("cidr"), where + ".cidr")
    ips = []
    for i, ip in enumerate(_sequence(subnet.get("ips"), where + ".ips")):
        ip_where = "%s.ips[%d]" % (where, i)
        ip = _mapping(ip, ip_where)
        if ip.get("type", "fixed") != "fixed":
            continue  # a floating IP is NATed outside the guest
        addr = _address(ip.get("address"), ip_where + ".address", net.version)
        if addr not in net:
            _fail(ip_where + ".address", "%s is not in %s" % (addr, net))
        ips.append(addr)
    gateway = _ip_of(subnet.get("gateway"), where + ".gateway", net.version, optional=True)
    dns = [_ip_of(server, "%s.dns[%d]" % (where, i))
           for i, server in enumerate(_sequence(subnet.get("dns"), where + ".dns"))]
    routes = []
    for i, route in enumerate(_sequence(subnet.get("routes"), where + ".routes")):
        route_where = "%s.routes[%d]" % (where, i)
        route = _mapping(route, route_where)
        routes.append(Route(
            net=_network(route.get("cidr"), route_where + ".cidr", net.version),
            gateway=_ip_of(route.get("gateway"), route_where + ".gateway", net.version)))
    return Subnet(net=net, gateway=gateway, ips=ips, dns=dns, routes=routes)


def network_data(vifs):
    """``network_data.json`` (links, networks, services); None without VIFs."""
    if not vifs:
        return None
    links, networks, services = [], [], []
    for vif in vifs:
        link_id = "tap%s" % (vif.vif_id if vif.vif_id is not None else vif.index)[:11]
        links.append({"id": link_id, "vif_id": vif.vif_id, "type": vif.vif_type or "bridge",
                      "ethernet_mac_address": vif.mac, "mtu": vif.mtu})
        for subnet in vif.subnets:
            kind = "ipv%d" % subnet.net.version
            default = "::" if subnet.net.version == 6 else "0.0.0.0"
            routes = []
            if subnet.gateway is not None:
                routes.append({"network": default, "netmask": default,
                               "gateway": str(subnet.gateway)})
            routes += [{"network": str(route.net.network_address),
                        "netmask": str(route.net.netmask), "gateway": str(route.gateway)}
                       for route in subnet.routes]
            for addr in subnet.ips:
                networks.append({
                    "id": "network%d" % len(networks), "type": kind, "link": link_id,
                    "ip_address": str(addr), "netmask": str(subnet.net.netmask),
                    "routes": routes, "network_id": vif.network_id})
            for server in subnet.dns:
                service = {"type": "dns", "address": str(server)}
                if service not in services:
                    services.append(service)
    return {"links": links, "networks": networks, "services": services}


INTERFACES_HEADER = """\
# Written by nova-xen-split before the first boot (flat_injected), from the
# instance's network information. See interfaces(5).

auto lo
iface lo inet loopback
"""


def interfaces(vifs):
    """``/etc/network/interfaces`` for Debian's ifupdown; None when nothing is injected.

    VIF ``n`` is ``eth<n>``. A VIF whose network says ``injected: false`` is
    left out (its name stays taken, as in Nova); one with no fixed address
    gets DHCP. Each fixed address has its own stanza (``netmask`` rather
    than a prefix on the address, which older ifupdown cannot read); a
    subnet's DNS servers and routes go with its first address. Only the
    first gateway of each address family is written: a second default
    route would make ``ifup`` fail for that interface.
    """
    stanzas = []
    gateway_written = set()
    for vif in vifs:
        if not vif.injected:
            continue
        name = "eth%d" % vif.index
        lines = ["auto %s" % name]
        if not any(subnet.ips for subnet in vif.subnets):
            lines.append("iface %s inet dhcp" % name)
            lines += _link_options(vif)
        first_stanza = True
        for subnet in vif.subnets:
            version = subnet.net.version
            for i, addr in enumerate(subnet.ips):
                lines.append("iface %s %s static" % (name, "inet6" if version == 6 else "inet"))
                if first_stanza:
                    lines += _link_options(vif)
                    first_stanza = False
                lines.append("    address %s" % addr)
                lines.append("    netmask %s" % (subnet.net.prefixlen if version == 6
                                                 else subnet.net.netmask))
                if i:
                    continue
                if subnet.gateway is not None and version not in gateway_written:
                    gateway_written.add(version)
                    lines.append("    gateway %s" % subnet.gateway)
                if subnet.dns:
                    lines.append("    dns-nameservers %s"
                                 % " ".join(str(server) for server in subnet.dns))
                ip_cmd = "ip -6" if version == 6 else "ip"
                for route in subnet.routes:
                    lines.append("    up %s route add %s via %s dev %s"
                                 % (ip_cmd, route.net, route.gateway, name))
        stanzas.append("\n".join(lines) + "\n")
    if not stanzas:
        return None
    return "\n".join([INTERFACES_HEADER] + stanzas)


def _link_options(vif):
    options = []
    if vif.mac:
        options.append("    hwaddress ether %s" % vif.mac)
    if vif.mtu:
        options.append("    mtu %d" % vif.mtu)
    return options
