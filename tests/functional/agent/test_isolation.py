"""Nothing of another instance or tenant is touched, in both modes.

A method that takes a VDI works only on a finished VDI marked with the
calling instance; a disk's idempotency key is namespaced by its kind, and
a VDI made for one request is never handed out for another.
"""

import os
import uuid

import pytest

from rpc import exceptions
from tests.functional.agent import disktools

MiB = 1 << 20


def _tenant_vdi(session, size_mb=64):
    """Another tenant's disk: no mark of ours, an owner of its own."""
    pool = session.call("pool.get_all")[0]
    ref = session.call("VDI.create", {
        "name_label": "tenant B's data", "name_description": "",
        "virtual_size": str(size_mb * MiB),
        "SR": session.call("pool.get_default_SR", pool), "type": "user",
        "sharable": False, "read_only": False, "other_config": {"owner": "tenant-B"},
        "xenstore_data": {}, "sm_config": {}, "tags": []})
    return ref, session.call("VDI.get_uuid", ref)


def _snapshot(session, ref):
    rec = session.call("VDI.get_record", ref)
    return rec["virtual_size"], rec["other_config"]


# What a backend refuses outright (it cannot do it at all) is refused before
# any VDI is looked at; the rest is refused for the VDI.
CAPABILITY = {"resize_disk": "resize_down", "preconfigure_instance": "preconfigure_instance"}


def _refusal(agent, method):
    capability = CAPABILITY.get(method)
    if capability and not agent.backend.capabilities()[capability]:
        return exceptions.UnsupportedInIndependentMode
    return exceptions.InvalidRequest


VDI_CALLS = [
    ("auto_configure_disk", lambda vdi, instance: dict(vdi_uuid=vdi, new_gb=2,
                                                       instance_uuid=instance)),
    ("resize_disk", lambda vdi, instance: dict(vdi_uuid=vdi, new_gb=1,
                                               instance_uuid=instance)),
    ("preconfigure_instance", lambda vdi, instance: dict(
        vdi_uuid=vdi, instance_uuid=instance, files=[["/etc/motd", b"owned\n"]])),
]


@pytest.mark.parametrize("method,args", VDI_CALLS, ids=[m for m, _ in VDI_CALLS])
def test_a_vdi_of_another_tenant_is_refused_and_left_as_it_was(agent, method, args):
    ref, vdi_uuid = _tenant_vdi(agent.session)
    before = _snapshot(agent.session, ref), agent.vdi_uuids()

    with pytest.raises(_refusal(agent, method)) as caught:
        getattr(agent.endpoint, method)(**args(vdi_uuid, str(uuid.uuid4())))

    if caught.type is exceptions.InvalidRequest:
        assert caught.value.kwargs["field"] == "vdi_uuid"
        assert vdi_uuid in str(caught.value)
    assert (_snapshot(agent.session, ref), agent.vdi_uuids()) == before
    assert agent.tagged_vbds() == []


@pytest.mark.parametrize("method,args", VDI_CALLS, ids=[m for m, _ in VDI_CALLS])
def test_a_vdi_of_another_instance_is_refused(agent, method, args):
    made = agent.endpoint.generate_disk(
        instance_uuid=str(uuid.uuid4()), kind="ephemeral", size_mb=64, fs_type="ext4",
        label="data")
    ref = agent.session.call("VDI.get_by_uuid", made["uuid"])
    before = _snapshot(agent.session, ref), agent.vdi_uuids()

    with pytest.raises(_refusal(agent, method)) as caught:
        getattr(agent.endpoint, method)(**args(made["uuid"], str(uuid.uuid4())))

    if caught.type is exceptions.InvalidRequest:
        assert "not a disk made for instance" in str(caught.value)
    assert (_snapshot(agent.session, ref), agent.vdi_uuids()) == before


def test_without_an_instance_an_old_caller_may_touch_only_this_agents_disks(agent):
    # A driver older than interface 1.3 names no instance: the VDI must
    # still be one this agent made for an instance.
    ref, vdi_uuid = _tenant_vdi(agent.session)
    with pytest.raises(exceptions.InvalidRequest, match="by this agent"):
        agent.endpoint.auto_configure_disk(vdi_uuid=vdi_uuid, new_gb=2)
    assert agent.session.call("VDI.get_virtual_size", ref) == str(64 * MiB)


@pytest.mark.parametrize("label", ["root", "swap", "configdrive"])
def test_an_ephemeral_labelled_like_another_disk_is_a_disk_of_its_own(
        agent, image_server, tmp_path, label):
    instance = str(uuid.uuid4())
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(4 * MiB))
    image_id = image_server.add(image)
    swap = agent.endpoint.generate_disk(instance_uuid=instance, kind="swap", size_mb=16,
                                        fs_type="swap", label="swap")

    ephemeral = agent.endpoint.generate_disk(
        instance_uuid=instance, kind="ephemeral", size_mb=32, fs_type="vfat", label=label)
    [root] = agent.endpoint.fetch_image(instance_uuid=instance, image_id=image_id,
                                        disk_format="raw", auth_token=None)["vdis"]

    assert len({swap["uuid"], ephemeral["uuid"], root["uuid"]}) == 3
    with open(disktools.vdi_file(agent.sim, root["uuid"]), "rb") as f:
        assert f.read(4 * MiB) == image.read_bytes()  # the image, not the ephemeral


def test_a_ready_disk_is_not_handed_out_for_another_request(agent):
    instance = str(uuid.uuid4())
    first = agent.endpoint.generate_disk(instance_uuid=instance, kind="ephemeral",
                                         size_mb=32, fs_type="ext4", label="data")
    before = agent.vdi_uuids()

    for other in (dict(size_mb=64), dict(fs_type="ext3")):
        args = dict(instance_uuid=instance, kind="ephemeral", size_mb=32, fs_type="ext4",
                    label="data")
        with pytest.raises(exceptions.InvalidRequest, match="made by another request"):
            agent.endpoint.generate_disk(**dict(args, **other))
    again = agent.endpoint.generate_disk(instance_uuid=instance, kind="ephemeral",
                                         size_mb=32, fs_type="ext4", label="data")

    assert again == first
    assert agent.vdi_uuids() == before


def test_a_root_of_one_image_is_not_handed_out_for_another(agent, image_server, tmp_path):
    instance = str(uuid.uuid4())
    ids = []
    for name in ("a", "b"):
        image = tmp_path / name
        image.write_bytes(os.urandom(MiB))
        ids.append(image_server.add(image))
    agent.endpoint.fetch_image(instance_uuid=instance, image_id=ids[0], disk_format="raw",
                               auth_token=None)
    before = agent.vdi_uuids()

    with pytest.raises(exceptions.InvalidRequest, match="made by another request"):
        agent.endpoint.fetch_image(instance_uuid=instance, image_id=ids[1],
                                   disk_format="raw", auth_token=None)

    assert agent.vdi_uuids() == before
