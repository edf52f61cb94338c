"""partition_utils on a dom0 that shows no partition devices (real XenServer).

``xapi-sim --no-partition-devices`` does not mirror ``<dev>N``, as a real
dom0 does not for VBDs plugged into it: the plugin must then map the
partition with ``kpartx -avspp`` and always unmap it (``kpartx -dvspp``) or
the VBD could not be unplugged. That needs device-mapper in the kernel.
"""

import subprocess

import pytest

from tests.functional.plugins.conftest import MIB, Dom0, device_mapper_works, tool

PLUGIN = "partition_utils.py"


@pytest.fixture
def bare_dom0(loop_devices, make_sim):
    handle = Dom0(make_sim(extra_args=["--no-partition-devices"]))
    yield handle
    handle.close()


def _mappings_of(device):
    out = subprocess.run(["dmsetup", "ls"], capture_output=True, text=True, timeout=30).stdout
    name = device.rsplit("/", 1)[1] + "p"
    return [line for line in out.splitlines() if line.startswith(name)]


def test_kpartx_maps_partitions_for_each_verb_and_always_unmaps(bare_dom0):
    if not device_mapper_works():
        pytest.skip("device-mapper is absent from this kernel (/dev/mapper/control does "
                    "not open), so the kpartx path cannot run on this machine")
    vdi = bare_dom0.new_vdi(32 * MIB)
    dev, device = bare_dom0.plug(vdi)
    wait = {"partition_wait_seconds": "1"}

    made = bare_dom0.call(PLUGIN, "make_partition", dev=dev, partition_start="2048",
                          partition_end="32767", **wait)
    assert made == {"partition": dev + "1", "start": 2048, "end": 32767}
    assert _mappings_of(device) == []
    bare_dom0.call(PLUGIN, "mkfs", dev=dev, partnum="1", fs_type="ext4", fs_label="mapped",
                   **wait)
    assert _mappings_of(device) == []
    probe = tool("blkid", "-p", "-O", str(2048 * 512), "-o", "export", device)
    assert "TYPE=ext4" in probe and "LABEL=mapped" in probe
    bare_dom0.unplug_all()  # would fail if a mapping still held the disk
    bare_dom0.api.VDI.resize(vdi, str(64 * MIB))
    dev, device = bare_dom0.plug(vdi)

    grown = bare_dom0.call(PLUGIN, "resize_partition_and_fs", dev=dev, partnum="1", **wait)

    assert grown["end"] == 64 * 2048 - 1
    assert grown["fs_blocks"] * 1024 == (64 * 2048 - 2048) * 512
    assert _mappings_of(device) == []


def test_without_partition_devices_or_device_mapper_the_failure_says_so(bare_dom0):
    if device_mapper_works():
        pytest.skip("device-mapper works here: the kpartx path succeeds instead")
    dev, device = bare_dom0.plug(bare_dom0.new_vdi(16 * MIB))

    details = bare_dom0.failure(PLUGIN, "make_partition", dev=dev, partition_start="2048",
                                partition_end="-", partition_wait_seconds="1")

    assert details[:3] == ["XENAPI_PLUGIN_FAILURE", "make_partition", "DeviceTimeout"]
    assert "the table is written on %s" % dev in details[3]
    assert "did not appear as %s1 within 1 s, and kpartx cannot map it: device-mapper " \
        "is not available" % dev in details[3]
    details = bare_dom0.failure(PLUGIN, "mkfs", dev=dev, partnum="1", fs_type="ext4",
                                fs_label="", partition_wait_seconds="0")
    assert "device-mapper is not available" in details[3]
    assert tool("blkid", "-p", "-O", str(2048 * 512), "-o", "export", device,
                ok=(0, 2)) == ""  # no filesystem was made anywhere
