"""host.call_plugin as XAPI runs plugins, and partitions appearing as udev would."""

import json
import os
import subprocess
import xmlrpc.client

import pytest

from tests.functional.simulator.simhelpers import (
    failure, new_vbd, new_vdi, wait_for, wait_task)

MiB = 1 << 20
PLUGIN = "test_plugin.py"


def test_plugin_success_returns_its_string_and_sees_dom0_devices(sim, session, xapi, host_ref,
                                                                  dom0_ref):
    result = xapi.host.call_plugin(host_ref, PLUGIN, "echo", {"dev": "xvdb", "n": "1"})
    decoded = json.loads(result)
    assert decoded["args"] == {"dev": "xvdb", "n": "1"}
    assert decoded["session"] == session._session
    assert decoded["dev_dir"] == sim.vm_dev_dir(xapi.VM.get_uuid(dom0_ref))


def test_missing_plugin_is_xenapi_missing_plugin(xapi, host_ref):
    assert failure(xapi.host.call_plugin, host_ref, "nope.py", "echo", {}) == [
        "XENAPI_MISSING_PLUGIN", "nope.py"]


@pytest.mark.parametrize("name", ["../test_plugin.py", "/bin/true", ".", ""])
def test_plugin_names_are_plain_names_in_the_plugin_dir(xapi, host_ref, name):
    assert failure(xapi.host.call_plugin, host_ref, name, "echo", {}) == [
        "XENAPI_MISSING_PLUGIN", name]


def test_unknown_function_is_unknown_xenapi_plugin_function(xapi, host_ref):
    assert failure(xapi.host.call_plugin, host_ref, PLUGIN, "fly", {}) == [
        "UNKNOWN_XENAPI_PLUGIN_FUNCTION", "fly"]


def test_exception_in_plugin_names_function_class_and_message(xapi, host_ref):
    assert failure(xapi.host.call_plugin, host_ref, PLUGIN, "boom", {"what": "size"}) == [
        "XENAPI_PLUGIN_FAILURE", "boom", "ValueError", "bad input: size"]


def test_non_zero_exit_reports_status_stdout_and_stderr(xapi, host_ref):
    assert failure(xapi.host.call_plugin, host_ref, PLUGIN, "exit3", {}) == [
        "XENAPI_PLUGIN_FAILURE", "non-zero exit", "partial output", "something broke"]


def test_plugin_killed_by_a_signal_reports_the_signal(xapi, host_ref):
    details = failure(xapi.host.call_plugin, host_ref, PLUGIN, "crash", {})
    assert details[:2] == ["XENAPI_PLUGIN_FAILURE", "signal: SIGKILL"]


def test_unparsable_output_is_a_plugin_failure_with_the_output(xapi, host_ref):
    details = failure(xapi.host.call_plugin, host_ref, PLUGIN, "garbage", {})
    assert details[:3] == ["XENAPI_PLUGIN_FAILURE", "failed to parse plugin output",
                           "this is not XML-RPC\n"]


def test_xmlrpc_fault_and_non_string_results_are_plugin_failures(xapi, host_ref):
    assert failure(xapi.host.call_plugin, host_ref, PLUGIN, "fault", {}) == [
        "XENAPI_PLUGIN_FAILURE", "fault", "42", "plugin fault"]
    details = failure(xapi.host.call_plugin, host_ref, PLUGIN, "not_a_string", {})
    assert details[:2] == ["XENAPI_PLUGIN_FAILURE", "unexpected XMLRPC result"]


def test_a_non_string_plugin_argument_is_an_internal_error(sim, xapi, host_ref):
    # gen_server.ml, operation: args is unmarshalled as a string map; rpclib's
    # string_of_rpc (rpc.ml) fails with Failure, which exnHelper.ml,
    # error_of_exn, turns into INTERNAL_ERROR [Printexc.to_string e].
    assert failure(xapi.host.call_plugin, host_ref, PLUGIN, "echo", {"n": 1}) == [
        "INTERNAL_ERROR", 'Failure("Expected string, got \'I(1)\'")']
    assert failure(xapi.host.call_plugin, host_ref, PLUGIN, "echo", {"on": True}) == [
        "INTERNAL_ERROR", 'Failure("Expected string, got \'B(true)\'")']
    assert failure(xapi.host.call_plugin, host_ref, PLUGIN, "echo", ["n"]) == [
        "INTERNAL_ERROR", 'Failure("Expecting Rpc.Dict, but found \'[S(n)]\'")']
    # Unmarshalled before the session is looked at, as the dispatcher does.
    proxy = xmlrpc.client.ServerProxy(sim.url, allow_none=True)
    answer = proxy.host.call_plugin("OpaqueRef:no-such-session", host_ref, PLUGIN, 7, {})
    assert answer["ErrorDescription"] == [
        "INTERNAL_ERROR", 'Failure("Expected string, got \'I(7)\'")']


def test_async_call_plugin_puts_the_string_in_the_task_result(xapi, host_ref):
    task = xapi.Async.host.call_plugin(host_ref, PLUGIN, "sleep", {"seconds": "0.2"})
    assert wait_task(xapi, task) == "success"
    assert xapi.task.get_result(task) == "<value>slept</value>"
    xapi.task.destroy(task)


def test_async_result_text_is_escaped_as_rpclib_writes_it(xapi, host_ref):
    # taskHelper.ml, set_result_on_task: Xmlrpc.to_string (ocaml-rpc
    # xmlrpc.ml, encode): < > & and " become entities, no <string> tag.
    task = xapi.Async.host.call_plugin(host_ref, PLUGIN, "echo", {"a": "<&>"})
    assert wait_task(xapi, task) == "success"
    text = xapi.host.call_plugin(host_ref, PLUGIN, "echo", {"a": "<&>"})
    escaped = (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
               .replace('"', "&quot;"))
    assert xapi.task.get_result(task) == "<value>%s</value>" % escaped
    xapi.task.destroy(task)


def test_sfdisk_through_a_plugin_makes_a_partition_blkid_sees(sim, xapi, host_ref, sr_ref,
                                                              dom0_ref):
    vdi = new_vdi(xapi, sr_ref, 32 * MiB)
    vbd = new_vbd(xapi, dom0_ref, vdi)
    xapi.VBD.plug(vbd)
    device = xapi.VBD.get_device(vbd)
    dev_dir = sim.vm_dev_dir(xapi.VM.get_uuid(dom0_ref))
    partition = os.path.join(dev_dir, device + "1")
    try:
        xapi.host.call_plugin(host_ref, PLUGIN, "partition", {"dev": device})
        assert wait_for(lambda: os.path.exists(partition), timeout=5), \
            "%s did not appear" % partition
        subprocess.run(["mkfs.ext4", "-q", "-L", "simtest", partition], check=True,
                       timeout=60)
        out = subprocess.run(["blkid", "-o", "export", partition], capture_output=True,
                             text=True, check=True, timeout=30).stdout
        assert "TYPE=ext4" in out and "LABEL=simtest" in out
        dump = subprocess.run(["sfdisk", "--dump", os.path.join(dev_dir, device)],
                              capture_output=True, text=True, check=True, timeout=30).stdout
        assert "start=        2048" in dump
    finally:
        xapi.VBD.unplug(vbd)
    assert not os.path.lexists(partition)
    assert not os.path.lexists(os.path.join(dev_dir, device))
    xapi.VBD.destroy(vbd)
    xapi.VDI.destroy(vdi)


def test_unplug_of_a_mounted_device_is_rejected_and_changes_nothing(
        sim, xapi, host_ref, sr_ref, dom0_ref, tmp_path):
    vdi = new_vdi(xapi, sr_ref, 32 * MiB)
    vbd = new_vbd(xapi, dom0_ref, vdi)
    xapi.VBD.plug(vbd)
    device = xapi.VBD.get_device(vbd)
    link = os.path.join(sim.vm_dev_dir(xapi.VM.get_uuid(dom0_ref)), device)
    subprocess.run(["mkfs.ext4", "-q", link], check=True, timeout=60)
    subprocess.run(["mount", link, str(tmp_path)], check=True, timeout=60)
    try:
        details = failure(xapi.VBD.unplug, vbd)
        assert details[:3] == ["DEVICE_DETACH_REJECTED", "VBD", vbd]
        assert xapi.VBD.get_currently_attached(vbd) is True
        assert os.path.lexists(link)
    finally:
        subprocess.run(["umount", str(tmp_path)], check=True, timeout=60)
    xapi.VBD.unplug(vbd)
    assert not os.path.lexists(link)
    xapi.VBD.destroy(vbd)
    xapi.VDI.destroy(vdi)


def test_plugin_running_past_the_timeout_is_killed_and_reported(loop_devices, make_sim,
                                                                plugin_dir):
    sim = make_sim(extra_args=["--plugin-dir", str(plugin_dir), "--plugin-timeout", "1"])
    xapi = sim.session().xenapi
    host = xapi.pool.get_master(xapi.pool.get_all()[0])
    details = failure(xapi.host.call_plugin, host, PLUGIN, "sleep", {"seconds": "60"})
    assert details[:2] == ["XENAPI_PLUGIN_FAILURE", "timeout"]
