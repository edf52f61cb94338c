"""partition_utils through host.call_plugin, on disks plugged into dom0.

Results are checked with tools the plugin does not use: sfdisk for the
table, blkid for type and label, e2fsck/dumpe2fs for the filesystem, and a
real ext4 mount for the data.
"""

import json
import os
import stat
import subprocess
import time

import pytest

from tests.functional.plugins.conftest import MIB, device_mapper_works, tool

PLUGIN = "partition_utils.py"


def _sfdisk(device):
    return json.loads(tool("sfdisk", "--json", device))["partitiontable"]


def _blkid(device):
    out = tool("blkid", "-p", "-o", "export", device)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _dumpe2fs(device):
    out = tool("dumpe2fs", "-h", device)
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return int(fields["Block count"]), int(fields["Block size"])


def test_wait_for_dev_answers_with_the_device_path(dom0, dom0_disk):
    dev, _ = dom0_disk()
    result = dom0.call(PLUGIN, "wait_for_dev", dev=dev, max_seconds="2")
    assert result == {"dev": dev,
                      "path": os.path.join(dom0.sim.vm_dev_dir(dom0.dom0_uuid), dev)}


def test_wait_for_dev_also_waits_for_a_partition(dom0, dom0_disk):
    dev, _ = dom0_disk()
    dom0.call(PLUGIN, "make_partition", dev=dev, partition_start="2048", partition_end="-")
    result = dom0.call(PLUGIN, "wait_for_dev", dev=dev + "1", max_seconds="2")
    assert os.path.realpath(result["path"]) == os.path.realpath(
        os.path.join(dom0.sim.vm_dev_dir(dom0.dom0_uuid), dev)) + "p1"


def test_wait_for_dev_times_out_with_an_error_not_an_empty_answer(dom0):
    details = dom0.failure(PLUGIN, "wait_for_dev", dev="xvdz", max_seconds="1")
    assert details[:3] == ["XENAPI_PLUGIN_FAILURE", "wait_for_dev", "DeviceTimeout"]
    assert "xvdz did not appear within 1 s" in details[3]


def test_make_partition_writes_one_primary_partition_and_waits_for_it(dom0, dom0_disk):
    dev, device = dom0_disk(64)

    result = dom0.call(PLUGIN, "make_partition", dev=dev, partition_start="2048",
                       partition_end="-")

    assert result == {"partition": dev + "1", "start": 2048, "end": 64 * 2048 - 1}
    table = _sfdisk(device)
    assert table["label"] == "dos"
    assert [(p["start"], p["size"], p["type"]) for p in table["partitions"]] == \
        [(2048, 64 * 2048 - 2048, "83")]
    if not device_mapper_works():
        # No kpartx here: the plugin returned only once udev showed the partition.
        assert os.path.exists(os.path.join(dom0.sim.vm_dev_dir(dom0.dom0_uuid), dev + "1"))


def test_make_partition_takes_an_explicit_end_and_type(dom0, dom0_disk):
    dev, device = dom0_disk(32)
    dom0.call(PLUGIN, "make_partition", dev=dev, partition_start="4096",
              partition_end="40959", partition_type="82")
    assert [(p["start"], p["size"], p["type"]) for p in _sfdisk(device)["partitions"]] == \
        [(4096, 36864, "82")]


def test_make_partition_replaces_an_earlier_table(dom0, dom0_disk):
    dev, device = dom0_disk(32)
    dom0.call(PLUGIN, "make_partition", dev=dev, partition_start="2048", partition_end="9999")
    dom0.call(PLUGIN, "make_partition", dev=dev, partition_start="2048", partition_end="-")
    assert [(p["start"], p["size"]) for p in _sfdisk(device)["partitions"]] == \
        [(2048, 32 * 2048 - 2048)]


@pytest.mark.parametrize("fs_type, label, blkid_type", [
    ("ext3", "ephemeral0", "ext3"),
    ("ext4", "sixteen_chars_ok", "ext4"),
    ("vfat", "CONFIG_2", "vfat"),
    ("swap", "swap-0", "swap"),
    ("ext4", "", "ext4"),
])
def test_mkfs_makes_the_filesystem_blkid_sees(dom0, dom0_disk, fs_type, label, blkid_type):
    dev, device = dom0_disk(64)
    dom0.call(PLUGIN, "make_partition", dev=dev, partition_start="2048", partition_end="-")

    result = dom0.call(PLUGIN, "mkfs", dev=dev, partnum="1", fs_type=fs_type,
                       fs_label=label)

    found = _blkid(device + "p1")
    assert found["TYPE"] == blkid_type
    assert found.get("LABEL", "") == label == result["label"]
    assert found["UUID"] == result["uuid"] and result["fs_type"] == fs_type
    if fs_type.startswith("ext"):
        tool("e2fsck", "-fn", device + "p1")
    elif fs_type == "vfat":
        tool("fsck.vfat", "-n", device + "p1")


def test_get_partitions_reports_the_table(dom0, dom0_disk):
    dev, device = dom0_disk(16)
    assert dom0.call(PLUGIN, "get_partitions", dev=dev) == {
        "label": None, "partitions": [], "size_sectors": 16 * 2048}
    tool("sfdisk", "--no-reread", "--no-tell-kernel", device,
         input_text="label: dos\n2048,8192,83,*\n20480,,82\n")
    assert dom0.call(PLUGIN, "get_partitions", dev=dev) == {
        "label": "dos", "size_sectors": 16 * 2048, "partitions": [
            {"num": 1, "start": 2048, "end": 10239, "type": "83", "bootable": True},
            {"num": 2, "start": 20480, "end": 32767, "type": "82", "bootable": False}]}


def _mount(device, mountpoint):
    _wait_for_block_device(device)
    subprocess.run(["mount", "-t", "ext4", device, str(mountpoint)], check=True, timeout=60)


def _wait_for_block_device(path, timeout=10.0):
    """Wait until ``path`` opens as a block device. Opening the whole disk
    (``sfdisk -A`` here) can make the kernel rescan a loop device's
    partitions, which drops and re-adds their nodes: a mount right then
    finds "not a valid block device" (seen once in a full run)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
            continue
        try:
            if stat.S_ISBLK(os.fstat(fd).st_mode):
                return
        finally:
            os.close(fd)
        if time.monotonic() > deadline:
            raise AssertionError("%s is not a block device" % path)
        time.sleep(0.05)


def _umount(mountpoint):
    subprocess.run(["umount", str(mountpoint)], check=True, timeout=60)


def test_resize_grows_partition_and_filesystem_keeping_data_and_boot_flag(
        dom0, dom0_disk, tmp_path):
    vdi = dom0.new_vdi(48 * MIB)
    dev, device = dom0.plug(vdi)
    dom0.call(PLUGIN, "make_partition", dev=dev, partition_start="2048",
              partition_end=str(24 * 2048 - 1))
    dom0.call(PLUGIN, "mkfs", dev=dev, partnum="1", fs_type="ext4", fs_label="root")
    tool("sfdisk", "--no-reread", "--no-tell-kernel", "-A", device, "1")
    payload = os.urandom(3 * MIB)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    _mount(device + "p1", mountpoint)
    try:
        (mountpoint / "payload.bin").write_bytes(payload)
    finally:
        _umount(mountpoint)
    blocks_before, _ = _dumpe2fs(device + "p1")
    # The disk grows as the agent grows it: a bigger VDI, plugged again.
    dom0.unplug_all()
    dom0.api.VDI.resize(vdi, str(96 * MIB))
    dev, device = dom0.plug(vdi)

    result = dom0.call(PLUGIN, "resize_partition_and_fs", dev=dev, partnum="1")

    table = _sfdisk(device)
    [partition] = table["partitions"]
    assert (partition["start"], partition["size"]) == (2048, 96 * 2048 - 2048)
    assert partition.get("bootable") is True
    assert result == {"start": 2048, "end": 96 * 2048 - 1, "fs_blocks": result["fs_blocks"]}
    blocks, block_size = _dumpe2fs(device + "p1")
    assert blocks == result["fs_blocks"] > blocks_before
    assert blocks * block_size == partition["size"] * 512  # the fs fills the partition
    tool("e2fsck", "-fn", device + "p1")
    _mount(device + "p1", mountpoint)
    try:
        assert (mountpoint / "payload.bin").read_bytes() == payload
    finally:
        _umount(mountpoint)


def test_resize_of_a_partition_that_already_fills_the_disk_changes_nothing(dom0, dom0_disk):
    dev, device = dom0_disk(32)
    dom0.call(PLUGIN, "make_partition", dev=dev, partition_start="2048", partition_end="-")
    dom0.call(PLUGIN, "mkfs", dev=dev, partnum="1", fs_type="ext3", fs_label="")
    blocks, _ = _dumpe2fs(device + "p1")
    result = dom0.call(PLUGIN, "resize_partition_and_fs", dev=dev, partnum="1")
    assert result == {"start": 2048, "end": 32 * 2048 - 1, "fs_blocks": blocks}
