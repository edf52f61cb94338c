"""generate_disk in both modes, checked with sfdisk, blkid and e2fsck."""

import uuid

import pytest

from tests.functional.agent import disktools


@pytest.mark.parametrize("fs_type,label,kind,ptype", [
    ("ext4", "ephemeral0", "ephemeral", "83"),
    ("ext3", "ephemeral1", "ephemeral", "83"),
    ("vfat", "EPHEMERAL0", "ephemeral", "c"),
    ("swap", "swap", "swap", "82"),
])
def test_generate_disk_makes_one_partition_from_2048_formatted_and_labelled(
        agent, fs_type, label, kind, ptype):
    made = agent.endpoint.generate_disk(
        instance_uuid=str(uuid.uuid4()), kind=kind, size_mb=64, fs_type=fs_type,
        label=label)

    assert made["size_bytes"] == 64 << 20
    path = disktools.vdi_file(agent.sim, made["uuid"])
    table = disktools.partitions(path)
    assert table["label"] == "dos"
    [part] = table["partitions"]
    assert part["start"] == 2048
    assert part["start"] + part["size"] == (64 << 20) // 512
    assert part["type"] == ptype
    found = disktools.probe(path, 2048 * 512)
    assert found["TYPE"] == fs_type
    assert found["LABEL"] == label
    if fs_type.startswith("ext"):
        clean, output = disktools.e2fsck_clean(path, 2048 * 512)
        assert clean, output
    assert agent.tagged_vbds() == []


def test_generate_disk_twice_for_the_same_instance_and_purpose_returns_the_same_vdi(agent):
    instance = str(uuid.uuid4())
    first = agent.endpoint.generate_disk(
        instance_uuid=instance, kind="swap", size_mb=16, fs_type="swap", label="swap")
    before = agent.vdi_uuids()

    second = agent.endpoint.generate_disk(
        instance_uuid=instance, kind="swap", size_mb=16, fs_type="swap", label="swap")

    assert second == first
    assert agent.vdi_uuids() == before
