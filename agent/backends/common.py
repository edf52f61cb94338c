"""What both backends do the same way: VHD chains, dom0 devices, checks."""

import logging
import os
import tempfile

from agent import configdrive, images, vdis
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
        with self.ctx.busy.key(instance_uuid, marks.ROOT):
            found = vdis.find_ready(session, instance_uuid, marks.ROOT)
            if found:
                vdis.check_same_request(found, instance_uuid, marks.ROOT, request,
                                        "fetch_image")
                return dict(vdis.result(session, found[0]), type="root")
            vdis.refuse_if_given_up(session, instance_uuid, "root of instance %s"
                                    % instance_uuid)
            sr_ref = vdis.default_sr(session)
            sr_path = vdis.sr_path(session, sr_ref)
            with vdis.pending_chain(session, sr_ref, instance_uuid, self.ctx.tag,
                                    self.ctx.busy) as pending:
                return self._fetch_vhd_as(pending, instance_uuid, image_id, auth_token,
                                          sr_ref, sr_path)

    def _fetch_vhd_as(self, pending, instance_uuid, image_id, auth_token, sr_ref,
                      sr_path):
        """fetch_vhd's work once the chain's leaf uuid is recorded as pending."""
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
            vdis.tag(session, root_ref, instance_uuid, marks.ROOT, self.ctx.tag, marks.READY,
                     root_request(image_id, "vhd"))
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
        except BaseException:
            self._forget_chain(sr_ref, chain["root"])
            raise
        return dict(vdis.result(session, root_ref), type="root")

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
