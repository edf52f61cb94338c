"""partition_utils refuses bad requests cleanly and leaves the disk as it was.

Every refusal is a XENAPI_PLUGIN_FAILURE [fn, class, message] whose message
names the problem; the whole disk hashes the same before and after.
"""

import struct
import subprocess

import pytest

from tests.functional.plugins.conftest import disk_digest, tool

PLUGIN = "partition_utils.py"


@pytest.fixture
def formatted(dom0, dom0_disk):
    """A 32 MiB disk with one ext4 partition: something to lose."""
    dev, device = dom0_disk(32)
    dom0.call(PLUGIN, "make_partition", dev=dev, partition_start="2048", partition_end="-")
    dom0.call(PLUGIN, "mkfs", dev=dev, partnum="1", fs_type="ext4", fs_label="keep")
    return dev, device


def _refused(dom0, device, fn, error_class, phrase, **args):
    before = disk_digest(device)
    details = dom0.failure(PLUGIN, fn, **args)
    assert details[:3] == ["XENAPI_PLUGIN_FAILURE", fn, error_class], details
    assert phrase in details[3], details
    assert disk_digest(device) == before, "a refused %s changed the disk" % fn
    return details[3]


BAD_DEVICE_NAMES = [
    "../xvdb", "/dev/loop0", "xvdb;rm -rf /", "", "xvdb/../../etc", "xvdb\n",
    "xvdb1", "XVDB", "loop0", "xvdabc", "sd",
]


@pytest.mark.parametrize("fn, extra", [
    ("make_partition", {"partition_start": "2048", "partition_end": "-"}),
    ("mkfs", {"partnum": "1", "fs_type": "ext4", "fs_label": "x"}),
    ("resize_partition_and_fs", {"partnum": "1"}),
    ("get_partitions", {}),
])
def test_device_names_other_than_bare_disk_names_are_refused(dom0, formatted, fn, extra):
    # One disk for all the names: each refusal is checked on its own.
    for bad_dev in BAD_DEVICE_NAMES:
        _refused(dom0, formatted[1], fn, "InvalidArgument",
                 "must be a device name like xvdb", dev=bad_dev, **extra)


def test_wait_for_dev_refuses_paths(dom0, formatted):
    _refused(dom0, formatted[1], "wait_for_dev", "InvalidArgument", "not a path",
             dev="../../etc/passwd", max_seconds="1")


def test_a_device_not_plugged_into_dom0_is_named_in_the_error(dom0, formatted):
    _refused(dom0, formatted[1], "mkfs", "DeviceError", "device xvdq does not exist",
             dev="xvdq", partnum="1", fs_type="ext4", fs_label="")


@pytest.mark.parametrize("args, phrase", [
    ({"partition_start": "-1", "partition_end": "-"}, "non-negative decimal integer"),
    ({"partition_start": "2048", "partition_end": "-5"}, "non-negative decimal integer"),
    ({"partition_start": "1e3", "partition_end": "-"}, "non-negative decimal integer"),
    ({"partition_start": " 2048", "partition_end": "-"}, "non-negative decimal integer"),
    ({"partition_start": "0", "partition_end": "-"}, "out of range"),
    ({"partition_start": "99999999999999999999", "partition_end": "-"}, "out of range"),
    ({"partition_start": "2048", "partition_end": "4294967296"}, "out of range"),
    ({"partition_start": "2048", "partition_end": "65536"}, "past the end of"),
    ({"partition_start": "70000", "partition_end": "-"}, "past the end of"),
    ({"partition_start": "4096", "partition_end": "4096"}, "must be after"),
    ({"partition_start": "4096", "partition_end": "2048"}, "must be after"),
    ({"partition_start": "2048", "partition_end": "-", "partition_type": "ee"},
     "partition_type"),
    ({"partition_start": "2048"}, "missing argument 'partition_end'"),
    ({"partition_start": "2048", "partition_end": "-", "partition_wait_seconds": "601"},
     "out of range"),
])
def test_make_partition_refuses_bad_geometry(dom0, formatted, args, phrase):
    _refused(dom0, formatted[1], "make_partition", "InvalidArgument", phrase,
             dev=formatted[0], **args)


@pytest.mark.parametrize("fs_type, label, phrase", [
    ("xfs", "x", "fs_type"),
    ("ext4;rm -rf /", "x", "fs_type"),
    ("ext2", "x", "fs_type"),
    ("ext4", ";rm -rf /", "cannot take"),
    ("ext4", "$(reboot)", "cannot take"),
    ("ext4", "-L", "cannot take"),
    ("ext4", "caf\u00e9", "cannot take"),
    ("ext4", "seventeen_chars_x", "at most 16"),
    ("swap", "seventeen_chars_x", "at most 16"),
    ("vfat", "TWELVE_CHARS", "at most 11"),
    ("vfat", "A.B", "cannot take"),
])
def test_mkfs_refuses_labels_and_types_the_filesystem_cannot_take(
        dom0, formatted, fs_type, label, phrase):
    _refused(dom0, formatted[1], "mkfs", "InvalidArgument", phrase,
             dev=formatted[0], partnum="1", fs_type=fs_type, fs_label=label)


@pytest.mark.parametrize("partnum, error_class, phrase", [
    ("2", "DeviceError", "has no partition 2"),
    ("0", "InvalidArgument", "out of range"),
    ("-1", "InvalidArgument", "non-negative"),
    ("129", "InvalidArgument", "out of range"),
])
def test_mkfs_refuses_partitions_that_do_not_exist(dom0, formatted, partnum, error_class,
                                                   phrase):
    _refused(dom0, formatted[1], "mkfs", error_class, phrase,
             dev=formatted[0], partnum=partnum, fs_type="ext4", fs_label="")


def test_resize_refuses_a_partition_number_that_is_not_the_only_one(dom0, formatted):
    _refused(dom0, formatted[1], "resize_partition_and_fs", "DeviceError",
             "must have exactly one partition, number 2",
             dev=formatted[0], partnum="2")


def test_resize_refuses_a_disk_with_two_partitions(dom0, dom0_disk):
    dev, device = dom0_disk(16)
    tool("sfdisk", "--no-reread", "--no-tell-kernel", device,
         input_text="label: dos\n2048,8192,83\n10240,,83\n")
    _refused(dom0, device, "resize_partition_and_fs", "DeviceError", "it has [1, 2]",
             dev=dev, partnum="1")


def _write_entry(device, start, sectors):
    """One primary entry written by hand: sfdisk would refuse a bad one."""
    with open(device, "r+b", buffering=0) as f:
        mbr = bytearray(f.read(512))
        mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\0\0\0", 0x83, b"\0\0\0", start,
                                   sectors)
        mbr[510:512] = b"\x55\xaa"
        f.seek(0)
        f.write(mbr)


@pytest.mark.parametrize("fn, extra", [
    ("mkfs", {"fs_type": "ext4", "fs_label": ""}),
    ("resize_partition_and_fs", {}),
])
def test_a_partition_running_past_the_end_of_the_disk_is_refused(dom0, dom0_disk, fn,
                                                                 extra):
    dev, device = dom0_disk(16)
    _write_entry(device, 2048, 16 * 2048)  # ends 2048 sectors past the end
    _refused(dom0, device, fn, "DeviceError", "ends at sector 34815, past the end of the "
             "disk (32768 sectors)", dev=dev, partnum="1", **extra)


def test_resize_refuses_a_disk_without_partitions(dom0, dom0_disk):
    dev, device = dom0_disk(16)
    _refused(dom0, device, "resize_partition_and_fs", "DeviceError", "it has none",
             dev=dev, partnum="1")


def test_resize_refuses_filesystems_other_than_ext(dom0, dom0_disk):
    dev, device = dom0_disk(32)
    dom0.call(PLUGIN, "make_partition", dev=dev, partition_start="2048",
              partition_end="20479")
    dom0.call(PLUGIN, "mkfs", dev=dev, partnum="1", fs_type="vfat", fs_label="DATA")
    _refused(dom0, device, "resize_partition_and_fs", "DeviceError",
             "holds 'vfat'; only ext3/ext4 can be grown", dev=dev, partnum="1")


def test_unknown_verbs_are_refused_by_name(dom0):
    details = dom0.failure(PLUGIN, "rm_rf", dev="xvdb")
    assert details == ["UNKNOWN_XENAPI_PLUGIN_FUNCTION", "rm_rf"]


def test_a_failing_command_is_reported_with_its_name_and_stderr(dom0, formatted, tmp_path):
    dev, device = formatted
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "ext4", device + "p1", str(mountpoint)], check=True,
                   timeout=60)
    try:
        message = _refused(dom0, device, "mkfs", "CommandFailed", "mkfs.ext4 -F -q",
                           dev=dev, partnum="1", fs_type="ext4", fs_label="")
        assert "%sp1 exited with 1" % device in message
        assert "is mounted" in message  # mke2fs's own words
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True, timeout=60)
