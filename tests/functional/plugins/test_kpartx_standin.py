"""The kpartx branch of partition_utils' partition mapping, run in-process.

kpartx cannot map anything on a kernel without device-mapper (this one), so
``run`` is replaced by a stand-in for kpartx only: it adds the partitions
with ``partx -a`` (the BLKPG ioctl), exposes each as a link in a mapper
directory named as kpartx names its maps, and prints kpartx's ``add map``
lines. Everything else is real: a loop device, the table written by the
plugin's own MBR code, the geometry checks, the unmapping. Where
device-mapper exists, test_kpartx_path.py runs the real kpartx through the
simulator.
"""

import importlib
import os
import subprocess
import sys

import pytest

from tests.functional.plugins.conftest import MIB

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


@pytest.fixture
def partition_utils(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(REPO, "dom0", "simulator", "pluginlib"))
    monkeypatch.syspath_prepend(os.path.join(REPO, "dom0", "plugins"))
    module = importlib.import_module("partition_utils")
    yield module
    for name in ("partition_utils", "nxs_mbr", "nxs_pluginlib"):
        sys.modules.pop(name, None)


@pytest.fixture
def bare_disk(loop_devices, tmp_path, monkeypatch):
    """A loop device with no partition devices, seen as ``xvdb`` in a dev dir."""
    image = tmp_path / "disk.raw"
    image.write_bytes(b"")
    os.truncate(str(image), 32 * MIB)
    device = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True,
                            text=True, check=True, timeout=30).stdout.strip()
    dev_dir = tmp_path / "dev"
    dev_dir.mkdir()
    os.symlink(device, str(dev_dir / "xvdb"))
    monkeypatch.setenv("NXS_DOM0_DEV_DIR", str(dev_dir))
    yield device
    subprocess.run(["partx", "-d", device], capture_output=True, timeout=30)
    subprocess.run(["losetup", "-d", device], check=True, timeout=30)


class KpartxStandIn:
    def __init__(self, mapper_dir, real_run, failure):
        self.mapper_dir = mapper_dir
        self.real_run = real_run
        self.failure = failure  # the plugin's CommandFailed
        self.size_error = 0
        self.fail_add = False
        self.calls = []

    def __call__(self, cmd, timeout=None, input_text=None, ok_codes=(0,)):
        if cmd[0] != "kpartx":
            return self.real_run(cmd, timeout=timeout, input_text=input_text,
                                 ok_codes=ok_codes)
        self.calls.append(cmd[:2])
        disk = cmd[2]
        name = os.path.basename(disk)
        if cmd[1] == "-dvspp":
            for entry in os.listdir(self.mapper_dir):
                os.unlink(os.path.join(self.mapper_dir, entry))
            subprocess.run(["partx", "-d", disk], capture_output=True, timeout=30)
            return 0, ""
        if self.fail_add:
            raise self.failure("%s exited with 1: device mapper prerequisites not met"
                               % " ".join(cmd))
        subprocess.run(["partx", "-a", disk], capture_output=True, timeout=30)
        out = subprocess.run(["partx", "-g", "-o", "NR,START,SECTORS", disk],
                             capture_output=True, text=True, timeout=30).stdout
        lines = []
        for row in out.split("\n"):
            if not row.strip():
                continue
            number, start, sectors = row.split()
            node = "%sp%s" % (disk, number)
            os.symlink(node, os.path.join(self.mapper_dir, "%sp%s" % (name, number)))
            lines.append("add map %sp%s (253:%s): 0 %d linear 7:0 %s" % (
                name, number, number, int(sectors) + self.size_error, start))
        return 0, "\n".join(lines) + "\n"


@pytest.fixture
def kpartx(partition_utils, tmp_path, monkeypatch):
    mapper_dir = tmp_path / "mapper"
    mapper_dir.mkdir()
    stand_in = KpartxStandIn(str(mapper_dir), partition_utils.run,
                             partition_utils.CommandFailed)
    monkeypatch.setattr(partition_utils, "run", stand_in)
    monkeypatch.setattr(partition_utils, "MAPPER_DIR", str(mapper_dir))
    monkeypatch.setattr(partition_utils, "device_mapper_usable", lambda: True)
    return stand_in


def _partition(partition_utils, device):
    partition_utils.nxs_mbr.write_single_partition(device, 2048, 40959, 0x83)
    return partition_utils.nxs_mbr.read_table(device)["partitions"][0]


def test_a_partition_without_a_device_is_mapped_and_unmapped_after_use(
        partition_utils, kpartx, bare_disk):
    partition = _partition(partition_utils, bare_disk)

    with partition_utils.MappedPartition("xvdb", bare_disk, partition, 0) as path:
        assert path == bare_disk + "p1"
        with open(path, "rb") as f:
            assert len(f.read()) == (40959 - 2048 + 1) * 512
        assert kpartx.calls == [["kpartx", "-avspp"]]

    assert kpartx.calls == [["kpartx", "-avspp"], ["kpartx", "-dvspp"]]
    assert os.listdir(kpartx.mapper_dir) == []


def test_the_mapping_is_removed_when_the_work_fails(partition_utils, kpartx, bare_disk):
    partition = _partition(partition_utils, bare_disk)
    with pytest.raises(RuntimeError):
        with partition_utils.MappedPartition("xvdb", bare_disk, partition, 0):
            raise RuntimeError("mkfs failed")
    assert kpartx.calls[-1] == ["kpartx", "-dvspp"]


def test_a_mapping_with_other_geometry_than_the_table_is_refused_and_removed(
        partition_utils, kpartx, bare_disk):
    kpartx.size_error = 8
    partition = _partition(partition_utils, bare_disk)
    partition["size"] += 8  # what the stand-in claims; the node disagrees
    with pytest.raises(partition_utils.DeviceError, match="geometry of its table entry"):
        with partition_utils.MappedPartition("xvdb", bare_disk, partition, 0):
            pass
    assert kpartx.calls == [["kpartx", "-avspp"], ["kpartx", "-dvspp"]]


def test_with_device_mapper_kpartx_is_used_at_once_rather_than_waiting(
        partition_utils, kpartx, bare_disk):
    partition = _partition(partition_utils, bare_disk)
    with partition_utils.MappedPartition("xvdb", bare_disk, partition, 600) as path:
        assert path == bare_disk + "p1"  # no 600 s wait for a <dev>N that never comes


def test_a_partition_device_already_showing_is_used_without_kpartx(
        partition_utils, kpartx, bare_disk):
    partition = _partition(partition_utils, bare_disk)
    subprocess.run(["partx", "-a", bare_disk], check=True, timeout=30)
    os.symlink(bare_disk + "p1", os.path.join(os.environ["NXS_DOM0_DEV_DIR"], "xvdb1"))
    with partition_utils.MappedPartition("xvdb", bare_disk, partition, 0) as path:
        assert path == bare_disk + "p1"
    assert kpartx.calls == []


def test_kpartx_failing_is_an_error_carrying_its_stderr(partition_utils, kpartx, bare_disk):
    kpartx.fail_add = True
    partition = _partition(partition_utils, bare_disk)
    with pytest.raises(partition_utils.DeviceError,
                       match="kpartx could not map partition 1 of xvdb: kpartx -avspp .* "
                       "device mapper prerequisites not met"):
        with partition_utils.MappedPartition("xvdb", bare_disk, partition, 0):
            pass
    assert kpartx.calls[-1] == ["kpartx", "-dvspp"]
