"""A disk finished after the driver gave up on its instance is not left.

The driver's undo (or destroy) sweeps the instance's disks through XAPI
and marks the instance given up on the pool; an agent call still at work
then (its caller timed out, the broker went away) must destroy what it
makes instead of handing it to nobody, and the agent's settling removes
any disk of such an instance that it finds. The sweep is the driver's own
(``vm_utils.sweep_instance_vdis``); the moment is chosen through
``agent.backends.base.checkpoint``, the hook every operation calls between
its steps.
"""

import uuid

import pytest

from agent.backends import base
from nova_xen_split import vm_utils
from nova_xen_split.xenhost import marks
from rpc import exceptions
from tests.functional.agent.conftest import agent  # noqa: F401
from tests.functional.agent.test_failures import _operations


def _instance_vdis(harness, instance_uuid):
    return [rec for rec in harness.session.call("VDI.get_all_records").values()
            if marks.vdi_instance(rec["other_config"]) == instance_uuid]


@pytest.mark.parametrize("operation", ["generate_disk", "fetch_raw", "fetch_vhd",
                                       "generate_configdrive"])
def test_a_call_that_outlived_its_caller_leaves_no_disk_behind_the_sweep(
        agent, image_server, tmp_path, operation):  # noqa: F811
    # The call reaches the agent (or a worker) only after its caller timed
    # out and the driver's undo swept the instance: what it would make now
    # would be kept by nobody.
    instance = str(uuid.uuid4())
    run = _operations(agent, image_server, tmp_path)[operation]
    vm_utils.sweep_instance_vdis(agent.session, instance)

    with pytest.raises(exceptions.CallExpired) as raised:
        run(instance)

    assert "the driver swept instance %s" % instance in str(raised.value)
    assert _instance_vdis(agent, instance) == []
    assert agent.tagged_vbds() == []


def test_a_disk_the_sweep_could_not_reach_is_destroyed_when_its_call_ends(
        agent, monkeypatch):  # noqa: F811
    # The sweep runs while the agent still formats the disk; here it finds
    # nothing yet (the disk is marked only at its end, as with a VHD chain
    # landing in dom0), so only the agent can see to it.
    instance = str(uuid.uuid4())

    def driver_gives_up(name):
        if name == "formatted":
            vm_utils.mark_gave_up(agent.session, instance)

    monkeypatch.setattr(base, "checkpoint", driver_gives_up)
    with pytest.raises(exceptions.CallExpired):
        agent.endpoint.generate_disk(instance_uuid=instance, kind="swap", size_mb=16,
                                     fs_type="swap", label="swap")
    assert _instance_vdis(agent, instance) == []
    assert agent.tagged_vbds() == []


def test_a_ready_disk_of_an_instance_the_driver_gave_up_on_goes_when_the_agent_settles(
        agent):  # noqa: F811
    # A disk handed over just as the broker went away: the driver never got
    # it, and its sweep could not reach XAPI. The mark is what is left.
    instance = str(uuid.uuid4())
    agent.endpoint.generate_disk(instance_uuid=instance, kind="swap", size_mb=16,
                                 fs_type="swap", label="swap")
    kept = str(uuid.uuid4())
    agent.endpoint.generate_disk(instance_uuid=kept, kind="swap", size_mb=16,
                                 fs_type="swap", label="swap")
    vm_utils.mark_gave_up(agent.session, instance)

    agent.backend.settle()

    assert _instance_vdis(agent, instance) == []
    assert len(_instance_vdis(agent, kept)) == 1
    # A new spawn of the instance wants disks again.
    vm_utils.forget_gave_up(agent.session, instance)
    made = agent.endpoint.generate_disk(instance_uuid=instance, kind="swap", size_mb=16,
                                        fs_type="swap", label="swap")
    agent.backend.settle()
    assert [rec["uuid"] for rec in _instance_vdis(agent, instance)] == [made["uuid"]]
