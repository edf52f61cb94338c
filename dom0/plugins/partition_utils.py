#!/usr/bin/env python3
"""XAPI plugin: partition and format disks plugged into dom0.

Every verb takes the device name that ``VBD.get_device`` returned for a VBD
plugged into dom0 (``xvdb``; never a path) and answers with a JSON string.
A partition that already shows as ``<dev>N`` with its table geometry is
used as it is. Otherwise, where device-mapper works (a real dom0, whose VBDs
never show new partitions), it is mapped with ``kpartx -avspp`` for the
duration of the verb and always unmapped with ``kpartx -dvspp``, or the VBD
could not be unplugged afterwards; without device-mapper (the simulator's
dom0), the verb waits, bounded, for udev to show ``<dev>N``.

Python 3.6 compatible; standard library and XenAPIPlugin only.
"""

import os
import re
import stat

import XenAPIPlugin

import nxs_mbr
from nxs_pluginlib import (
    DISK_RE, PARTITION_RE, SECTOR_BYTES, CommandFailed, DeviceError, DeviceTimeout,
    InvalidArgument, arg, blkid_probe, block_device, choice_arg, dev_dir, disk_arg,
    finally_on_sigterm, int_arg, run, to_json, wait_until)

PARTITION_TYPES = {"83": 0x83, "82": 0x82, "0c": 0x0C}
FS_TYPES = ("ext3", "ext4", "vfat", "swap")
# Labels reach mkfs as one argv element; the pattern keeps them plain anyway.
LABEL_RE = re.compile(r"^[A-Za-z0-9_.-]*$")
VFAT_LABEL_RE = re.compile(r"^[A-Za-z0-9_-]*$")  # FAT forbids '.' in labels
LABEL_MAX = {"ext3": 16, "ext4": 16, "vfat": 11, "swap": 16}
MAX_WAIT_SECONDS = 3600  # the agent's block_device_creation_timeout allows as much
# How long a new or changed partition may take to show up as <dev>N where
# kpartx cannot map it: udev is asynchronous.
DEFAULT_PARTITION_WAIT_SECONDS = 5
MKFS_TIMEOUT = 3600
KPARTX_TIMEOUT = 60
MAPPER_DIR = "/dev/mapper"
DM_CONTROL = "/dev/mapper/control"
KPARTX_ADD_RE = re.compile(r"^add map (\S+) \(\d+:\d+\): 0 (\d+) linear ")


# -- partitions as devices -------------------------------------------------

def _sysfs_start(path):
    """The start sector the kernel has for partition node ``path``, or None."""
    st = os.stat(path)
    sysfs = "/sys/dev/block/%d:%d/start" % (os.major(st.st_rdev), os.minor(st.st_rdev))
    try:
        with open(sysfs) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _matching_node(path, partition):
    """Real path of ``path`` if it is a block device with the partition's
    geometry (a stale node from the previous table does not count)."""
    try:
        if not stat.S_ISBLK(os.stat(path).st_mode):
            return None
        real = os.path.realpath(path)
        fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
        start = _sysfs_start(real)
    except OSError:
        return None
    if size != partition["size"] * SECTOR_BYTES:
        return None
    if start is not None and start != partition["start"]:
        return None
    return real


def device_mapper_usable():
    """kpartx needs the kernel's device-mapper: its control node must open."""
    try:
        fd = os.open(DM_CONTROL, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


class MappedPartition(object):
    """``with MappedPartition(...) as path``: a block device for one partition.

    ``<dev>N`` from the dev dir if it already has the partition's geometry
    (a disk plugged with its table in place). Otherwise, where device-mapper
    works, a kpartx mapping for the duration, always removed on exit: a real
    dom0 never shows new partitions of a VBD, so waiting there would only
    waste time. Without device-mapper, ``<dev>N`` is waited for (udev, or
    the simulator's emulation of it) for up to ``wait_seconds``.
    """

    def __init__(self, dev, disk_path, partition, wait_seconds):
        self.dev = dev
        self.disk_path = disk_path
        self.partition = partition
        self.wait_seconds = wait_seconds
        self.mapped = False

    def __enter__(self):
        node = os.path.join(dev_dir(), "%s%d" % (self.dev, self.partition["num"]))
        real = _matching_node(node, self.partition)
        if real:
            return real
        if device_mapper_usable():
            return self._map_with_kpartx()
        real = wait_until(lambda: _matching_node(node, self.partition), self.wait_seconds)
        if real:
            return real
        raise DeviceTimeout(
            "partition %d of %s did not appear as %s%d within %d s, and kpartx cannot map "
            "it: device-mapper is not available (%s)" % (
                self.partition["num"], self.dev, self.dev, self.partition["num"],
                self.wait_seconds, DM_CONTROL))

    def _map_with_kpartx(self):
        self.mapped = True
        try:
            _, out = run(["kpartx", "-avspp", self.disk_path], timeout=KPARTX_TIMEOUT)
        except CommandFailed as e:
            self._unmap(quiet=True)
            raise DeviceError("kpartx could not map partition %d of %s: %s"
                              % (self.partition["num"], self.dev, e)) from None
        wanted = "%sp%d" % (os.path.basename(self.disk_path), self.partition["num"])
        for line in out.splitlines():
            m = KPARTX_ADD_RE.match(line.strip())
            if m and m.group(1) == wanted:
                real = _matching_node(os.path.join(MAPPER_DIR, wanted), self.partition)
                if real:
                    return real
        self._unmap(quiet=True)
        raise DeviceError("kpartx did not map partition %d of %s with the geometry of "
                          "its table entry: %s" % (self.partition["num"], self.dev,
                                                   out.strip()[-500:]))

    def _unmap(self, quiet=False):
        self.mapped = False
        try:
            run(["kpartx", "-dvspp", self.disk_path], timeout=KPARTX_TIMEOUT)
        except CommandFailed:
            if not quiet:
                raise

    def __exit__(self, exc_type, exc, tb):
        if self.mapped:
            # A failed unmap must be reported even after a success: the VBD
            # cannot be unplugged while a mapping holds the disk.
            self._unmap(quiet=exc_type is not None)
        return False


# -- argument helpers ------------------------------------------------------

def _wait_arg(args):
    return int_arg(args, "partition_wait_seconds", 0, 600, required=False,
                   default=DEFAULT_PARTITION_WAIT_SECONDS)


def _dos_table(dev, disk_path):
    table = nxs_mbr.read_table(disk_path)
    if table["label"] == "gpt":
        raise DeviceError("%s has a GPT partition table; only msdos tables are "
                          "supported" % dev)
    return table


def _partition(dev, table, num):
    for partition in table["partitions"]:
        if partition["num"] == num:
            if partition["end"] >= table["size_sectors"]:
                raise DeviceError("partition %d of %s ends at sector %d, past the end of "
                                  "the disk (%d sectors)" % (num, dev, partition["end"],
                                                              table["size_sectors"]))
            return partition
    raise DeviceError("%s has no partition %d" % (dev, num))


def _label_arg(args, fs_type):
    label = arg(args, "fs_label", required=False, default="")
    pattern = VFAT_LABEL_RE if fs_type == "vfat" else LABEL_RE
    if not pattern.fullmatch(label) or label.startswith("-"):
        raise InvalidArgument("fs_label %r has characters a %s label cannot take "
                              "(allowed: %s)" % (label[:40], fs_type, pattern.pattern))
    if len(label.encode("ascii")) > LABEL_MAX[fs_type]:
        raise InvalidArgument("fs_label %r is %d characters; a %s label takes at most "
                              "%d" % (label, len(label), fs_type, LABEL_MAX[fs_type]))
    return label


# -- verbs -----------------------------------------------------------------

def wait_for_dev(session, args):
    """Wait until device (or partition) ``dev`` exists; a timeout is an error."""
    dev = arg(args, "dev")
    if not (DISK_RE.fullmatch(dev) or PARTITION_RE.fullmatch(dev)):
        raise InvalidArgument("argument 'dev' must be a device name like xvdb or xvdb1 "
                              "(not a path), got %r" % dev[:40])
    max_seconds = int_arg(args, "max_seconds", 0, MAX_WAIT_SECONDS)
    path = os.path.join(dev_dir(), dev)

    def present():
        try:
            return stat.S_ISBLK(os.stat(path).st_mode)
        except OSError:
            return False

    if not wait_until(present, max_seconds, interval=0.1):
        raise DeviceTimeout("device %s did not appear within %d s" % (dev, max_seconds))
    return to_json({"dev": dev, "path": path})


def make_partition(session, args):
    """A fresh msdos table with one primary partition [start, end] (sectors)."""
    dev = disk_arg(args)
    start = int_arg(args, "partition_start", 1, nxs_mbr.MAX_SECTORS - 1)
    end_text = arg(args, "partition_end")
    end = None if end_text == "-" else int_arg(args, "partition_end", 1,
                                               nxs_mbr.MAX_SECTORS - 1)
    part_type = choice_arg(args, "partition_type", PARTITION_TYPES, required=False,
                           default="83")
    wait_seconds = _wait_arg(args)

    disk_path = block_device(dev)
    size_sectors = nxs_mbr.read_table(disk_path)["size_sectors"]
    if start >= size_sectors:
        raise InvalidArgument("partition_start %d is past the end of %s (%d sectors)"
                              % (start, dev, size_sectors))
    if end is None:
        end = min(size_sectors - 1, start + nxs_mbr.MAX_SECTORS - 1)
    if end >= size_sectors:
        raise InvalidArgument("partition_end %d is past the end of %s (last sector %d)"
                              % (end, dev, size_sectors - 1))
    if end <= start:
        raise InvalidArgument("partition_end %d must be after partition_start %d"
                              % (end, start))
    if end - start + 1 > nxs_mbr.MAX_SECTORS:
        raise InvalidArgument("a partition of %d sectors does not fit an msdos table"
                              % (end - start + 1))

    nxs_mbr.write_single_partition(disk_path, start, end, PARTITION_TYPES[part_type])
    partition = _partition(dev, _dos_table(dev, disk_path), 1)
    try:
        with MappedPartition(dev, disk_path, partition, wait_seconds):
            pass  # the partition is usable: that is what the caller needs to know
    except (DeviceTimeout, DeviceError) as e:
        raise e.__class__("the table is written on %s, but its partition is not usable: %s"
                          % (dev, e)) from None
    return to_json({"partition": "%s1" % dev, "start": start, "end": end})


def mkfs(session, args):
    """Make an ext3/ext4/vfat filesystem or swap space on partition ``partnum``."""
    dev = disk_arg(args)
    partnum = int_arg(args, "partnum", 1, 128)
    fs_type = choice_arg(args, "fs_type", FS_TYPES)
    label = _label_arg(args, fs_type)
    wait_seconds = _wait_arg(args)

    disk_path = block_device(dev)
    partition = _partition(dev, _dos_table(dev, disk_path), partnum)
    with MappedPartition(dev, disk_path, partition, wait_seconds) as path:
        if fs_type in ("ext3", "ext4"):
            cmd = ["mkfs.%s" % fs_type, "-F", "-q"] + (["-L", label] if label else [])
        elif fs_type == "vfat":
            cmd = ["mkfs.vfat"] + (["-n", label] if label else [])
        else:
            cmd = ["mkswap"] + (["-L", label] if label else [])
        run(cmd + [path], timeout=MKFS_TIMEOUT)
        found = blkid_probe(path)
    expected = "swap" if fs_type == "swap" else fs_type
    if found.get("TYPE") != expected:
        raise DeviceError("after %s, blkid sees %r on partition %d of %s"
                          % (cmd[0], found.get("TYPE"), partnum, dev))
    return to_json({"fs_type": fs_type, "label": found.get("LABEL", ""),
                    "uuid": found.get("UUID", "")})


def resize_partition_and_fs(session, args):
    """Grow the only partition to the end of the disk, and its ext fs with it."""
    dev = disk_arg(args)
    partnum = int_arg(args, "partnum", 1, 4)
    wait_seconds = _wait_arg(args)

    disk_path = block_device(dev)
    table = _dos_table(dev, disk_path)
    if len(table["partitions"]) != 1 or table["partitions"][0]["num"] != partnum:
        raise DeviceError("%s must have exactly one partition, number %d, to be grown; "
                          "it has %s" % (dev, partnum,
                                         [p["num"] for p in table["partitions"]] or "none"))
    partition = _partition(dev, table, partnum)
    new_end = min(table["size_sectors"] - 1, partition["start"] + nxs_mbr.MAX_SECTORS - 1)

    with MappedPartition(dev, disk_path, partition, wait_seconds) as path:
        fs_type = blkid_probe(path).get("TYPE")
        if fs_type not in ("ext3", "ext4"):
            raise DeviceError("partition %d of %s holds %r; only ext3/ext4 can be grown"
                              % (partnum, dev, fs_type))
        # Exit 1: errors fixed; anything above needs a human.
        run(["e2fsck", "-f", "-p", path], timeout=MKFS_TIMEOUT, ok_codes=(0, 1))

    if new_end != partition["end"]:
        nxs_mbr.set_primary_end(disk_path, partnum, new_end)
        partition = _partition(dev, _dos_table(dev, disk_path), partnum)
    with MappedPartition(dev, disk_path, partition, wait_seconds) as path:
        run(["resize2fs", path], timeout=MKFS_TIMEOUT)
        _, out = run(["dumpe2fs", "-h", path], timeout=60)
    blocks = re.search(r"^Block count:\s+(\d+)$", out, re.M)
    if not blocks:
        raise DeviceError("dumpe2fs -h printed no block count for partition %d of %s"
                          % (partnum, dev))
    return to_json({"start": partition["start"], "end": partition["end"],
                    "fs_blocks": int(blocks.group(1))})


def get_partitions(session, args):
    """The msdos table of ``dev`` (label null and no partitions if it has none)."""
    dev = disk_arg(args)
    disk_path = block_device(dev)
    table = _dos_table(dev, disk_path)
    return to_json({
        "label": table["label"],
        "size_sectors": table["size_sectors"],
        "partitions": [{key: p[key] for key in ("num", "start", "end", "type", "bootable")}
                       for p in table["partitions"]]})


if __name__ == "__main__":
    finally_on_sigterm()
    XenAPIPlugin.dispatch({
        "wait_for_dev": wait_for_dev,
        "make_partition": make_partition,
        "mkfs": mkfs,
        "resize_partition_and_fs": resize_partition_and_fs,
        "get_partitions": get_partitions,
    })
