"""The agent or the simulator stopped by a signal in the middle of a spawn.

SIGKILL and SIGTERM of the agent process, SIGTERM of ``xapi-sim`` (its
SIGKILL mid-import is ``test_xapi_killed``), each while the agent streams
the image of a spawn. The driver fails the spawn and undoes what it can;
once the stopped process is started again and the agent has settled,
nothing of the instance is left.
"""

import signal
import threading
import time

import pytest

from rpc import exceptions
from tests.functional.driver.conftest import make_instance, spawn
from tests.functional.faults.conftest import settled

CASES = [("agent", signal.SIGKILL), ("agent", signal.SIGTERM), ("xapi-sim", signal.SIGTERM)]


@pytest.mark.parametrize("sr_type", ["ext", "lvm"])
@pytest.mark.parametrize("process, signum", CASES,
                         ids=["%s-%s" % (p, signal.Signals(s).name) for p, s in CASES])
def test_a_process_stopped_by_a_signal_mid_spawn_leaves_nothing_once_it_is_back(
        loop_devices, make_sim, fault_pair, image_service, monkeypatch, process, signum,
        sr_type):
    sim = make_sim(compute_vm=False, extra_args=["--sr-type", sr_type])
    port = sim.url.rsplit(":", 1)[1]
    pair = fault_pair(sim)
    baseline = pair.counts()
    instance = make_instance()
    image_service.delay = 0.1  # seconds per MiB: the 64 MiB fetch takes ~6 s
    api = pair.driver.agent
    real_fetch = api.fetch_image

    def stop_it():
        time.sleep(1.0)
        if process == "agent":
            # As its service manager would: started again once it is gone.
            pair.agent.proc.send_signal(signum)
            pair.agent.proc.wait(60)
            pair.agent.start()           # its startup cleanup runs first
        else:
            sim.proc.send_signal(signum)

    stopper = threading.Thread(target=stop_it)

    def fetch_image(*args, **kwargs):
        stopper.start()
        return real_fetch(*args, **kwargs)

    monkeypatch.setattr(api, "fetch_image", fetch_image)

    try:
        spawn(pair, instance)
        spawned = True
    except (exceptions.NovaXenSplitError, OSError) as e:
        spawned = False
        print("%s %s: spawn failed: %s" % (process, signal.Signals(signum).name, e))
    stopper.join(60)
    if process == "xapi-sim":
        sim.proc.wait(60)
        sim.stop()
        sim.extra_args = sim.extra_args + ["--port", port]
        sim.start()
    if spawned:
        pair.driver.destroy(None, instance)

    assert settled(pair, instance.uuid, baseline) == []
    assert not pair.agent.exited(), pair.agent.output_tail(40)
