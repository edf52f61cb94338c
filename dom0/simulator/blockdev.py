"""Loop devices behind plugged VBDs, and their hygiene.

Every loop device the simulator attaches is recorded in
``<state>/loop-devices.json`` before the call returns, so a simulator killed
with SIGKILL can detach them at its next start. Cleanup only ever touches
loop devices whose backing file lies under this state directory: other loop
devices on the machine are not ours.
"""

import glob
import json
import logging
import os
import subprocess
import threading

from dom0.simulator import private

LOG = logging.getLogger(__name__)

RECORD_FILE = "loop-devices.json"
LOSETUP_TIMEOUT = 60


class DeviceBusy(Exception):
    """The device (or one of its partitions) is mounted or held open exclusively."""


class BlockDeviceError(Exception):
    pass


def loop_devices_available():
    return os.geteuid() == 0 and os.path.exists("/dev/loop-control")


def _run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=LOSETUP_TIMEOUT)
    if proc.returncode != 0:
        raise BlockDeviceError("%s failed (exit %d): %s" % (
            " ".join(cmd), proc.returncode, proc.stderr.strip()))
    return proc.stdout


def backing_file(dev):
    """The file behind ``/dev/loopN`` (None if it is not attached)."""
    name = os.path.basename(dev)
    try:
        with open("/sys/block/%s/loop/backing_file" % name) as f:
            path = f.read().strip()
    except OSError:
        return None
    return path[:-len(" (deleted)")] if path.endswith(" (deleted)") else path


def partitions_of(dev):
    """``{number: '/dev/loopNpM'}`` of the partitions the kernel knows."""
    name = os.path.basename(dev)
    found = {}
    for entry in glob.glob("/sys/block/%s/%sp*" % (name, name)):
        suffix = os.path.basename(entry)[len(name) + 1:]
        if suffix.isdigit():
            found[int(suffix)] = "/dev/%sp%s" % (name, suffix)
    return found


def assert_not_busy(dev):
    """Raise DeviceBusy if the device or a partition is mounted or claimed.

    The kernel refuses an exclusive open of a block device that a filesystem,
    swap or device-mapper holds; that is the check XAPI's unplug runs into.
    (``losetup -d`` itself would succeed and merely defer the detach.)
    """
    for path in [dev] + sorted(partitions_of(dev).values()):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_EXCL)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise DeviceBusy("%s is in use: %s" % (path, e.strerror)) from None
        os.close(fd)


class LoopDevices:
    """Attach/detach loop devices for one state directory, with a record on disk."""

    def __init__(self, state_dir, enabled):
        # Both spellings: the kernel records the path losetup was given.
        self.roots = {os.path.realpath(state_dir) + os.sep, os.path.abspath(state_dir) + os.sep}
        self.enabled = enabled
        self.record_path = os.path.join(state_dir, RECORD_FILE)
        self.lock = threading.Lock()
        self.attached = self._read_record()

    def _read_record(self):
        try:
            with open(self.record_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _write_record(self):
        private.replace_text(self.record_path, json.dumps(self.attached))

    def _ours(self, dev):
        path = backing_file(dev)
        return path is not None and any(path.startswith(root) for root in self.roots)

    def attach(self, path, read_only):
        """A block device for ``path``: a new loop device, or the file itself."""
        if not self.enabled:
            return path
        cmd = ["losetup", "--find", "--show", "--partscan"]
        if read_only:
            cmd.append("--read-only")
        dev = _run(cmd + [path]).strip()
        with self.lock:
            self.attached[dev] = os.path.realpath(path)
            self._write_record()
        LOG.info("attached %s to %s", dev, path)
        return dev

    def detach(self, dev, force=False):
        """Detach a loop device we attached; DeviceBusy unless ``force``."""
        if not dev.startswith("/dev/loop"):
            return
        if not force:
            assert_not_busy(dev)
        if self._ours(dev):
            _run(["losetup", "--detach", dev])
            LOG.info("detached %s", dev)
        with self.lock:
            self.attached.pop(dev, None)
            self._write_record()

    def cleanup(self):
        """Detach every loop device backed by a file of this state directory."""
        candidates = set(self.attached)
        candidates.update("/dev/" + os.path.basename(os.path.dirname(os.path.dirname(p)))
                          for p in glob.glob("/sys/block/loop*/loop/backing_file"))
        for dev in sorted(candidates):
            if self._ours(dev):
                try:
                    _run(["losetup", "--detach", dev])
                    LOG.info("detached left-over %s", dev)
                except (BlockDeviceError, subprocess.TimeoutExpired) as e:
                    LOG.error("could not detach %s: %s", dev, e)
                    continue
            with self.lock:
                self.attached.pop(dev, None)
        with self.lock:
            self._write_record()
