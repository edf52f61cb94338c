"""A toolstack restart in the middle of each spawn step.

XAPI stops (SIGTERM, as ``xe-toolstack-restart`` stops it) while a call of
the step is in flight, unanswered, and starts again on the same state and
port; it forgets every session and task. The spawn must end within a
bounded time, in success or in a typed error; destroy then leaves nothing
of the instance; and the same driver and agent spawn the next instance,
logging in again. The moment is chosen by arming ``STOP_XAPI`` on a
message (dom0/simulator/faults.py), counted from the start of the spawn as
in test_spawn_failures.py.
"""

import threading
import time

import pytest

from rpc import exceptions
from tests.functional.driver.conftest import leftovers, make_instance, spawn

# (message, good calls before the one that stops XAPI, the step it hits).
# In independent mode the agent plugs the root into dom0 twice (to check
# it, then to grow it), then swap and ephemeral once each, and makes one
# import task per PUT (the image's, then the config drive's); the driver's
# four VBD.create calls follow the agent's.
INDEPENDENT_POINTS = [
    ("task.create", 0, "fetch_image"),          # the root VDI being filled
    ("host.call_plugin", 1, "auto_configure_disk"),  # resize_partition_and_fs
    ("VBD.plug", 2, "generate_disk swap"),
    ("VBD.plug", 3, "generate_disk ephemeral"),
    ("task.create", 1, "generate_configdrive"),    # its upload
    ("VM.create", 0, "VM.create"),
    ("VBD.create", 4, "VBD.create"),
    ("VM.start", 0, "VM.start"),
]
IN_GUEST_POINTS = [
    ("VBD.plug", 0, "fetch_image"),
]
# A step waits at most this long for a XAPI that went away.
BOUND_SECONDS = 60


class ToolstackRestarts:
    """Starts the simulator again, on its state and port, whenever it stops."""

    def __init__(self, sim):
        self.sim = sim
        self.count = 0
        self.back = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self):
        while not self._stop.is_set():
            proc = self.sim.proc
            if proc is not None and proc.poll() is not None:
                self.back.clear()
                self.sim.stop()     # collect the exit and its output
                self.sim.start()    # xe-toolstack-restart: start again
                self.count += 1
                self.back.set()
            time.sleep(0.05)

    def close(self):
        self._stop.set()
        self._thread.join(30)


def _arm(pair, message, skip):
    s = pair.session()
    try:
        s.xenapi.debug.inject_fault(message, "STOP_XAPI", "1", str(skip))
    finally:
        s.xenapi.session.logout()


def _short_timeouts():
    return {("agent", "rpc_timeout"): 20.0, ("agent", "long_rpc_timeout"): 40.0}


def _restart_in_the_middle_of(pair, message, skip, step):
    baseline = pair.counts()
    restarts = ToolstackRestarts(pair.sim)
    instance = make_instance()
    try:
        _arm(pair, message, skip)
        started = time.monotonic()
        try:
            spawn(pair, instance)
            outcome = None
        except exceptions.NovaXenSplitError as e:  # a typed error, nothing else
            outcome = e
        elapsed = time.monotonic() - started
        assert restarts.back.wait(30), "xapi-sim did not come back"
    finally:
        restarts.close()

    assert restarts.count == 1
    assert elapsed < BOUND_SECONDS
    steps = [(s.name + " " + s.detail).strip() for s in pair.driver.last_spawn_steps]
    if outcome is not None:
        assert steps[-1].startswith("cleanup") and steps[-2].startswith(step), steps
    pair.driver.destroy(None, instance)
    assert leftovers(pair, instance.uuid, baseline) == []

    # Both sides log in again: the next spawn on the same pair works.
    after = make_instance()
    spawn(pair, after)
    assert pair.driver.list_instances() == [after.name]
    pair.driver.destroy(None, after)
    assert leftovers(pair, after.uuid, baseline) == []


@pytest.mark.parametrize("message,skip,step", INDEPENDENT_POINTS,
                         ids=[step.replace(" ", "-") for _, _, step in INDEPENDENT_POINTS])
def test_independent_spawn_survives_a_toolstack_restart_in_a_step(
        message, skip, step, xapi_sim, make_pair):
    pair = make_pair(xapi_sim, driver_overrides=_short_timeouts())
    _restart_in_the_middle_of(pair, message, skip, step)


@pytest.mark.parametrize("message,skip,step", IN_GUEST_POINTS,
                         ids=[step.replace(" ", "-") for _, _, step in IN_GUEST_POINTS])
def test_in_guest_spawn_survives_a_toolstack_restart_in_a_step(
        message, skip, step, xapi_sim_compute, make_pair):
    pair = make_pair(xapi_sim_compute, driver_overrides=_short_timeouts())
    _restart_in_the_middle_of(pair, message, skip, step)
