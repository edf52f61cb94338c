"""Faults injected into real processes: a simulator killed mid-import, a
private RabbitMQ node stopped or killed at each spawn step, agents and
simulators stopped by signals. Every test ends by checking that nothing of
the instance is left once the parts are back and the agent has settled."""

import shutil
import time
import uuid as uuidlib

import pytest

from nova_xen_split import driver as nxs_driver
from nova_xen_split.cmd import demo_env
from tests.conftest import need
from tests.functional.agent.conftest import image_server, make_agent  # noqa: F401
from tests.functional.driver.conftest import (  # noqa: F401
    Pair, demo_image, demo_vhd_tarball, image_service, leftovers, load_conf, wait_for_agent)
from tests.functional.faults.broker import PrivateBroker

# The agent must show a sign of life this often during a long call; the
# driver gives up on it after this long without one.
MONITOR_SECONDS = 4
SETTLE_SECONDS = 1


@pytest.fixture(scope="module")
def private_broker():
    """One RabbitMQ node of this module's own, started once; tests stop,
    kill and restart it, and leave it running for the next."""
    need(shutil.which("rabbitmq-server") is not None, "rabbitmq-server is not installed")
    broker = PrivateBroker()
    try:
        broker.start()
        yield broker
    finally:
        broker.remove()


@pytest.fixture
def fault_pair(tmp_path, image_service):  # noqa: F811
    """Factory: ``fault_pair(sim, transport_url=None)`` → Pair whose agent
    settles every second and whose long calls are monitored every
    ``MONITOR_SECONDS``."""
    pairs = []

    def factory(sim, transport_url=None):
        host = "nxs-fault-%s" % uuidlib.uuid4().hex[:10]
        work = tmp_path / host
        work.mkdir()
        config_file = demo_env.write_config(
            str(work / "nova-xen-split.conf"), sim, host, image_service.url, str(work),
            transport_url=transport_url, vm_uuid=sim.compute_vm_uuid,
            # The instance's own disks are what these faults are about; a
            # ready image cache VDI rightly outlives them (crashes while one
            # fills: tests/functional/driver/test_image_cache.py).
            cache_images="none")
        with open(config_file, "a") as f:
            f.write("[agent]\nrpc_timeout = %d\nsettle_interval = %d\n"
                    % (MONITOR_SECONDS, SETTLE_SECONDS))
        agent = demo_env.Agent(config_file, str(work / "agent.log")).start()
        pair = Pair(sim, host, config_file, agent, None)
        pairs.append(pair)
        pair.driver = nxs_driver.XenSplitDriver(load_conf(config_file))
        wait_for_agent(pair)
        return pair

    yield factory
    for pair in pairs:
        try:
            pair.driver.cleanup_host(pair.host)
        finally:
            pair.agent.stop()


def settled(pair, instance_uuid, baseline, timeout=30):
    """What is left of the instance once the agent has settled (empty:
    nothing), waiting up to ``timeout`` seconds for it to go."""
    deadline = time.monotonic() + timeout
    while True:
        left = leftovers(pair, instance_uuid, baseline)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)
