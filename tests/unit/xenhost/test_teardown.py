"""Unplug retries of the one VBD teardown both the agent and the driver use.

XAPI's transient refusals (DEVICE_DETACH_REJECTED while a guest still holds
the device, VM_MISSING_PV_DRIVERS) cannot be provoked in the simulator, so
these tests use a scripted stand-in for the session; everything else about
attaching is tested against ``xapi-sim`` in tests/functional/agent.
"""

import pytest

from nova_xen_split.xenhost import teardown
from rpc import exceptions


class ScriptedSession:
    """Answers ``call`` from a script of results/failures per method."""

    def __init__(self, unplug_results):
        self.unplug_results = list(unplug_results)
        self.calls = []

    def call(self, method, *args):
        self.calls.append(method)
        if method == "VBD.unplug":
            result = self.unplug_results.pop(0)
            if result is not None:
                raise exceptions.XapiFailure(details=[result, args[0]])
            return ""
        if method == "VBD.get_currently_attached":
            return True
        if method == "VBD.get_VM":
            return "OpaqueRef:vm"
        return ""


def test_unplug_retries_transient_refusals_then_succeeds():
    session = ScriptedSession(["DEVICE_DETACH_REJECTED", "INTERNAL_ERROR",
                               "VM_MISSING_PV_DRIVERS", None])

    teardown.destroy_vbd(session, "OpaqueRef:vbd", retries=5, retry_interval=0)

    assert session.calls.count("VBD.unplug") == 4
    assert session.calls[-1] == "VBD.destroy"


def test_unplug_treats_already_detached_as_done():
    session = ScriptedSession(["DEVICE_ALREADY_DETACHED"])

    teardown.destroy_vbd(session, "OpaqueRef:vbd", retries=5, retry_interval=0)

    assert session.calls.count("VBD.unplug") == 1
    assert session.calls[-1] == "VBD.destroy"


def test_unplug_gives_up_after_the_configured_retries():
    session = ScriptedSession(["DEVICE_DETACH_REJECTED"] * 4)

    with pytest.raises(exceptions.XapiFailure, match="DEVICE_DETACH_REJECTED"):
        teardown.unplug(session, "OpaqueRef:vbd", retries=3, retry_interval=0)

    assert session.calls.count("VBD.unplug") == 4


def test_unplug_does_not_retry_other_failures():
    session = ScriptedSession(["VDI_IN_USE"])

    with pytest.raises(exceptions.XapiFailure, match="VDI_IN_USE"):
        teardown.unplug(session, "OpaqueRef:vbd", retries=3, retry_interval=0)

    assert session.calls.count("VBD.unplug") == 1


def test_the_driver_destroying_a_vm_retries_its_unplugs_too(monkeypatch):
    """A guest still holding its disk refuses the unplug for a while; the
    driver's VM teardown retries as the agent's does (one teardown)."""
    from nova_xen_split import vm_utils

    class VmSession(ScriptedSession):
        def call(self, method, *args):
            if method == "VM.get_power_state":
                self.calls.append(method)
                return "Halted"
            if method == "VM.get_VBDs":
                self.calls.append(method)
                return ["OpaqueRef:vbd"]
            if method == "VBD.get_record":
                self.calls.append(method)
                return {"empty": True}
            return super().call(method, *args)

    session = VmSession(["DEVICE_DETACH_REJECTED", None])
    slept = []
    monkeypatch.setattr(teardown.time, "sleep", slept.append)

    vm_utils.destroy_vm(session, "OpaqueRef:vm")

    assert session.calls.count("VBD.unplug") == 2
    assert slept == [teardown.RETRY_INTERVAL_SECONDS]
    assert session.calls[-2:] == ["VBD.destroy", "VM.destroy"]
