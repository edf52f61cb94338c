"""network_info checked before a spawn, and what is written from it.

The interfaces file (flat_injected) is read back by Debian's own ifupdown:
``ifquery`` parses it and ``ifup --no-act`` prints the commands it would run,
so the test checks what a Debian guest would do with it, not our own text.
"""

import os
import shutil
import subprocess

import pytest

from nova_xen_split import driver_errors
from nova_xen_split import netinfo
from tests.conftest import need

MAC = "fa:16:3e:00:00:01"


def _vif(vif_id="0c1b5e0e-5a9e-4a5c-9d43-6b3f3c5f0a01", address=MAC, subnets=None, **meta):
    return {"id": vif_id, "address": address,
            "network": {"id": "n1", "meta": meta, "subnets": subnets if subnets is not None
                        else [_v4_subnet()]}}


def _v4_subnet(**changes):
    subnet = {"cidr": "192.0.2.0/24",
              "ips": [{"address": "192.0.2.10", "type": "fixed"},
                      {"address": "198.51.100.7", "type": "floating"}],
              "gateway": {"address": "192.0.2.1"}, "dns": [{"address": "192.0.2.53"}],
              "routes": [{"cidr": "10.0.0.0/8", "gateway": {"address": "192.0.2.254"}}]}
    subnet.update(changes)
    return subnet


def _v6_subnet():
    return {"cidr": "2001:db8::/64", "ips": [{"address": "2001:db8::5", "type": "fixed"}],
            "gateway": {"address": "2001:db8::1"}, "dns": [], "routes": []}


def test_network_data_from_network_info():
    vif = _vif(mtu=1450)
    data = netinfo.network_data(netinfo.parse([vif]))
    assert data["links"] == [{"id": "tap0c1b5e0e-5a", "vif_id": vif["id"], "type": "bridge",
                              "ethernet_mac_address": MAC, "mtu": 1450}]
    (net,) = data["networks"]  # the floating IP is not the guest's
    assert net["ip_address"] == "192.0.2.10" and net["netmask"] == "255.255.255.0"
    assert net["type"] == "ipv4" and net["link"] == "tap0c1b5e0e-5a"
    assert {"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "192.0.2.1"} in net["routes"]
    assert {"network": "10.0.0.0", "netmask": "255.0.0.0",
            "gateway": "192.0.2.254"} in net["routes"]
    assert data["services"] == [{"type": "dns", "address": "192.0.2.53"}]


@pytest.mark.parametrize("network_info", [None, []])
def test_no_vifs_means_no_network_data_and_no_interfaces_file(network_info):
    vifs = netinfo.parse(network_info)
    assert netinfo.network_data(vifs) is None
    assert netinfo.interfaces(vifs) is None


def _ifupdown(tmp_path, text):
    """``(ifquery --list -a, {iface: [its ifquery lines]}, what ifup --no-act
    prints for the interfaces with a static address)``."""
    ifup = shutil.which("ifup") or "/usr/sbin/ifup"
    need(os.path.exists(ifup), "ifupdown is not installed (bash .ci/install --tests)")
    ifquery = os.path.join(os.path.dirname(ifup), "ifquery")
    path = tmp_path / "interfaces"
    path.write_text(text)
    state = tmp_path / "state"
    state.mkdir()

    def run(cmd):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, (cmd, proc.stdout, proc.stderr)
        return proc.stdout + proc.stderr  # ifup --verbose prints its commands on stderr

    names = run([ifquery, "-i", str(path), "--state-dir", str(state), "--list", "-a"]).split()
    options = {name: run([ifquery, "-i", str(path), "--state-dir", str(state), name])
               .splitlines() for name in names}
    static = [name for name in names
              if any(line.startswith("address:") for line in options[name])]
    plan = run([ifup, "--no-act", "--verbose", "-i", str(path), "--state-dir", str(state)] + static)
    return names, options, plan


def test_the_interfaces_file_configures_what_network_info_says(tmp_path):
    vifs = netinfo.parse([
        _vif(subnets=[_v4_subnet(), _v6_subnet()], mtu=1450),
        _vif(vif_id="second", address="fa:16:3e:00:00:02", injected=False),
        _vif(vif_id="third", address="FA:16:3E:00:00:03",
             subnets=[{"cidr": "203.0.113.0/24", "ips": []}]),
    ])
    text = netinfo.interfaces(vifs)
    names, options, plan = _ifupdown(tmp_path, text)

    assert names == ["lo", "eth0", "eth2"]  # eth1's network is not injected
    assert "hwaddress: fa:16:3e:00:00:01" in options["eth0"]
    assert "dns-nameservers: 192.0.2.53" in options["eth0"]
    assert "hwaddress: fa:16:3e:00:00:03" in options["eth2"]
    assert not any(line.startswith("address:") for line in options["eth2"])
    assert "iface eth2 inet dhcp" in text
    assert "ip addr add 192.0.2.10/255.255.255.0" in plan
    assert "mtu 1450 address fa:16:3e:00:00:01 up" in plan
    assert "ip route add default via 192.0.2.1" in plan
    assert "ip route add 10.0.0.0/8 via 192.0.2.254 dev eth0" in plan
    assert "ip -6 addr add 2001:db8::5/64" in plan
    assert "ip -6 route replace default via 2001:db8::1" in plan


def test_extra_addresses_get_stanzas_and_only_the_first_gateway_is_written(tmp_path):
    vifs = netinfo.parse([
        _vif(subnets=[_v4_subnet(ips=[{"address": "192.0.2.10"}, {"address": "192.0.2.11"}])]),
        _vif(vif_id="b", address="fa:16:3e:00:00:02",
             subnets=[_v4_subnet(cidr="198.51.100.0/24", ips=[{"address": "198.51.100.9"}],
                                 gateway={"address": "198.51.100.1"}, routes=[])]),
    ])
    text = netinfo.interfaces(vifs)
    _names, _options, plan = _ifupdown(tmp_path, text)

    assert "ip addr add 192.0.2.10/255.255.255.0" in plan
    assert "ip addr add 192.0.2.11/255.255.255.0" in plan
    assert "ip addr add 198.51.100.9/255.255.255.0" in plan
    assert plan.count("route add default") == 1  # a second default route fails ifup
    assert "198.51.100.1" not in text


@pytest.mark.parametrize("network_info, field, words", [
    ({"id": "x"}, "network_info", "must be a list"),
    (["vif"], "network_info[0]", "must be a mapping"),
    ([_vif(address=MAC + "\nup reboot")], "network_info[0].address", "not a MAC"),
    ([_vif(address="fa:16:3e:00:00")], "network_info[0].address", "not a MAC"),
    ([_vif(mtu="1500")], "network_info[0].network.meta.mtu", "not an MTU"),
    ([_vif(mtu=True)], "network_info[0].network.meta.mtu", "not an MTU"),
    ([_vif(mtu=10)], "network_info[0].network.meta.mtu", "not an MTU"),
    ([_vif(subnets="192.0.2.0/24")], "network_info[0].network.subnets", "must be a list"),
    ([_vif(subnets=[_v4_subnet(cidr="192.0.2.0/33")])],
     "network_info[0].network.subnets[0].cidr", "not an IP network"),
    ([_vif(subnets=[_v4_subnet(cidr=None)])],
     "network_info[0].network.subnets[0].cidr", "not an IP network"),
    ([_vif(subnets=[_v4_subnet(ips=[{"address": "192.0.3.10"}])])],
     "network_info[0].network.subnets[0].ips[0].address", "is not in 192.0.2.0/24"),
    ([_vif(subnets=[_v4_subnet(ips=[{"address": "2001:db8::5"}])])],
     "network_info[0].network.subnets[0].ips[0].address", "not an IPv4 address"),
    ([_vif(subnets=[_v4_subnet(gateway={"address": "192.0.2.1\n    up reboot"})])],
     "network_info[0].network.subnets[0].gateway.address", "not an IP address"),
    ([_vif(subnets=[_v4_subnet(dns=[{"address": "dns.example"}])])],
     "network_info[0].network.subnets[0].dns[0].address", "not an IP address"),
    ([_vif(subnets=[_v4_subnet(routes=[{"cidr": "10.0.0.0/8",
                                        "gateway": {"address": "2001:db8::1"}}])])],
     "network_info[0].network.subnets[0].routes[0].gateway.address", "not an IPv4 address"),
    ([_vif(subnets=[_v4_subnet(routes=[{"cidr": "10.0.0.0/8; reboot",
                                        "gateway": {"address": "192.0.2.254"}}])])],
     "network_info[0].network.subnets[0].routes[0].cidr", "not an IP network"),
    # Python's ipaddress takes anything after "%" as an IPv6 zone index.
    ([_vif(subnets=[{"cidr": "fe80::/64", "ips": [{"address": "fe80::5%x\nup reboot"}]}])],
     "network_info[0].network.subnets[0].ips[0].address", "zone index"),
    ([_vif(subnets=[{"cidr": "fe80::%x\nup reboot/64", "ips": []}])],
     "network_info[0].network.subnets[0].cidr", "zone index"),
    ([_vif()] * (netinfo.MAX_VIFS + 1), "network_info", "at most 64"),
])
def test_bad_network_info_is_refused_naming_the_field(network_info, field, words):
    with pytest.raises(driver_errors.InvalidNetworkInfo) as err:
        netinfo.parse(network_info)
    assert err.value.kwargs["field"] == field
    assert words in str(err.value)
