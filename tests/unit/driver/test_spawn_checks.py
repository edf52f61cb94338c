"""The flavor, injected-file and flat_injected checks a spawn makes before its first step."""

import pytest
from oslo_config import cfg

from nova_xen_split import driver_errors, instance_metadata, netinfo, objects, spawn
from nova_xen_split.xenhost import conf as nxs_conf
from rpc import client, exceptions


@pytest.mark.parametrize("fields", [
    {},
    {"swap": None, "ephemeral_gb": ""},  # unset, as old flavors have it
    {"memory_mb": "2048", "vcpus": "4"},  # decimal text, as Nova's integer fields take
    {"root_gb": 0, "ephemeral_gb": 65536, "swap": 65536 * 1024, "vcpus": 512},
])
def test_flavors_within_the_limits_pass(fields):
    spawn.check_flavor(objects.Flavor(**fields))


@pytest.mark.parametrize("fields, field, words", [
    ({"memory_mb": 0}, "memory_mb", "is 0; it must be from 1"),
    ({"vcpus": True}, "vcpus", "whole number"),
    ({"vcpus": 1.5}, "vcpus", "whole number"),
    ({"root_gb": -1}, "root_gb", "is -1"),
    ({"root_gb": None}, "root_gb", "whole number"),  # only swap/ephemeral may be unset
    ({"ephemeral_gb": 65537}, "ephemeral_gb", "to 65536"),
    ({"swap": "１２"}, "swap", "whole number"),  # not ASCII digits
])
def test_flavors_outside_the_limits_are_refused_naming_the_field(fields, field, words):
    with pytest.raises(driver_errors.InvalidFlavor) as err:
        spawn.check_flavor(objects.Flavor(name="bad", **fields))
    assert err.value.kwargs["field"] == field and err.value.kwargs["flavor"] == "bad"
    assert words in str(err.value)


def test_injected_files_text_becomes_bytes():
    assert instance_metadata.injected_files_list([("/etc/a", "é"), ("/etc/b", b"B")]) == [
        ["/etc/a", "é".encode()], ["/etc/b", b"B"]]


@pytest.mark.parametrize("entry", [("/etc/a",), "/etc/a", (b"/etc/a", b"x"), ("/etc/a", 5),
                                   ("/etc/a", None)])
def test_malformed_injected_files_are_refused(entry):
    with pytest.raises(exceptions.InvalidRequest) as err:
        instance_metadata.injected_files_list([("/etc/ok", b"ok"), entry])
    assert err.value.kwargs["field"] == "injected_files[1]"


def _unconnected_agent(tmp_path):
    """A real client for a local socket nothing listens on; the tests below
    make no call (its version is not yet known, so every version may be sent)."""
    conf = cfg.ConfigOpts()
    nxs_conf.register_opts(conf)
    conf([], project="nova-xen-split")
    conf.set_override("socket_path", str(tmp_path / "none.sock"), group="agent")
    return client.AgentAPI(conf, host="h")


DHCP_VIF = {"address": "fa:16:3e:00:00:01", "network": {"subnets": []}}
UNINJECTED_VIF = {"address": "fa:16:3e:00:00:02",
                  "network": {"meta": {"injected": False}, "subnets": []}}


@pytest.mark.parametrize("instance, vifs, expected", [
    # Nova mounted the image only for a key, a network config or metadata.
    (objects.Instance(), [UNINJECTED_VIF], None),
    (objects.Instance(key_data=" ssh-rsa AAAA k1 \n"), [UNINJECTED_VIF],
     {"network_config": None, "files": None, "ssh_key": "ssh-rsa AAAA k1", "metadata": None}),
    (objects.Instance(metadata={"n": 1}), [], {"network_config": None, "files": None,
                                               "ssh_key": None, "metadata": {"n": "1"}}),
])
def test_flat_injected_request_holds_what_nova_injected(tmp_path, instance, vifs, expected):
    agent = _unconnected_agent(tmp_path)
    try:
        assert spawn.preconfigure_request(agent, instance, netinfo.parse(vifs)) == expected
        full = spawn.preconfigure_request(
            agent, objects.Instance(key_data="ssh-rsa AAAA k1"), netinfo.parse([DHCP_VIF]))
        assert "iface eth0 inet dhcp" in full["network_config"]
    finally:
        agent.close()


def test_flat_injected_request_refuses_metadata_the_interface_refuses(tmp_path):
    agent = _unconnected_agent(tmp_path)
    try:
        with pytest.raises(exceptions.InvalidRequest) as err:
            spawn.preconfigure_request(agent, objects.Instance(metadata={"k": "v" * 256}),
                                       netinfo.parse([]))
    finally:
        agent.close()
    assert err.value.kwargs["field"] == 'metadata["k"]'
