#!/usr/bin/env python3
"""XAPI plugin: guest kernels and ramdisks as files in dom0's boot directory.

A PV guest booted with a separate kernel/ramdisk needs them as files in dom0
(``/boot/guest``). ``copy_vdi`` copies the first ``size_bytes`` of a disk
plugged into dom0 to a new file there; ``remove_file`` deletes such a file
and nothing else.

Python 3.6 compatible; standard library and XenAPIPlugin only.
"""

import os
import re
import stat
import tempfile

import XenAPIPlugin

from nxs_pluginlib import (
    DeviceError, InvalidArgument, arg, block_device, choice_arg, device_size_bytes,
    disk_arg, finally_on_sigterm, int_arg, open_device, to_json, write_all)

KINDS = ("kernel", "ramdisk")
MAX_BYTES = 256 << 20  # kernels and ramdisks; anything bigger is not one
COPY_CHUNK = 1 << 20
FILE_RE = re.compile(r"^(kernel|ramdisk)-[A-Za-z0-9_]{1,64}$")


def _boot_dir():
    return os.path.realpath(os.environ.get("NXS_DOM0_BOOT_DIR") or "/boot/guest")


def copy_vdi(session, args):
    """Copy the first ``size_bytes`` of disk ``dev`` to a new file in the boot dir."""
    dev = disk_arg(args)
    size_bytes = int_arg(args, "size_bytes", 1, MAX_BYTES)
    kind = choice_arg(args, "kind", KINDS)

    disk_path = block_device(dev)
    disk_bytes = device_size_bytes(disk_path)
    if size_bytes > disk_bytes:
        raise InvalidArgument("size_bytes %d is larger than %s (%d bytes)"
                              % (size_bytes, dev, disk_bytes))
    boot_dir = _boot_dir()
    os.makedirs(boot_dir, mode=0o755, exist_ok=True)
    fd_out, path = tempfile.mkstemp(prefix=kind + "-", dir=boot_dir)
    try:
        fd_in = open_device(disk_path)
        try:
            copied = 0
            while copied < size_bytes:
                try:
                    chunk = os.read(fd_in, min(COPY_CHUNK, size_bytes - copied))
                except OSError as e:
                    raise DeviceError("cannot read %s after %d bytes: %s"
                                      % (dev, copied, e)) from None
                if not chunk:
                    raise DeviceError("%s ended after %d bytes" % (dev, copied))
                try:
                    write_all(fd_out, chunk)
                except OSError as e:
                    raise DeviceError("cannot write the %s to %s after %d bytes: %s"
                                      % (kind, boot_dir, copied, e)) from None
                copied += len(chunk)
        finally:
            os.close(fd_in)
        try:
            os.fchmod(fd_out, 0o644)
            os.fsync(fd_out)
        except OSError as e:
            raise DeviceError("cannot write the %s to %s: %s" % (kind, boot_dir, e)) from None
    except BaseException:
        os.close(fd_out)
        os.unlink(path)
        raise
    os.close(fd_out)
    return to_json({"path": path})


def remove_file(session, args):
    """Remove a file that copy_vdi made; anything else is refused."""
    path = arg(args, "path")
    boot_dir = _boot_dir()
    if not os.path.isabs(path) or os.path.dirname(path) != boot_dir or \
            not FILE_RE.fullmatch(os.path.basename(path)):
        raise InvalidArgument("path %r is not a kernel or ramdisk file in %s"
                              % (path[:200], boot_dir))
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return to_json({"path": path, "removed": False})
    if not stat.S_ISREG(mode):
        raise InvalidArgument("%s is not a regular file" % path)
    os.unlink(path)
    return to_json({"path": path, "removed": True})


if __name__ == "__main__":
    finally_on_sigterm()
    XenAPIPlugin.dispatch({
        "copy_vdi": copy_vdi,
        "remove_file": remove_file,
    })
