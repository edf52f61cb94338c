"""independent: no local VM; disk work in dom0, data through XAPI's HTTP import.

VDIs are plugged into the served host's control domain and handed to the
``partition_utils`` plugin; image data and the config drive go up with
``PUT /import_raw_vdi`` (sparse ``chunked`` framing), each upload confirmed
by its XAPI task. What needs a local mount or a local copy is refused with
:class:`UnsupportedInIndependentMode`.
"""

import logging
import math

from agent import attach
from agent import images
from agent import snapshot
from agent import upload
from agent import vdis
from agent.backends import base
from agent.backends.common import (
    PARTITION_START, CommonBackend, disk_request, partition_type_for, root_request, round_up)
from nova_xen_split.xenhost import marks
from rpc import exceptions

LOG = logging.getLogger(__name__)


class IndependentBackend(CommonBackend):
    mode = "independent"
    # What works without a local VM: whatever dom0's plugins and XAPI's
    # HTTP import can do. Nothing needs starting beside the agent.
    CAN = frozenset(("fetch_vhd", "fetch_raw", "auto_configure_disk", "generate_disk",
                     "generate_configdrive"))
    LIMITATION = ("the agent has no local VM on the served host ([xenserver] "
                  "independent_compute), so nothing can be mounted or copied locally")

    def _plugin(self, fn, **args):
        return self.ctx.session.call_plugin_json(
            self.conf.xenserver.partition_plugin, fn, args)

    def _dom0_attached(self, vdi_ref):
        return attach.attached(
            self.ctx.session, self.ctx.dom0_ref, vdi_ref, self.ctx.tag,
            self.dom0_wait_for_device, busy=self.ctx.busy,
            unplug_retries=self.conf.xenserver.vbd_unplug_retries)

    # -- fetch_image -----------------------------------------------------------

    def fetch_image(self, instance_uuid, image_id, disk_format, kernel_id,
                    ramdisk_id, auth_token):
        """VHD via the dom0 image plugin; raw streamed to ``import_raw_vdi``.

        Raises UnsupportedInIndependentMode for kernel/ramdisk images and
        partition-less (ami) disk images.
        """
        if disk_format in ("aki", "ari") or kernel_id or ramdisk_id:
            raise self.unsupported(
                "fetch_kernel_ramdisk",
                "image properties disk_format=%s, kernel_id, ramdisk_id" % disk_format)
        if disk_format == "ami":
            raise exceptions.UnsupportedInIndependentMode(
                feature="Partition-less (ami) disk images, which need a partition table "
                "written around the data",
                option="image property disk_format=ami; %s" % self.LIMITATION)
        cached = self.fetch_cached_root(instance_uuid, image_id, disk_format, kernel_id,
                                        ramdisk_id, auth_token)
        if cached is not None:
            return cached
        if disk_format == "vhd":
            return {"vdis": [self.fetch_vhd(instance_uuid, image_id, auth_token)]}
        return {"vdis": [dict(self._fetch_raw(instance_uuid, image_id, auth_token),
                              type="root")]}

    def _fetch_raw(self, instance_uuid, image_id, auth_token):
        reader = None

        def size_bytes():
            nonlocal reader
            reader = images.open_image(self.conf, image_id, auth_token)
            return round_up(reader.size_bytes, base.MiB)

        def fill(vdi_ref):
            base.checkpoint("created")
            self.write_raw(vdi_ref, reader, still_wanted=vdis.still_wanted(
                self.ctx.session, vdi_ref, "root of instance %s" % instance_uuid,
                instance_uuid))

        try:
            ref = vdis.make(self.ctx, "fetch_image", instance_uuid, marks.ROOT,
                            root_request(image_id, "raw"), size_bytes, fill)
        finally:
            if reader is not None:
                reader.close()
        return vdis.result(self.ctx.session, ref)

    def write_raw(self, vdi_ref, reader, offset_sectors=0, still_wanted=None):
        """Upload a raw image with ``PUT /import_raw_vdi`` (sparse framing);
        ``still_wanted`` (see ``vdis.still_wanted``) stops a download nobody
        waits for any more."""
        if isinstance(reader, images.LocalImageFile):
            # A file: its holes are skipped unread, its data sent with sendfile.
            # The file sent is the one checked (opened with O_NOFOLLOW,
            # its size matched), not whatever its path names by now.
            upload.upload_file(self.ctx.session, vdi_ref, reader.path, fmt="chunked",
                               progress_interval=self.conf.agent.progress_interval,
                               opened=reader.file)
        else:
            upload.upload_stream(self.ctx.session, vdi_ref, reader, reader.size_bytes,
                                 progress_interval=self.conf.agent.progress_interval,
                                 still_wanted=still_wanted)
        reader.verify()
        base.checkpoint("uploaded")

    # -- upload_snapshot ---------------------------------------------------------

    def upload_snapshot(self, instance_uuid, vdi_uuid, image_id, auth_token):
        """XAPI's VHD export of the snapshot, streamed into the image service."""
        session = self.ctx.session
        vdi_ref = vdis.snapshot_ref(session, vdi_uuid, instance_uuid, "upload_snapshot")
        self.ctx.busy.add(vdi_ref)
        try:
            return snapshot.upload(self.conf, image_id, auth_token,
                                   lambda: snapshot.VdiExport(session, vdi_ref).open())
        finally:
            self.ctx.busy.discard(vdi_ref)

    # -- disks -------------------------------------------------------------------

    def auto_configure_disk(self, vdi_uuid, new_gb, instance_uuid=None):
        """Check the partition table in dom0, grow the VDI, then let
        ``partition_utils.resize_partition_and_fs`` grow partition and fs."""
        vdi_ref = self.owned_vdi_ref(vdi_uuid, instance_uuid, "auto_configure_disk")
        with self._dom0_attached(vdi_ref) as dev:
            table = self._plugin("get_partitions", dev=dev.device)
        nums = [p["num"] for p in table.get("partitions", [])]
        if table.get("label") != "dos" or nums != [1]:
            raise exceptions.DiskOperationFailed(
                operation="auto_configure_disk", target=vdi_uuid,
                reason="needs an msdos label with exactly partition 1, found %s"
                % (nums or "none"))
        base.checkpoint("inspected")
        self.ensure_size("auto_configure_disk", vdi_ref, new_gb)
        base.checkpoint("resized")
        with self._dom0_attached(vdi_ref) as dev:
            self._plugin("resize_partition_and_fs", dev=dev.device, partnum=1,
                         partition_wait_seconds=math.ceil(self.conf.agent.partition_wait_timeout))
        return vdis.result(self.ctx.session, vdi_ref)

    def generate_disk(self, instance_uuid, kind, size_mb, fs_type, label):
        """New VDI plugged into dom0: ``make_partition`` then ``mkfs``."""
        wait_seconds = math.ceil(self.conf.agent.partition_wait_timeout)

        def fill(vdi_ref):
            with self._dom0_attached(vdi_ref) as dev:
                base.checkpoint("attached")
                self._plugin("make_partition", dev=dev.device,
                             partition_start=PARTITION_START, partition_end="-",
                             partition_type=partition_type_for(fs_type),
                             partition_wait_seconds=wait_seconds)
                base.checkpoint("partitioned")
                self._plugin("mkfs", dev=dev.device, partnum=1, fs_type=fs_type,
                             fs_label=label, partition_wait_seconds=wait_seconds)
                base.checkpoint("formatted")

        ref = vdis.make(self.ctx, "generate_disk", instance_uuid,
                        marks.disk_purpose(kind, label),
                        disk_request(kind, size_mb, fs_type, label), size_mb * base.MiB, fill)
        return vdis.result(self.ctx.session, ref)

    def write_configdrive(self, vdi_ref, iso_path):
        """Upload the ISO with ``PUT /import_raw_vdi`` (sparse framing)."""
        upload.upload_file(self.ctx.session, vdi_ref, iso_path, fmt="chunked")
        base.checkpoint("uploaded")

    def resize_disk(self, instance_uuid, vdi_uuid, new_gb):
        """Always UnsupportedInIndependentMode (needs a local copy)."""
        raise self.unsupported("resize_down", "the flavor's root_gb")

    def preconfigure_instance(self, vdi_uuid, network_config, files, ssh_key, metadata,
                              instance_uuid=None):
        """Always UnsupportedInIndependentMode (needs a local mount)."""
        raise self.unsupported("preconfigure_instance", "[DEFAULT] flat_injected")
