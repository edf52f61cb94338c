"""in_guest: plug VDIs into the agent's own VM, work on the local device.

Disk tools run in the privsep daemon (:mod:`agent.privileged`); image data is
streamed by the agent itself into the device, which the daemon lends it for
the length of the copy (the way Nova's ``vdi_attached`` + ``temporary_chown``
did). Separate kernels and ramdisks are handed to dom0 through the kernel
plugin.
"""

import contextlib
import json
import logging
import os
import time

from agent import attach, images, privileged, readahead, snapshot, vdi_import, vdis
from agent import vhd
from agent.backends import base
from agent.backends.common import (
    KERNEL_PLUGIN, PARTITION_START, CommonBackend, disk_request, partition_type_for,
    root_request, round_up)
from nova_xen_split.xenhost import marks
from rpc import exceptions, methods

LOG = logging.getLogger(__name__)

MBR_GAP_SECTORS = 63  # Nova gave partition-less (ami) images this gap
WRITE_PIECE_BYTES = 4 * base.MiB


class InGuestBackend(CommonBackend):
    mode = "in_guest"
    # Every verb is served, and what needs a VM on the host is allowed. The
    # disk tools run in the privileged daemon, started with the backend.
    CAN = frozenset(methods.CAPABILITIES)

    def start(self):
        privileged.start(self.conf)

    def stop(self):
        privileged.stop()

    # -- devices -------------------------------------------------------------

    def _device_path(self, name):
        return os.path.join(self.conf.xenserver.device_dir, name)

    def _wait_for_device(self, device):
        path = self._device_path(device)
        timeout = self.conf.xenserver.block_device_creation_timeout
        if not _wait_until(lambda: os.path.exists(path), timeout):
            raise exceptions.DiskOperationFailed(
                operation="attach", target=device,
                reason="%s did not appear within %ss" % (path, timeout))
        return path

    def _wait_for_partition(self, device, num, size_sectors=None):
        """Wait for ``<device><num>`` (and for the kernel to see its size)."""
        name = "%s%d" % (device, num)
        path = self._device_path(name)
        timeout = self.conf.agent.partition_wait_timeout

        def ready():
            if not os.path.exists(path):
                return False
            return size_sectors is None or _kernel_size(path) == size_sectors

        if not _wait_until(ready, timeout):
            raise exceptions.DiskOperationFailed(
                operation="wait for partition", target=name,
                reason="did not appear%s within %ss" % (
                    "" if size_sectors is None else " with %d sectors" % size_sectors,
                    timeout))
        return name

    def _attached(self, vdi_ref, read_only=False):
        if self.conf.xenserver.check_host:
            self._check_host()
        return attach.attached(
            self.ctx.session, self.ctx.vm_ref, vdi_ref, self.ctx.tag,
            self._wait_for_device, read_only=read_only, busy=self.ctx.busy,
            unplug_retries=self.conf.xenserver.vbd_unplug_retries)

    def _check_host(self):
        """[xenserver] check_host: plug nothing into a VM that has moved
        (a migrated agent VM would write into another host's disks)."""
        resident_on = self.ctx.session.call("VM.get_resident_on", self.ctx.vm_ref)
        if resident_on != self.ctx.host_ref:
            raise exceptions.DiskOperationFailed(
                operation="check_host", target="VM %s" % self.ctx.vm_uuid,
                reason="no longer resident on host %s ([xenserver] check_host)"
                % self.ctx.host_name)

    @contextlib.contextmanager
    def _writable(self, device):
        """Lend the device to this process, give it back afterwards."""
        previous = privileged.chown_device(device, os.getuid())
        try:
            with open(self._device_path(device), "r+b", buffering=0) as f:
                yield f
                os.fsync(f.fileno())
        finally:
            privileged.chown_device(device, previous)

    @contextlib.contextmanager
    def _readable(self, device):
        """Lend the device to this process for reading, give it back afterwards."""
        previous = privileged.chown_device(device, os.getuid())
        try:
            yield self._device_path(device)
        finally:
            privileged.chown_device(device, previous)

    # -- upload_snapshot -------------------------------------------------------

    def upload_snapshot(self, instance_uuid, vdi_uuid, image_id, auth_token):
        """The snapshot plugged read-only into this VM, encoded as a VHD by
        the agent and streamed into the image service."""
        session = self.ctx.session
        vdi_ref = vdis.snapshot_ref(session, vdi_uuid, instance_uuid, "upload_snapshot")
        size_bytes = int(session.call("VDI.get_virtual_size", vdi_ref))
        self.ctx.busy.add(vdi_ref)
        try:
            with self._attached(vdi_ref, read_only=True) as dev:
                with self._readable(dev.device) as path:
                    return snapshot.upload(
                        self.conf, image_id, auth_token,
                        lambda: snapshot.EncodedVhd(vhd.VhdStream.from_file(path,
                                                                            size_bytes)))
        finally:
            self.ctx.busy.discard(vdi_ref)

    # -- fetch_image ---------------------------------------------------------

    def fetch_raw(self, instance_uuid, image_id, disk_format, auth_token, purpose,
                  offset_sectors=0):
        reader = None

        def size_bytes():
            nonlocal reader
            reader = images.open_image(self.conf, image_id, auth_token)
            return round_up(reader.size_bytes + offset_sectors * 512, base.MiB)

        def fill(vdi_ref):
            self.write_raw(vdi_ref, reader, offset_sectors)
            # The exact size: the VDI is rounded up to whole MiB.
            marks.set_mark(self.ctx.session, "VDI", vdi_ref,
                           *marks.image_bytes_mark(reader.size_bytes))

        try:
            ref = vdis.make(self.ctx, "fetch_image", instance_uuid, purpose,
                            root_request(image_id, disk_format), size_bytes, fill)
        finally:
            if reader is not None:
                reader.close()
        return ref

    def write_raw(self, vdi_ref, reader, offset_sectors=0):
        """Plug the new VDI here and copy the image into it, all-zero blocks
        skipped; ``offset_sectors`` leaves room for a partition table."""
        with self._attached(vdi_ref) as dev:
            base.checkpoint("attached")
            if offset_sectors:
                # A partition-less filesystem image: give it a partition.
                end = offset_sectors + round_up(reader.size_bytes, 512) // 512 - 1
                privileged.make_partition(dev.device, offset_sectors, end, "83", False)
            with self._writable(dev.device) as f:
                f.seek(offset_sectors * 512)
                _copy_skipping_zeros(reader, f, reader.size_bytes,
                                     "image %s into %s" % (reader.image_id, dev.device),
                                     self.conf.agent.progress_interval)
            reader.verify()
            base.checkpoint("written")

    def fetch_boot_file(self, instance_uuid, image_id, auth_token, kind):
        """Kernel or ramdisk: into a scratch VDI, then copied by dom0 to its
        boot directory; the VDI is destroyed afterwards."""
        vdi_ref = self.fetch_raw(instance_uuid, image_id, "aki" if kind == "kernel" else "ari",
                                 auth_token, kind)
        session = self.ctx.session
        try:
            size_bytes = marks.image_bytes(session.call("VDI.get_other_config", vdi_ref)) \
                or int(session.call("VDI.get_virtual_size", vdi_ref))
            with attach.attached(
                    session, self.ctx.dom0_ref, vdi_ref, self.ctx.tag,
                    self.dom0_wait_for_device, read_only=True, busy=self.ctx.busy,
                    unplug_retries=self.conf.xenserver.vbd_unplug_retries) as dev:
                copied = session.call_plugin_json(KERNEL_PLUGIN, "copy_vdi", {
                    "dev": dev.device, "size_bytes": size_bytes, "kind": kind})
        finally:
            vdis.destroy_quietly(session, vdi_ref, self.ctx.tag)
        return {"uuid": None, "type": kind, "size_bytes": size_bytes,
                "path": copied["path"]}

    def fetch_image(self, instance_uuid, image_id, disk_format, kernel_id,
                    ramdisk_id, auth_token):
        """VHD via the dom0 image plugin; raw/ami streamed into a local device;
        aki/ari and kernel_id/ramdisk_id copied to dom0's boot directory."""
        cached = self.fetch_cached_root(instance_uuid, image_id, disk_format, kernel_id,
                                        ramdisk_id, auth_token)
        if cached is not None:
            return cached
        if disk_format == "vhd":
            return {"vdis": [self.fetch_vhd(instance_uuid, image_id, auth_token)]}
        if disk_format in ("aki", "ari"):
            kind = "kernel" if disk_format == "aki" else "ramdisk"
            return {"vdis": [self.fetch_boot_file(instance_uuid, image_id, auth_token, kind)]}
        offset = MBR_GAP_SECTORS if disk_format == "ami" else 0
        root = self.fetch_raw(instance_uuid, image_id, disk_format, auth_token, marks.ROOT,
                              offset)
        result = [dict(vdis.result(self.ctx.session, root), type="root")]
        try:
            for kind, boot_image in (("kernel", kernel_id), ("ramdisk", ramdisk_id)):
                if boot_image:
                    result.append(self.fetch_boot_file(instance_uuid, boot_image,
                                                       auth_token, kind))
        except BaseException:
            # The driver never learns the paths of files copied before the
            # failure, so they go now (the root VDI is tagged: its undo finds it).
            copied = [entry["path"] for entry in result[1:]]
            try:
                if copied:
                    self.remove_boot_files(copied)
            except Exception:  # noqa: BLE001 -- never masks the fetch's own error
                LOG.exception("Could not remove %s from dom0 after a failed fetch",
                              ", ".join(copied))
            raise
        return {"vdis": result}

    # -- disks -----------------------------------------------------------------

    def auto_configure_disk(self, vdi_uuid, new_gb, instance_uuid=None):
        """Check the only partition and its ext fs, grow the VDI, then grow
        the partition and the filesystem to the end of the disk."""
        vdi_ref = self.owned_vdi_ref(vdi_uuid, instance_uuid, "auto_configure_disk")
        with self._attached(vdi_ref) as dev:
            self._single_ext_partition(dev.device)
        base.checkpoint("inspected")
        self.ensure_size("auto_configure_disk", vdi_ref, new_gb)
        base.checkpoint("resized")
        with self._attached(vdi_ref) as dev:
            table = privileged.grow_partition(dev.device, 1)
            base.checkpoint("partition grown")
            part = self._wait_for_partition(dev.device, 1, table["partitions"][0]["size"])
            privileged.resize_fs(part)
        return vdis.result(self.ctx.session, vdi_ref)

    def _single_ext_partition(self, device):
        table = privileged.get_partitions(device)
        parts = table["partitions"]
        if table["label"] != "dos" or [p["num"] for p in parts] != [1]:
            raise exceptions.DiskOperationFailed(
                operation="auto_configure_disk", target=device,
                reason="needs an msdos label with exactly partition 1, found %s"
                % ([p["num"] for p in parts] or "none"))
        part = self._wait_for_partition(device, 1)
        privileged.check_fs(part)  # refuses anything but ext2/3/4
        return part

    def generate_disk(self, instance_uuid, kind, size_mb, fs_type, label):
        """New VDI: msdos label, one partition from sector 2048, then mkfs."""
        def fill(vdi_ref):
            with self._attached(vdi_ref) as dev:
                base.checkpoint("attached")
                privileged.make_partition(dev.device, PARTITION_START, None,
                                          partition_type_for(fs_type), False)
                base.checkpoint("partitioned")
                part = self._wait_for_partition(dev.device, 1)
                privileged.mkfs(part, fs_type, label)
                base.checkpoint("formatted")

        ref = vdis.make(self.ctx, "generate_disk", instance_uuid,
                        marks.disk_purpose(kind, label),
                        disk_request(kind, size_mb, fs_type, label), size_mb * base.MiB, fill)
        return vdis.result(self.ctx.session, ref)

    def write_configdrive(self, vdi_ref, iso_path):
        """Attach the VDI here and copy the ISO onto it, skipping zeros."""
        with self._attached(vdi_ref) as dev:
            base.checkpoint("attached")
            with self._writable(dev.device) as f, open(iso_path, "rb") as src:
                _copy_skipping_zeros(src, f, os.path.getsize(iso_path),
                                     "config drive into %s" % dev.device,
                                     self.conf.agent.progress_interval)
            base.checkpoint("written")

    def resize_disk(self, instance_uuid, vdi_uuid, new_gb):
        """Copy the root disk's only (ext) partition into a new, smaller VDI."""
        session = self.ctx.session
        src_ref = self.owned_vdi_ref(vdi_uuid, instance_uuid, "resize_disk")
        new_bytes = new_gb * base.GiB
        self.check_shrink(src_ref, new_bytes)

        def fill(dst_ref):
            with self._attached(src_ref, read_only=True) as src, \
                    self._attached(dst_ref) as dst:
                base.checkpoint("attached")
                table = privileged.get_partitions(src.device)
                parts = table["partitions"]
                if table["label"] != "dos" or len(parts) != 1:
                    raise exceptions.DiskOperationFailed(
                        operation="resize_disk", target=vdi_uuid,
                        reason="needs an msdos label with one partition")
                part = parts[0]
                privileged.make_partition(dst.device, part["start"], None, part["type"],
                                          part["bootable"])
                base.checkpoint("partitioned")
                src_part = self._wait_for_partition(src.device, part["num"])
                dst_part = self._wait_for_partition(dst.device, 1)
                privileged.copy_shrunk_fs(src.device, src_part, dst.device, dst_part)
                base.checkpoint("copied")

        ref = vdis.make(self.ctx, "resize_disk", instance_uuid, marks.RESIZE,
                        {"vdi_uuid": vdi_uuid, "new_gb": new_gb}, new_bytes, fill,
                        sr_ref=session.call("VDI.get_SR", src_ref))
        return vdis.result(session, ref)

    def preconfigure_instance(self, vdi_uuid, network_config, files, ssh_key, metadata,
                              instance_uuid=None):
        """Mount partition 1 (or the whole disk when it has no partition
        table) and write what Nova's ``flat_injected`` wrote: the network
        configuration (``/etc/network/interfaces``), the SSH key (added to
        ``/root/.ssh/authorized_keys``) and the metadata (``/meta.js``, as
        JSON); then the files.

        Only a Linux filesystem is written to. When partition 1 holds
        anything else (a Windows image, say), a request carrying only those
        three is skipped, as Nova's ``flat_injected`` did, and the result
        says why under ``skipped``; a request naming files fails with
        ``DiskOperationFailed``, since the caller asked for them.
        """
        vdi_ref = self.owned_vdi_ref(vdi_uuid, instance_uuid, "preconfigure_instance")
        to_write = [(path, data) for path, data in (files or [])]
        if network_config is not None:
            to_write.append((methods.NETWORK_CONFIG_PATH, network_config.encode()))
        if metadata is not None:
            to_write.append((methods.METADATA_PATH, json.dumps(metadata, sort_keys=True).encode()))
        if not to_write and ssh_key is None:
            return {}
        with self._attached(vdi_ref) as dev:
            table = privileged.get_partitions(dev.device)
            nums = [p["num"] for p in table["partitions"]]
            part = (self._wait_for_partition(dev.device, nums[0]) if nums
                    else dev.device)
            done = privileged.inject_files(part, to_write, authorized_key=ssh_key)
        if done["written"]:
            return {}
        reason = "%s holds %s, not a Linux filesystem (%s)" % (
            "partition %d" % nums[0] if nums else "the disk (no partition table)",
            done["fs_type"] or "no filesystem", ", ".join(privileged.GUEST_FS_TYPES))
        if files:
            raise exceptions.DiskOperationFailed(
                operation="preconfigure_instance", target=vdi_uuid,
                reason="cannot write files: " + reason)
        LOG.warning("VDI %s: network configuration, SSH key and metadata not injected: %s",
                    vdi_uuid, reason)
        return {"skipped": reason}


def _wait_until(predicate, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _kernel_size(path):
    """The kernel's idea of a block device's size, in 512-byte sectors."""
    name = os.path.basename(os.path.realpath(path))
    try:
        with open("/sys/class/block/%s/size" % name) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _copy_skipping_zeros(source, target, total_bytes, label, interval):
    """Copy ``total_bytes`` of ``source`` to the (fresh, zero-filled)
    ``target`` file from its position; all-zero 64 KiB blocks are seeked
    over, not written, and a source that can skip its holes
    (``skip_hole``, an image read from its file) skips them unread. Logs
    progress; returns the byte count."""
    progress = vdi_import.Progress(label, total_bytes, interval=interval)
    start = target.tell()
    buffer = bytearray(WRITE_PIECE_BYTES)
    view = memoryview(buffer)
    skip_hole = getattr(source, "skip_hole", None)
    copied = 0
    while copied < total_bytes:
        if skip_hole is not None:
            data = skip_hole()
            progress.advance(data - copied)
            copied = data
            if copied >= total_bytes:
                break
        size = min(len(view), total_bytes - copied)
        readahead.read_exactly(source, view[:size], copied, total_bytes)
        runs = []  # the piece's data blocks, neighbours merged
        for begin, end in readahead.data_blocks(buffer, 0, size):
            readahead.add_run(runs, begin, end - begin)
        for begin, length in runs:
            _write_at(target, start + copied + begin, view[begin:begin + length])
        copied += size
        progress.advance(size)
    target.seek(start + copied)
    LOG.info("%s: done, %s", label, progress.summary())
    return copied


def _write_at(target, offset, view):
    target.seek(offset)
    while view:
        view = view[target.write(view):]
