"""Shared pieces of the nova-xen-split dom0 plugins.

Not a plugin itself (not executable, so XAPI will not run it): the plugins in
this directory import it, which works because Python puts a script's own
directory first on ``sys.path``. Python 3.6 compatible, standard library only.

Everything here distrusts its input: plugin arguments arrive as strings from
whoever holds a XAPI session, and the plugins run as root on the hypervisor.
"""

import fcntl
import json
import os
import re
import signal
import stat
import struct
import subprocess
import time

# Patterns are applied with fullmatch: "$" alone lets a trailing newline in.
DISK_RE = re.compile(r"^(xvd|sd|hd)[a-z]{1,2}$")
PARTITION_RE = re.compile(r"^((?:xvd|sd|hd)[a-z]{1,2})([1-9][0-9]{0,2})$")
INT_RE = re.compile(r"^[0-9]{1,20}$")

SECTOR_BYTES = 512
BLKSSZGET = 0x1268  # ioctl: logical sector size of a block device
# PATH for the tools we run: dom0's XAPI does not promise one with sbin in it.
TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TIMEOUT = 120


class InvalidArgument(Exception):
    """A plugin argument is missing or not acceptable; nothing was done."""


class CommandFailed(Exception):
    """A command exited non-zero or timed out; carries its stderr."""


class DeviceTimeout(Exception):
    """A device did not appear (or did not settle) in the time allowed."""


class DeviceError(Exception):
    """A device exists but is not what the request needs."""


def finally_on_sigterm():
    """Make SIGTERM (dom0 shutting down, an operator's kill) raise SystemExit
    in the plugin, so its ``finally`` blocks run and undo what it started
    (staging files, partition mappings); the default action would end the
    process on the spot. SIGKILL cannot be caught."""
    def terminated(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, terminated)


def write_all(fd, data):
    """Write all of ``data`` to ``fd``: os.write may write less (a full disk
    writes what fits, then raises on the next call)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def to_json(value):
    """A plugin result: XAPI wants one string, we send JSON."""
    return json.dumps(value, sort_keys=True)


# -- arguments -----------------------------------------------------------

def arg(args, name, required=True, default=None):
    """The string argument ``name``; missing and required is an error."""
    if not isinstance(args, dict):
        raise InvalidArgument("plugin arguments must be a map of strings")
    if name not in args:
        if required:
            raise InvalidArgument("missing argument %r" % name)
        return default
    value = args[name]
    if not isinstance(value, str):
        raise InvalidArgument("argument %r must be a string" % name)
    return value


def bool_arg(args, name, default):
    """``true`` or ``false`` (exactly); ``default`` when absent."""
    value = arg(args, name, required=False)
    if value is None:
        return default
    if value not in ("true", "false"):
        raise InvalidArgument("argument %r must be true or false, got %r"
                              % (name, value[:40]))
    return value == "true"


def int_arg(args, name, low, high, required=True, default=None):
    """A decimal integer in [low, high]; signs, spaces and floats refused."""
    value = arg(args, name, required=required)
    if value is None:
        return default
    if not INT_RE.fullmatch(value):
        raise InvalidArgument(
            "argument %r must be a non-negative decimal integer, got %r"
            % (name, value[:40]))
    number = int(value)
    if number < low or number > high:
        raise InvalidArgument(
            "argument %r = %d is out of range [%d, %d]" % (name, number, low, high))
    return number


def choice_arg(args, name, choices, required=True, default=None):
    """One of an allow-list."""
    value = arg(args, name, required=required)
    if value is None:
        return default
    if value not in choices:
        raise InvalidArgument("argument %r must be one of %s, got %r"
                              % (name, ", ".join(sorted(choices)), value[:40]))
    return value


def disk_arg(args, name="dev"):
    """A bare whole-disk device name such as ``xvdb``, never a path."""
    value = arg(args, name)
    if not DISK_RE.fullmatch(value):
        raise InvalidArgument(
            "argument %r must be a device name like xvdb (not a path), got %r"
            % (name, value[:40]))
    return value


# -- devices ---------------------------------------------------------------

def dev_dir():
    """Where dom0's block devices are (the simulator points this elsewhere)."""
    return os.environ.get("NXS_DOM0_DEV_DIR") or "/dev"


def block_device(name):
    """The real path of block device ``name`` in the dev dir.

    The name was checked against a pattern; the node it names may be a
    symlink (udev's way, and the simulator's), so tools get the resolved
    node: mkfs, e2fsck and resize2fs decide whether a device is mounted or
    busy by its real name, and sfdisk/kpartx name partitions after it.
    """
    path = os.path.join(dev_dir(), name)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise DeviceError("device %s does not exist in %s" % (name, dev_dir())) from None
    if not stat.S_ISBLK(mode):
        raise DeviceError("%s is not a block device" % name)
    return os.path.realpath(path)


def open_device(path, writable=False):
    flags = os.O_RDWR if writable else os.O_RDONLY
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except OSError as e:
        raise DeviceError("cannot open %s: %s" % (path, e.strerror)) from None


def device_size_bytes(path):
    fd = open_device(path)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def check_sector_size(fd, path):
    """Our tables are in 512-byte sectors; refuse anything else."""
    try:
        raw = fcntl.ioctl(fd, BLKSSZGET, struct.pack("i", 0))
    except OSError as e:
        raise DeviceError("cannot read the sector size of %s: %s" % (path, e.strerror)) from None
    size = struct.unpack("i", raw)[0]
    if size != SECTOR_BYTES:
        raise DeviceError("%s has %d-byte sectors; only 512 is supported" % (path, size))


def wait_until(predicate, max_seconds, interval=0.05):
    """Poll ``predicate`` until it returns a true value or time runs out."""
    deadline = time.monotonic() + max_seconds
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


# -- commands --------------------------------------------------------------

def run(cmd, timeout=DEFAULT_TIMEOUT, input_text=None, ok_codes=(0,)):
    """Run ``cmd`` (a list), return (exit code, stdout).

    A code outside ``ok_codes`` or a timeout raises CommandFailed naming the
    command and carrying its stderr.
    """
    env = dict(os.environ)
    env["PATH"] = TOOL_PATH
    env["LC_ALL"] = "C"
    # Python 3.6 refuses ``stdin`` together with ``input``, even stdin=None.
    feed = {"input": input_text} if input_text is not None else {"stdin": subprocess.DEVNULL}
    try:
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            universal_newlines=True, timeout=timeout, env=env, **feed)
    except subprocess.TimeoutExpired:
        raise CommandFailed("%s timed out after %d s" % (" ".join(cmd), timeout)) from None
    except OSError as e:
        raise CommandFailed("%s could not run: %s" % (" ".join(cmd), e.strerror)) from None
    if proc.returncode not in ok_codes:
        raise CommandFailed("%s exited with %d: %s" % (
            " ".join(cmd), proc.returncode, (proc.stderr or proc.stdout).strip()[-2000:]))
    return proc.returncode, proc.stdout


def blkid_probe(path):
    """Low-level probe (no cache) → dict of TYPE, LABEL, UUID... (may be empty)."""
    # Exit 2: nothing found; that is an answer, not a failure.
    code, out = run(["blkid", "-p", "-o", "export", path], timeout=60, ok_codes=(0, 2))
    found = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found[key] = value
    return found
