"""A spawn that fails half-way leaves nothing of the instance behind.

Failures are real: XAPI errors injected into the simulator at each step of
the spawn (``debug.inject_fault``, dom0/simulator/faults.py), and the agent
process killed with SIGKILL between two steps and in the middle of one.
"""

import signal
import threading
import time

import pytest

from rpc import exceptions
from tests.functional.driver.conftest import leftovers, make_instance, spawn
from nova_xen_split.xenhost import marks

# (XAPI message, good calls before the failing one, the spawn step it breaks).
# Counted from the start of the spawn: the agent makes VDIs in the order root,
# swap, ephemeral, config drive; in independent mode it plugs one VBD per
# partition step, and the driver's VBD.create calls follow the agent's three.
# Each case also checks which step the failure hit.
INDEPENDENT_FAULTS = [
    ("VDI.create", 0, "fetch_image"),
    ("VBD.plug", 0, "auto_configure_disk"),
    ("host.call_plugin", 0, "auto_configure_disk"),
    ("VDI.create", 1, "generate_disk swap"),
    ("VDI.create", 2, "generate_disk ephemeral"),
    ("VDI.create", 3, "generate_configdrive"),
    ("VM.create", 0, "VM.create"),
    ("VBD.create", 6, "VBD.create"),
    ("VM.start", 0, "VM.start"),
]
IN_GUEST_FAULTS = [
    ("VDI.create", 2, "generate_disk ephemeral"),
    ("VBD.plug", 0, "fetch_image"),
    ("VM.start", 0, "VM.start"),
]


def _inject(pair, message, skip):
    s = pair.session()
    try:
        s.xenapi.debug.inject_fault(message, "INTERNAL_ERROR", "1", str(skip))
    finally:
        s.xenapi.session.logout()


def _clear(pair):
    s = pair.session()
    try:
        s.xenapi.debug.clear_faults()
    finally:
        s.xenapi.session.logout()


def _check_fault_leaves_nothing(pair, message, skip, step):
    baseline = pair.counts()
    instance = make_instance()
    _inject(pair, message, skip)
    try:
        with pytest.raises(exceptions.NovaXenSplitError) as err:
            spawn(pair, instance)
    finally:
        _clear(pair)
    assert "injected fault in %s" % message in str(err.value)
    steps = [(s.name + " " + s.detail).strip() for s in pair.driver.last_spawn_steps]
    assert steps[-1].startswith("cleanup") and steps[-2].startswith(step), steps
    assert leftovers(pair, instance.uuid, baseline) == []
    assert pair.driver.list_instances() == []


@pytest.mark.parametrize("message,skip,step", INDEPENDENT_FAULTS,
                         ids=["%s-%d" % (m, s) for m, s, _ in INDEPENDENT_FAULTS])
@pytest.mark.parametrize("sr_type", ["ext", "lvm"])
def test_independent_spawn_with_a_xapi_error_at_a_step_leaves_nothing(
        message, skip, step, sr_type, loop_devices, make_sim, make_pair):
    sim = make_sim(extra_args=["--sr-type", sr_type])
    _check_fault_leaves_nothing(make_pair(sim), message, skip, step)


@pytest.mark.parametrize("message,skip,step", IN_GUEST_FAULTS,
                         ids=["%s-%d" % (m, s) for m, s, _ in IN_GUEST_FAULTS])
@pytest.mark.parametrize("sr_type", ["ext", "lvm"])
def test_in_guest_spawn_with_a_xapi_error_at_a_step_leaves_nothing(
        message, skip, step, sr_type, loop_devices, make_sim, make_pair):
    sim = make_sim(compute_vm=True, extra_args=["--sr-type", sr_type])
    _check_fault_leaves_nothing(make_pair(sim), message, skip, step)


def _short_timeouts():
    # A dead agent is noticed by the call's timeout at worst; keep it short.
    return {("agent", "rpc_timeout"): 5.0, ("agent", "long_rpc_timeout"): 10.0}


def test_agent_killed_between_two_steps_leaves_nothing(xapi_sim, make_pair):
    pair = make_pair(xapi_sim, driver_overrides=_short_timeouts())
    baseline = pair.counts()
    instance = make_instance()

    def kill_after_fetch(step):
        if step.name == "fetch_image":
            pair.agent.proc.send_signal(signal.SIGKILL)
            pair.agent.proc.wait(10)
    pair.driver.on_step = kill_after_fetch

    with pytest.raises(exceptions.AgentUnavailable):
        spawn(pair, instance)

    assert leftovers(pair, instance.uuid, baseline) == []


def test_agent_killed_in_the_middle_of_a_disk_step_leaves_nothing(xapi_sim, make_pair):
    pair = make_pair(xapi_sim, driver_overrides=_short_timeouts())
    baseline = pair.counts()
    instance = make_instance()
    killed = threading.Event()
    kills = []

    def kill_when_a_vbd_is_plugged_into_dom0():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed.is_set():
            s = pair.session()
            try:
                plugged = [r for r in s.xenapi.VBD.get_all_records().values()
                           if r["currently_attached"] and marks.vbd_agent(r["other_config"])]
            finally:
                s.xenapi.session.logout()
            if plugged:
                pair.agent.proc.send_signal(signal.SIGKILL)
                kills.append(plugged[0]["device"])
                return
            time.sleep(0.02)
    killer = threading.Thread(target=kill_when_a_vbd_is_plugged_into_dom0)
    killer.start()
    try:
        with pytest.raises(exceptions.AgentUnavailable):
            spawn(pair, instance)
    finally:
        killed.set()
        killer.join(60)

    assert kills, "the agent was never caught with a VBD plugged"
    assert leftovers(pair, instance.uuid, baseline) == []
