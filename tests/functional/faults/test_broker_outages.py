"""The broker goes away in the middle of each spawn step.

A private RabbitMQ node (never the shared one) is stopped cleanly, killed,
or restarted while the agent works on one step of a spawn. The driver
gives up on the call (no heartbeat for ``MONITOR_SECONDS``), undoes the
spawn through XAPI and marks the instance given up; the agent, still at
work, stops or destroys what it finishes for nobody. Once the broker is
back and the agent has settled, nothing of the instance is left.
"""

import threading
import time

import pytest

from rpc import exceptions
from tests.functional.driver.conftest import make_instance, spawn
from tests.functional.faults.conftest import settled

# (step, agent call it makes, how the broker goes, seconds into the call,
# mode). The in_guest agent writes an image into a VDI plugged into its own
# VM: the driver's sweep cannot unplug it meanwhile, so only the agent can
# see to it that the disk it finishes for nobody goes.
CASES = [
    ("fetch_image in_guest", "fetch_image", "stop", 0.5, "in_guest"),
    ("fetch_image", "fetch_image", "kill", 0.5, "independent"),
    ("auto_configure_disk", "auto_configure_disk", "kill", 0.3, "independent"),
    ("generate_disk swap", "generate_disk", "restart", 0.2, "independent"),
    ("generate_disk ephemeral", "generate_disk", "kill", 0.3, "independent"),
    ("generate_configdrive", "generate_configdrive", "stop", 0.2, "independent"),
]


def _break_broker_during(monkeypatch, pair, broker, method, how, after, label=None):
    """Make the broker go away ``after`` seconds into the first call of
    ``method`` whose ``kind`` is ``label`` (generate_disk: swap or
    ephemeral); returns the thread that does it."""
    api = pair.driver.agent
    real = getattr(api, method)
    breaker = threading.Thread(target=lambda: (time.sleep(after), _go(broker, how)))

    def wrapper(*args, **kwargs):
        if not breaker.is_alive() and breaker.ident is None and \
                (label is None or kwargs.get("kind") == label):
            breaker.start()
        return real(*args, **kwargs)

    monkeypatch.setattr(api, method, wrapper)
    return breaker


def _go(broker, how):
    if how == "kill":
        broker.kill()
    else:
        broker.stop()
        if how == "restart":
            broker.start()


@pytest.mark.parametrize("sr_type", ["ext", "lvm"])
@pytest.mark.parametrize("step, method, how, after, mode", CASES,
                         ids=[c[0].replace(" ", "-") for c in CASES])
def test_the_broker_going_away_during_a_spawn_step_leaves_nothing_of_the_instance(
        loop_devices, make_sim, fault_pair, private_broker, image_service, monkeypatch,
        step, method, how, after, mode, sr_type):
    sim = make_sim(compute_vm=(mode == "in_guest"), extra_args=["--sr-type", sr_type])
    pair = fault_pair(sim, transport_url=private_broker.url)
    baseline = pair.counts()
    instance = make_instance()
    if method == "fetch_image":
        image_service.delay = 0.1  # seconds per MiB: a 64 MiB fetch takes ~6 s
    label = step.split()[1] if method == "generate_disk" else None
    label = label if method == "generate_disk" else None
    breaker = _break_broker_during(monkeypatch, pair, private_broker, method, how, after,
                                   label)

    try:
        spawn(pair, instance)
        spawned = True
    except exceptions.NovaXenSplitError as e:
        spawned = False
        print("%s, broker %s: spawn failed: %s" % (step, how, e))
    breaker.join(120)
    assert breaker.ident is not None, "the step was never called"
    if not private_broker.answers():
        private_broker.start()
    if spawned:  # the broker came back in time: the spawn went through
        pair.driver.destroy(None, instance)

    assert settled(pair, instance.uuid, baseline) == []
    assert not pair.agent.exited(), pair.agent.output_tail(40)
