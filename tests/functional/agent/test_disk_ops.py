"""auto_configure_disk, generate_configdrive, destroy_vdis in both modes."""

import json
import uuid

import pytest

from rpc import exceptions
from rpc import methods
from tests.functional.agent import disktools

GiB = 1 << 30


def _ext4_disk_with_file(agent, tmp_path, size_mb=64, data=b"written before the grow\n"):
    made = agent.endpoint.generate_disk(
        instance_uuid=str(uuid.uuid4()), kind="ephemeral", size_mb=size_mb,
        fs_type="ext4", label="root")
    path = disktools.vdi_file(agent.sim, made["uuid"])
    disktools.ext_write(path, 2048 * 512, "/hello.txt", data, tmp_path)
    return made, path


def test_auto_configure_disk_grows_disk_partition_and_fs_keeping_the_data(agent, tmp_path):
    made, path = _ext4_disk_with_file(agent, tmp_path)
    blocks_before = disktools.ext_block_count(path, 2048 * 512)

    grown = agent.endpoint.auto_configure_disk(vdi_uuid=made["uuid"], new_gb=1)

    assert grown == {"uuid": made["uuid"], "size_bytes": GiB}
    [part] = disktools.partitions(path)["partitions"]
    assert part["start"] == 2048
    assert part["start"] + part["size"] == GiB // 512
    assert disktools.ext_block_count(path, 2048 * 512) > 10 * blocks_before
    clean, output = disktools.e2fsck_clean(path, 2048 * 512)
    assert clean, output
    assert disktools.ext_read(path, 2048 * 512, "/hello.txt") == b"written before the grow\n"
    assert agent.tagged_vbds() == []


def test_auto_configure_disk_refuses_a_disk_without_exactly_one_partition(agent):
    made = agent.endpoint.generate_disk(
        instance_uuid=str(uuid.uuid4()), kind="swap", size_mb=16, fs_type="swap",
        label="swap")
    path = disktools.vdi_file(agent.sim, made["uuid"])
    disktools.run(["sfdisk", "--delete", path, "1"])

    with pytest.raises(exceptions.DiskOperationFailed, match="exactly partition 1"):
        agent.endpoint.auto_configure_disk(vdi_uuid=made["uuid"], new_gb=1)

    assert agent.session.call("VDI.get_virtual_size", agent.session.call(
        "VDI.get_by_uuid", made["uuid"])) == str(16 << 20)
    assert agent.tagged_vbds() == []


def test_generate_configdrive_writes_an_iso_with_the_instance_uuid(agent):
    instance = str(uuid.uuid4())

    made = agent.endpoint.generate_configdrive(
        instance_uuid=instance, metadata={"uuid": instance, "name": "vm1"},
        user_data=b"#cloud-config\n", network_data=None, vendor_data=None,
        files=[["/etc/motd", b"hello\n"]], admin_password="s3cret")

    assert made["size_bytes"] == 64 << 20
    path = disktools.vdi_file(agent.sim, made["uuid"])
    assert disktools.probe(path, 0)["LABEL"] == "config-2"
    meta = json.loads(disktools.iso_file(path, "openstack/latest/meta_data.json"))
    assert meta["uuid"] == instance
    assert disktools.iso_file(path, "openstack/latest/user_data") == "#cloud-config\n"
    assert agent.tagged_vbds() == []


def test_destroy_vdis_removes_them_and_refuses_an_unknown_uuid_changing_nothing(agent):
    made = [agent.endpoint.generate_disk(
        instance_uuid=str(uuid.uuid4()), kind="swap", size_mb=8, fs_type="swap",
        label="swap")["uuid"] for _ in range(2)]
    before = agent.vdi_uuids()

    with pytest.raises(exceptions.InvalidRequest, match="no VDI with uuid"):
        agent.endpoint.destroy_vdis(vdi_uuids=[made[0], str(uuid.uuid4())])
    assert agent.vdi_uuids() == before

    assert agent.endpoint.destroy_vdis(vdi_uuids=made) == {"destroyed": 2}
    assert agent.vdi_uuids() == before - set(made)


def _plain_vdi(session, label):
    """A VDI nova-xen-split did not make (a volume, say): no tags."""
    pool = session.call("pool.get_all")[0]
    return session.call("VDI.create", {
        "name_label": label, "name_description": "", "virtual_size": str(8 << 20),
        "SR": session.call("pool.get_default_SR", pool), "type": "user",
        "sharable": False, "read_only": False, "other_config": {}, "xenstore_data": {},
        "sm_config": {}, "tags": []})


def test_destroy_vdis_refuses_a_vdi_it_did_not_make_and_destroys_nothing(agent):
    session = agent.session
    made = agent.endpoint.generate_disk(
        instance_uuid=str(uuid.uuid4()), kind="swap", size_mb=8, fs_type="swap",
        label="swap")["uuid"]
    volume = session.call("VDI.get_uuid", _plain_vdi(session, "a volume"))
    before = agent.vdi_uuids()

    with pytest.raises(exceptions.InvalidRequest) as caught:
        agent.endpoint.destroy_vdis(vdi_uuids=[made, volume])

    assert caught.value.kwargs["field"] == "vdi_uuids[1]"
    assert "was not made by nova-xen-split" in str(caught.value)
    assert agent.vdi_uuids() == before


def test_destroy_vdis_refuses_a_vdi_plugged_by_someone_else_and_destroys_nothing(agent):
    session = agent.session
    made = [agent.endpoint.generate_disk(
        instance_uuid=str(uuid.uuid4()), kind="swap", size_mb=8, fs_type="swap",
        label="swap")["uuid"] for _ in range(2)]
    # Someone (not this agent) plugs the second disk into dom0.
    vbd = session.call("VBD.create", {
        "VM": agent.ctx.dom0_ref, "VDI": session.call("VDI.get_by_uuid", made[1]),
        "userdevice": "autodetect", "bootable": False, "mode": "RW", "type": "Disk",
        "empty": False, "other_config": {}, "qos_algorithm_type": "",
        "qos_algorithm_params": {}})
    session.call("VBD.plug", vbd)
    before = agent.vdi_uuids()
    try:
        with pytest.raises(exceptions.InvalidRequest) as caught:
            agent.endpoint.destroy_vdis(vdi_uuids=made)
        assert caught.value.kwargs["field"] == "vdi_uuids[1]"
        assert "is plugged into VM %s" % session.call("VM.get_uuid", agent.ctx.dom0_ref) \
            in str(caught.value)
        assert agent.vdi_uuids() == before
        assert session.call("VBD.get_currently_attached", vbd) is True
    finally:
        session.call("VBD.unplug", vbd)
        session.call("VBD.destroy", vbd)


def test_describe_names_the_mode_the_vm_and_the_interface_version(agent):
    described = agent.endpoint.describe()

    assert described["mode"] == agent.ctx.mode
    assert described["version"] == methods.VERSION
    assert described["host_uuid"] == agent.session.call(
        "host.get_uuid", agent.session.host_ref)
    if agent.ctx.mode == "in_guest":
        assert described["vm_uuid"] == agent.sim.compute_vm_uuid
        assert described["capabilities"]["resize_down"] is True
    else:
        assert described["vm_uuid"] is None
        assert described["capabilities"]["resize_down"] is False
