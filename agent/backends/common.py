"""What both backends do the same way: VHD chains, dom0 devices, checks."""

import itertools
import logging
import os
import struct
import tarfile
import tempfile

from agent import configdrive, image_cache, images, vdi_import, vdis
from agent.backends import base
from nova_xen_split.xenhost import marks, xapi
from rpc import exceptions

LOG = logging.getLogger(__name__)

PARTITION_START = 2048  # sectors: 1 MiB aligned, as Nova made generated disks
KERNEL_PLUGIN = "kernel.py"
_PARTITION_TYPES = {"swap": "82", "vfat": "0c"}


def root_request(image_id, disk_format):
    """What defines a root disk made from an image (its fingerprint)."""
    return {"image_id": image_id, "disk_format": disk_format}


def disk_request(kind, size_mb, fs_type, label):
    """What defines a generated disk (its fingerprint)."""
    return {"kind": kind, "size_mb": size_mb, "fs_type": fs_type, "label": label}


def partition_type_for(fs_type):
    """msdos partition type for a filesystem: 82 swap, 0c vfat, else 83."""
    return _PARTITION_TYPES.get(fs_type, "83")


def round_up(value, unit):
    return -(-value // unit) * unit


_VHD_PIECE_BYTES = 4 << 20
_VHD_FOOTER_BYTES = 512
_VHD_DYNAMIC, _VHD_DIFFERENCING = 3, 4


def _first_vhd(archive, image_id):
    """(member, its stream, its first 512 bytes, the disk's virtual size) of
    the first ``.vhd`` in a tarball read as a stream. A dynamic VHD starts
    with a copy of its footer (cookie ``conectix``, the current size at byte
    48, the disk type at 60); a fixed one is the disk then the footer."""
    for member in iter(archive.next, None):
        if member.isfile() and member.name.endswith(".vhd"):
            break
    else:
        raise exceptions.ImageFetchFailed(image_id=image_id, reason="no .vhd in the tarball")
    stream = archive.extractfile(member)
    first = stream.read(_VHD_FOOTER_BYTES)
    if len(first) < _VHD_FOOTER_BYTES:
        raise exceptions.ImageFetchFailed(
            image_id=image_id, reason="%s is shorter than a VHD footer" % member.name)
    if first[:8] != b"conectix":
        return member, stream, first, member.size - _VHD_FOOTER_BYTES  # fixed
    virtual_size, = struct.unpack_from(">Q", first, 48)
    disk_type, = struct.unpack_from(">I", first, 60)
    if disk_type == _VHD_DIFFERENCING:
        raise exceptions.ImageFetchFailed(image_id=image_id, reason=(
            "%s is a differencing VHD: a chain cannot be imported into an SR "
            "without a directory (LVM)" % member.name))
    if disk_type != _VHD_DYNAMIC:
        raise exceptions.ImageFetchFailed(
            image_id=image_id, reason="%s: VHD disk type %d" % (member.name, disk_type))
    return member, stream, first, virtual_size


def _log_vhd_checksum(image_id, endpoint, checksum, chain):
    """Say what the dom0 image plugin checked the VHD tarball against."""
    checked = chain.get("checksum") or ("md5" if chain.get("checksum_verified") else None)
    if checked is None:
        LOG.warning("Image %s: %s gave no checksum (no os_hash_value in its record, no "
                    "Content-MD5); its VHD chain landed unchecked", image_id, endpoint)
    elif checksum is not None and checked != checksum.algorithm:
        LOG.warning("Image %s: dom0 checked its %s checksum, not the %s of its record "
                    "(is the dom0 image plugin older than this agent?)", image_id,
                    checked.upper(), checksum.algorithm.upper())
    else:
        LOG.info("Image %s: its %s checksum was verified in dom0", image_id,
                 checked.upper())


class CommonBackend(base.Backend):

    def __init__(self, ctx):
        super().__init__(ctx)
        self.image_cache = image_cache.ImageCache(ctx)

    # -- the image cache ------------------------------------------------------

    def fetch_cached_root(self, instance_uuid, image_id, disk_format, kernel_id, ramdisk_id,
                          auth_token):
        """``{"vdis": [root]}`` with the root cloned from the image's cache
        VDI, or None when the image is not cached here (see
        :mod:`agent.image_cache`)."""
        root = self.image_cache.fetch_root(self, instance_uuid, image_id, disk_format,
                                           auth_token, kernel_id, ramdisk_id)
        return None if root is None else {"vdis": [dict(root, type="root")]}

    def fill_image_cache(self, instance_uuid, image_id, disk_format, auth_token, new_vdi,
                         finish):
        """Put the image into a new cache VDI; returns its ref.

        Raw: ``new_vdi(size_bytes)`` makes the VDI, the image is written into
        it, then ``finish(ref, image_bytes)`` marks it ready. VHD: the dom0
        plugin lands the chain and ``finish(leaf_ref)`` marks its leaf ready
        while the chain is still recorded as pending (a crash before that
        leaves it to the pending-chain cleanup).
        """
        if disk_format == "vhd":
            # Pending for the image, not the instance: a driver undoing the
            # instance's spawn leaves the chain to the cache.
            return self._land_vhd("image:%s" % image_id, image_id, auth_token,
                                  lambda leaf_ref, _sr_ref, _pending: finish(leaf_ref))
        with images.open_image(self.conf, image_id, auth_token) as reader:
            vdi_ref = new_vdi(round_up(reader.size_bytes, base.MiB))
            base.checkpoint("created")
            self.write_raw(vdi_ref, reader)
            finish(vdi_ref, reader.size_bytes)
        return vdi_ref

    def write_raw(self, vdi_ref, reader, offset_sectors=0):
        """Write a raw image from ``reader`` into the new VDI."""
        raise NotImplementedError

    def cache_image(self, image_id, auth_token):
        """Nova's ``cache_image``: see :meth:`agent.image_cache.ImageCache.cache`."""
        return self.image_cache.cache(self, image_id, auth_token)

    def manage_image_cache(self, min_age_seconds):
        """Remove unused cache VDIs: :meth:`agent.image_cache.ImageCache.manage`."""
        return self.image_cache.manage(min_age_seconds)

    def cleanup_attached_vdis(self):
        """The common cleanup, and cache VDIs this agent left half filled."""
        result = super().cleanup_attached_vdis()
        result["destroyed"] += self.image_cache.cleanup()
        return result

    # -- the rest --------------------------------------------------------------

    def generate_configdrive(self, instance_uuid, metadata, user_data,
                             network_data, vendor_data, files, admin_password):
        """Build the ISO in a private temp dir where the agent runs, then
        hand it to the backend's :meth:`write_configdrive`."""
        with tempfile.TemporaryDirectory(prefix="nxs-configdrive-") as tmp:
            iso = os.path.join(tmp, "configdrive.iso")

            def fill(vdi_ref):
                configdrive.build_configdrive(
                    iso, metadata, user_data=user_data, network_data=network_data,
                    vendor_data=vendor_data, files=files, admin_password=admin_password)
                base.checkpoint("built")
                self.write_configdrive(vdi_ref, iso)

            # The drive's content, secrets left out of its fingerprint.
            request = dict(metadata=metadata, user_data=user_data, network_data=network_data,
                           vendor_data=vendor_data, files=files)
            ref = vdis.make(self.ctx, "generate_configdrive", instance_uuid, marks.CONFIGDRIVE,
                            request, configdrive.CONFIGDRIVE_SIZE_BYTES, fill)
        return vdis.result(self.ctx.session, ref)

    def write_configdrive(self, vdi_ref, iso_path):
        """Put the built ISO into the new config-drive VDI."""
        raise NotImplementedError

    def remove_boot_files(self, paths):
        """Remove kernel/ramdisk files from dom0's boot directory through
        the kernel plugin, which refuses any other file. A file already
        gone is fine. Returns ``{"removed": n}``; raises XapiFailure."""
        removed = 0
        for path in paths:
            done = self.ctx.session.call_plugin_json(KERNEL_PLUGIN, "remove_file",
                                                     {"path": path})
            removed += bool(done and done.get("removed"))
        return {"removed": removed}

    def dom0_wait_for_device(self, device):
        """Path of a device plugged into dom0, once dom0 sees it."""
        found = self.ctx.session.call_plugin_json(
            self.conf.xenserver.partition_plugin, "wait_for_dev",
            {"dev": device,
             "max_seconds": self.conf.xenserver.block_device_creation_timeout})
        return found["path"]

    def check_shrink(self, src_ref, new_bytes):
        size_bytes = xapi.to_int(self.ctx.session.call("VDI.get_virtual_size", src_ref))
        if new_bytes >= size_bytes:
            raise exceptions.InvalidRequest(
                method="resize_disk", field="new_gb",
                reason="%d bytes is not smaller than the disk (%d bytes); growing "
                "is auto_configure_disk's job" % (new_bytes, size_bytes))

    def fetch_vhd(self, instance_uuid, image_id, auth_token):
        """The image's VHD chain through the dom0 image plugin + ``SR.scan``.

        The leaf becomes the instance's ready ``root`` VDI. Each
        ``[glance] api_servers`` entry is tried in turn.
        """
        session = self.ctx.session
        request = root_request(image_id, "vhd")
        sr_ref = vdis.default_sr(session)
        sr_path = vdis.sr_path(session, sr_ref, required=False)
        if sr_path is None:  # vdis.make takes the instance's key itself
            return self._import_vhd(instance_uuid, image_id, auth_token, sr_ref)
        with self.ctx.busy.key(instance_uuid, marks.ROOT):
            found = vdis.find_ready(session, instance_uuid, marks.ROOT)
            if found:
                vdis.check_same_request(found, instance_uuid, marks.ROOT, request,
                                        "fetch_image")
                return dict(vdis.result(session, found[0]), type="root")
            vdis.refuse_if_given_up(session, instance_uuid, "root of instance %s"
                                    % instance_uuid)

            def tag_root(root_ref, sr_ref, pending):
                vdis.tag(session, root_ref, instance_uuid, marks.ROOT, self.ctx.tag,
                         marks.READY, request)
                # Checked after tagging: a driver that gives up from here on
                # finds the tagged leaf in its own sweep.
                if vdis.chain_abandoned(session, sr_ref, pending.leaf_uuid):
                    raise exceptions.ImageFetchFailed(
                        image_id=image_id,
                        reason="the driver gave up on instance %s (its call timed out and "
                        "the spawn was undone) while dom0 was landing the image; the VHD "
                        "chain is destroyed" % instance_uuid)
                vdis.refuse_if_caller_gone("root of instance %s" % instance_uuid)
                vdis.refuse_if_given_up(session, instance_uuid, "root of instance %s"
                                        % instance_uuid)

            root_ref = self._land_vhd(instance_uuid, image_id, auth_token, tag_root)
            return dict(vdis.result(session, root_ref), type="root")

    def _land_vhd(self, owner, image_id, auth_token, tag_leaf):
        """Land the image's VHD chain in the default SR, recorded as pending
        for ``owner`` (an instance uuid, or ``image:<id>``) while the plugin runs; ``tag_leaf``
        (leaf ref, SR ref, pending chain) marks the leaf before the record
        goes. Returns the leaf's ref; on a failure the chain is destroyed."""
        session = self.ctx.session
        sr_ref = vdis.default_sr(session)
        sr_path = vdis.sr_path(session, sr_ref)
        with vdis.pending_chain(session, sr_ref, owner, self.ctx.tag,
                                self.ctx.busy) as pending:
            return self._fetch_vhd_as(pending, image_id, auth_token, sr_ref, sr_path,
                                      tag_leaf)

    def _fetch_vhd_as(self, pending, image_id, auth_token, sr_ref, sr_path, tag_leaf):
        """_land_vhd's work once the chain's leaf uuid is recorded as pending."""
        session = self.ctx.session
        servers = [s.strip() for s in self.conf.glance.api_servers if s.strip()]
        # dom0 downloads the image; the agent reads its record for the
        # multihash to check it against (dom0 falls back to Content-MD5).
        checksum = images.expected_checksum(self.conf, image_id, auth_token)
        args = {"image_id": image_id, "auth_token": auth_token or "",
                "sr_path": sr_path, "leaf_uuid": pending.leaf_uuid,
                "verify_checksum": "true" if self.conf.glance.verify_checksum else "false"}
        if checksum is not None:
            args.update(hash_algo=checksum.algorithm, hash_value=checksum.hexdigest)
        last = None
        for endpoint in servers:
            try:
                chain = session.call_plugin_json(
                    self.conf.xenserver.image_plugin, "download_vhd",
                    dict(args, endpoint=endpoint))
                break
            except exceptions.XapiFailure as e:
                last = e
                if e.code == "CONNECTION_FAILED":  # the plugin may still be running
                    pending.maybe_running = True
                LOG.warning("Image %s from %s through dom0 failed: %s",
                            image_id, endpoint, " ".join(e.details[:3])[:300])
        else:
            raise exceptions.ImageFetchFailed(
                image_id=image_id,
                reason="the dom0 image plugin failed on every endpoint; last: %s"
                % (" ".join(last.details[:4])[:500] if last else "no endpoints"))
        if self.conf.glance.verify_checksum:
            _log_vhd_checksum(image_id, endpoint, checksum, chain)
        try:
            base.checkpoint("downloaded")
            session.call("SR.scan", sr_ref)
            root_ref = session.call("VDI.get_by_uuid", chain["root"])
            base.checkpoint("scanned")
            tag_leaf(root_ref, sr_ref, pending)
        except BaseException:
            self._forget_chain(sr_ref, chain["root"])
            raise
        return root_ref

    def _import_vhd(self, instance_uuid, image_id, auth_token, sr_ref):
        """fetch_vhd on an SR with no directory (LVM), where the dom0 plugin
        cannot put VHD files: the agent reads the image's tarball itself and
        sends its one VHD with ``PUT /import_raw_vdi?format=vhd``, which any
        SR takes. A chain (a differencing VHD) needs its parents' files:
        refused with ImageFetchFailed."""
        session = self.ctx.session
        reader = images.open_image(self.conf, image_id, auth_token)
        try:
            archive = tarfile.open(fileobj=reader, mode="r|")
            member, stream, first, virtual_size = _first_vhd(archive, image_id)

            def fill(vdi_ref):
                base.checkpoint("created")
                pieces = itertools.chain(
                    [first], iter(lambda: stream.read(_VHD_PIECE_BYTES), b""))
                progress = vdi_import.Progress(
                    "import of image %s as vhd" % image_id, member.size,
                    interval=self.conf.agent.progress_interval)
                vdi_import.put(session, vdi_ref, {"format": "vhd"}, member.size,
                               ([piece] for piece in pieces), progress)
                # Read on to the end (the download's checksum is checked).
                for other in iter(archive.next, None):
                    if other.name.endswith(".vhd"):
                        raise exceptions.ImageFetchFailed(image_id=image_id, reason=(
                            "%s holds more than one VHD (%s): a chain cannot be imported "
                            "into an SR without a directory (LVM)" % (image_id, other.name)))
                while reader.read(_VHD_PIECE_BYTES):
                    pass
                base.checkpoint("uploaded")

            ref = vdis.make(self.ctx, "fetch_image", instance_uuid, marks.ROOT,
                            root_request(image_id, "vhd"),
                            lambda: round_up(virtual_size, base.MiB), fill, sr_ref=sr_ref)
        except tarfile.TarError as e:
            raise exceptions.ImageFetchFailed(
                image_id=image_id, reason="not a tarball of VHDs: %s" % e) from None
        finally:
            reader.close()
        return dict(vdis.result(session, ref), type="root")

    def _forget_chain(self, sr_ref, root_uuid):
        """After a failure: make XAPI see the new VHDs, then destroy the leaf
        (XAPI's garbage collector removes its now childless parents)."""
        session = self.ctx.session
        try:
            session.call("SR.scan", sr_ref)
            vdis.destroy(session, session.call("VDI.get_by_uuid", root_uuid), self.ctx.tag)
        except Exception as e:
            gone = isinstance(e, exceptions.XapiFailure) and \
                e.code in ("UUID_INVALID", "HANDLE_INVALID")  # removed by the driver's sweep
            if not gone:
                LOG.exception("Could not remove the VHD chain of VDI %s after a failure",
                              root_uuid)
