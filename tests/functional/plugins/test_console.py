"""console.py through host.call_plugin: the tail of a guest's console log."""

import base64
import os

import pytest

PLUGIN = "console.py"


def _log_path(dom0, domid):
    return os.path.join(dom0.sim.state_dir, "console", "console.%d" % domid)


def _write_log(dom0, domid, data):
    with open(_log_path(dom0, domid), "wb") as f:
        f.write(data)


def test_the_whole_log_when_it_fits(dom0):
    _write_log(dom0, 4001, b"boot line\r\nlogin: \xff")
    result = dom0.call(PLUGIN, "get_console_log", dom_id="4001")
    assert base64.b64decode(result["log"]) == b"boot line\r\nlogin: \xff"
    assert (result["truncated"], result["size"]) == (False, 19)


def test_only_the_last_max_bytes_of_a_longer_log(dom0):
    data = bytes(range(256)) * 40
    _write_log(dom0, 4002, data)
    result = dom0.call(PLUGIN, "get_console_log", dom_id="4002", max_bytes="1000")
    assert base64.b64decode(result["log"]) == data[-1000:]
    assert result["truncated"] is True


def test_a_domain_without_a_log_is_a_typed_failure(dom0):
    assert dom0.failure(PLUGIN, "get_console_log", dom_id="4003")[:3] == [
        "XENAPI_PLUGIN_FAILURE", "get_console_log", "NoConsoleLog"]


@pytest.mark.parametrize("args", [
    {}, {"dom_id": "0"}, {"dom_id": "-1"}, {"dom_id": "1/../x"}, {"dom_id": "99999"},
    {"dom_id": "5", "max_bytes": "0"}, {"dom_id": "5", "max_bytes": str((1 << 20) + 1)},
])
def test_bad_arguments_are_refused_naming_them(dom0, args):
    details = dom0.failure(PLUGIN, "get_console_log", **args)
    assert details[:3] == ["XENAPI_PLUGIN_FAILURE", "get_console_log", "InvalidArgument"]


def test_a_log_that_is_a_symlink_is_not_followed(dom0, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"not a console")
    os.symlink(secret, _log_path(dom0, 4004))
    details = dom0.failure(PLUGIN, "get_console_log", dom_id="4004")
    assert details[:3] == ["XENAPI_PLUGIN_FAILURE", "get_console_log", "DeviceError"]


def test_a_started_guest_has_a_log_under_its_domid(dom0):
    from tests.functional.simulator.simhelpers import drop_vm, startable_vm

    sr_ref = dom0.api.pool.get_default_SR(dom0.api.pool.get_all()[0])
    vm = startable_vm(dom0.api, sr_ref, "console-guest")
    dom0.api.VM.start(vm, False, False)
    try:
        domid = int(dom0.api.VM.get_domid(vm))
        log = base64.b64decode(dom0.call(PLUGIN, "get_console_log", dom_id=str(domid))["log"])
        assert ("domain %d started for VM %s" % (domid, dom0.api.VM.get_uuid(vm))).encode() \
            in log
    finally:
        drop_vm(dom0.api, vm)
