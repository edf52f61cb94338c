"""An emulation of the kernel's partition scan and udev's links.

On a real host, writing a partition table makes the kernel re-read it and
udev creates ``/dev/xvdb1``, asynchronously. This machine's kernel does not
parse tables itself, so a thread watches every plugged loop device: when the
sectors that hold an MBR or GPT change it runs ``partx -u`` (the BLKPG ioctl
that adds, resizes and drops partitions), and it mirrors the kernel's
partitions as ``<vm dev dir>/<name>N`` links. Consumers must wait for the link
to appear, as they must wait for udev on real Xen.
"""

import hashlib
import logging
import os
import subprocess
import threading

from dom0.simulator import blockdev

LOG = logging.getLogger(__name__)

POLL_SECONDS = 0.05
# MBR (sector 0) plus a GPT header and its 128 entries (sectors 1-33).
TABLE_BYTES = 34 * 512
PARTX_TIMEOUT = 30


class _Watched:
    def __init__(self, dev, dev_dir, name):
        self.dev = dev
        self.dev_dir = dev_dir
        self.name = name
        self.table_hash = None
        self.partx_failures = 0
        self.kernel_partitions = {}
        self.links = set()


def _table_hash(dev):
    try:
        with open(dev, "rb", buffering=0) as f:
            return hashlib.sha1(f.read(TABLE_BYTES)).digest()
    except OSError:
        return None


def _replace_link(link, target):
    tmp = link + ".new"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


class PartitionWatcher:
    """Watches plugged loop devices and mirrors their partitions as links."""

    def __init__(self, enabled=True):
        self.enabled = enabled
        self.lock = threading.Lock()
        self.watched = {}
        self.stopping = threading.Event()
        self.thread = None

    def start(self):
        if self.enabled and blockdev.loop_devices_available():
            self.thread = threading.Thread(target=self._loop, name="udev", daemon=True)
            self.thread.start()

    def stop(self):
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(5)

    def watch(self, dev, dev_dir, name):
        """Mirror the partitions of ``dev`` as ``<dev_dir>/<name>N``."""
        if not self.enabled or not dev.startswith("/dev/loop"):
            return
        with self.lock:
            entry = _Watched(dev, dev_dir, name)
            self.watched[dev] = entry
            self._sync(entry)

    def unwatch(self, dev):
        """Stop watching ``dev`` and remove its partition links."""
        with self.lock:
            entry = self.watched.pop(dev, None)
            if entry is None:
                return
            for link in entry.links:
                if os.path.lexists(link):
                    os.unlink(link)

    def _loop(self):
        while not self.stopping.wait(POLL_SECONDS):
            with self.lock:
                for entry in list(self.watched.values()):
                    try:
                        self._sync(entry)
                    except Exception:  # one bad device must not stop the others
                        LOG.exception("partition scan of %s failed", entry.dev)

    def _sync(self, entry):
        digest = _table_hash(entry.dev)
        kernel = blockdev.partitions_of(entry.dev)
        # Re-run partx when the table changed, and also when the kernel's set
        # changed under us: a BLKRRPART (sfdisk ends with one) makes this
        # kernel forget the partitions, since it cannot parse tables itself.
        if digest is not None and (digest != entry.table_hash
                                   or kernel != entry.kernel_partitions):
            entry.table_hash = digest
            proc = subprocess.run(["partx", "-u", entry.dev], capture_output=True,
                                  text=True, timeout=PARTX_TIMEOUT)
            # partx exits 1 when the table is now empty, after removing all.
            if proc.returncode not in (0, 1):
                # Forget the table so the next poll tries again: a partx
                # that lost a race (device briefly busy under load) must not
                # leave the partitions missing for good.
                if entry.partx_failures == 0:
                    LOG.warning("partx -u %s: %s", entry.dev, proc.stderr.strip())
                entry.partx_failures += 1
                entry.table_hash = None
            else:
                entry.partx_failures = 0
            kernel = entry.kernel_partitions = blockdev.partitions_of(entry.dev)
        wanted = {}
        for number, node in kernel.items():
            if os.path.exists(node):  # devtmpfs creates the node a moment later
                wanted[os.path.join(entry.dev_dir, "%s%d" % (entry.name, number))] = node
        for link in entry.links - set(wanted):
            if os.path.lexists(link):
                os.unlink(link)
                LOG.info("partition link %s removed", link)
        for link, node in wanted.items():
            if link not in entry.links or os.path.realpath(link) != node:
                _replace_link(link, node)
                LOG.info("partition link %s -> %s", link, node)
        entry.links = set(wanted)
