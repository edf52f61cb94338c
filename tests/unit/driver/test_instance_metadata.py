"""The config drive's content as the driver builds it, before any disk exists."""

import base64

import pytest

from nova_xen_split import driver_errors
from nova_xen_split import instance_metadata
from nova_xen_split import objects


def _instance(**kwargs):
    return objects.Instance(uuid="6f1d3c2e-8a4b-4c1d-9e2f-0a1b2c3d4e5f", hostname="web-1",
                            **kwargs)


def test_user_data_is_decoded_from_base64():
    instance = _instance(user_data=base64.b64encode(b"#!/bin/sh\necho hi\n").decode())
    assert instance_metadata.decode_user_data(instance) == b"#!/bin/sh\necho hi\n"


def test_user_data_of_exactly_64_kib_is_accepted():
    instance = _instance(user_data=base64.b64encode(b"x" * 65536).decode())
    assert len(instance_metadata.decode_user_data(instance)) == 65536


def test_user_data_one_byte_over_64_kib_is_a_typed_error_naming_the_sizes():
    instance = _instance(user_data=base64.b64encode(b"x" * 65537).decode())
    with pytest.raises(driver_errors.InstanceUserDataTooLarge) as err:
        instance_metadata.decode_user_data(instance)
    assert "65537" in str(err.value) and "65536" in str(err.value)
    assert instance.uuid in str(err.value)


def test_user_data_that_is_not_base64_is_a_typed_error():
    with pytest.raises(driver_errors.InstanceUserDataMalformed):
        instance_metadata.decode_user_data(_instance(user_data="not base64 !!"))


def test_no_user_data_is_none():
    assert instance_metadata.decode_user_data(_instance()) is None


def test_meta_data_has_the_openstack_fields():
    instance = _instance(project_id="p1", availability_zone="az1", launch_index=2,
                         key_name="k", key_data="ssh-ed25519 AAAA k@h",
                         metadata={"role": "web"})
    files = instance_metadata.injected_files_list([("/etc/a", "A"), ("/etc/b", b"B")])
    meta = instance_metadata.build_meta_data(instance, files)
    assert meta["uuid"] == instance.uuid
    assert meta["hostname"] == "web-1" and meta["name"] == "web-1"
    assert meta["launch_index"] == 2 and meta["availability_zone"] == "az1"
    assert meta["project_id"] == "p1"
    assert meta["public_keys"] == {"k": "ssh-ed25519 AAAA k@h"}
    assert meta["meta"] == {"role": "web"}
    assert meta["files"] == [{"path": "/etc/a", "content_path": "/content/0000"},
                             {"path": "/etc/b", "content_path": "/content/0001"}]
    assert files == [["/etc/a", b"A"], ["/etc/b", b"B"]]


def test_network_data_from_network_info():
    vif = {"id": "0c1b5e0e-5a9e-4a5c-9d43-6b3f3c5f0a01", "address": "fa:16:3e:00:00:01",
           "network": {"id": "n1", "meta": {"mtu": 1450}, "subnets": [{
               "cidr": "192.0.2.0/24", "ips": [{"address": "192.0.2.10", "type": "fixed"},
                                               {"address": "198.51.100.7", "type": "floating"}],
               "gateway": {"address": "192.0.2.1"}, "dns": [{"address": "192.0.2.53"}],
               "routes": [{"cidr": "10.0.0.0/8", "gateway": {"address": "192.0.2.254"}}]}]}}
    data = instance_metadata.build_network_data([vif])
    assert data["links"] == [{"id": "tap0c1b5e0e-5a", "vif_id": vif["id"], "type": "bridge",
                              "ethernet_mac_address": "fa:16:3e:00:00:01", "mtu": 1450}]
    (net,) = data["networks"]
    assert net["ip_address"] == "192.0.2.10" and net["netmask"] == "255.255.255.0"
    assert net["type"] == "ipv4" and net["link"] == "tap0c1b5e0e-5a"
    assert {"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "192.0.2.1"} in net["routes"]
    assert {"network": "10.0.0.0", "netmask": "255.0.0.0",
            "gateway": "192.0.2.254"} in net["routes"]
    assert data["services"] == [{"type": "dns", "address": "192.0.2.53"}]


def test_no_network_info_means_no_network_data():
    assert instance_metadata.build_network_data([]) is None
