"""The agent's RPC endpoint: one method per row of the interface (rpc/methods.py).

Each method validates the whole request first against the declaration of
:mod:`rpc.methods` — every argument and every rule across arguments (the
server already did, but the endpoint is also called directly) — and only
then hands it to the backend chosen at startup. A bad request raises
``InvalidRequest`` and changes nothing.
"""

import logging

from rpc import methods

LOG = logging.getLogger(__name__)


class AgentEndpoint:
    """Validate, then delegate to ``backend`` (see agent/backends/base.py)."""

    def __init__(self, backend):
        self.backend = backend

    def _checked(self, name, args):
        checked = methods.validate(name, args)
        LOG.info("%s %s", name, methods.loggable(name, checked))
        return checked

    def describe(self):
        """Mode, own VM uuid, host, interface version, capabilities."""
        self._checked("describe", {})
        return self.backend.describe()

    def fetch_image(self, instance_uuid, image_id, disk_format, kernel_id=None,
                    ramdisk_id=None, auth_token=None):
        """The VDIs of an image: ``{"vdis": [{uuid, type, size_bytes, path?}]}``."""
        return self.backend.fetch_image(**self._checked("fetch_image", dict(
            instance_uuid=instance_uuid, image_id=image_id, disk_format=disk_format,
            kernel_id=kernel_id, ramdisk_id=ramdisk_id, auth_token=auth_token)))

    def auto_configure_disk(self, vdi_uuid, new_gb, instance_uuid=None):
        """Grow a disk of the instance, its only partition and its ext fs to ``new_gb``."""
        return self.backend.auto_configure_disk(**self._checked(
            "auto_configure_disk", dict(vdi_uuid=vdi_uuid, new_gb=new_gb,
                                        instance_uuid=instance_uuid)))

    def generate_disk(self, instance_uuid, kind, size_mb, fs_type, label):
        """A new partitioned, formatted ephemeral or swap disk."""
        return self.backend.generate_disk(**self._checked("generate_disk", dict(
            instance_uuid=instance_uuid, kind=kind, size_mb=size_mb, fs_type=fs_type,
            label=label)))

    def generate_configdrive(self, instance_uuid, metadata, user_data=None,
                             network_data=None, vendor_data=None, files=(),
                             admin_password=None):
        """A new config-drive disk (ISO9660 ``config-2``, OpenStack layout)."""
        return self.backend.generate_configdrive(**self._checked("generate_configdrive", dict(
            instance_uuid=instance_uuid, metadata=metadata, user_data=user_data,
            network_data=network_data, vendor_data=vendor_data,
            files=list(files or ()), admin_password=admin_password)))

    def resize_disk(self, instance_uuid, vdi_uuid, new_gb):
        """Copy a root disk into a new, smaller one; returns the new VDI."""
        return self.backend.resize_disk(**self._checked("resize_disk", dict(
            instance_uuid=instance_uuid, vdi_uuid=vdi_uuid, new_gb=new_gb)))

    def preconfigure_instance(self, vdi_uuid, network_config=None, files=None, ssh_key=None,
                              metadata=None, instance_uuid=None):
        """Write network configuration, an SSH key, metadata and files into an image."""
        return self.backend.preconfigure_instance(**self._checked(
            "preconfigure_instance", dict(
                vdi_uuid=vdi_uuid, network_config=network_config, files=files,
                ssh_key=ssh_key, metadata=metadata, instance_uuid=instance_uuid)))

    def remove_boot_files(self, paths):
        """Remove kernel/ramdisk files copied into dom0 for an instance."""
        return self.backend.remove_boot_files(**self._checked(
            "remove_boot_files", dict(paths=paths)))

    def upload_snapshot(self, instance_uuid, vdi_uuid, image_id, auth_token=None):
        """Upload a snapshot VDI of the instance into an image (VHD tarball)."""
        return self.backend.upload_snapshot(**self._checked("upload_snapshot", dict(
            instance_uuid=instance_uuid, vdi_uuid=vdi_uuid, image_id=image_id,
            auth_token=auth_token)))

    def cleanup_attached_vdis(self):
        """Remove this agent's leftover VBDs and half-made VDIs."""
        self._checked("cleanup_attached_vdis", {})
        return self.backend.cleanup_attached_vdis()

    def get_console_log(self, instance_uuid, max_bytes):
        """The tail of a running instance's console log, read in dom0."""
        return self.backend.get_console_log(**self._checked("get_console_log", dict(
            instance_uuid=instance_uuid, max_bytes=max_bytes)))

    def cache_image(self, image_id, auth_token=None):
        """Make sure the image has a ready cache VDI (Nova's cache_image)."""
        return self.backend.cache_image(**self._checked("cache_image", dict(
            image_id=image_id, auth_token=auth_token)))

    def manage_image_cache(self, min_age_seconds):
        """Remove cache VDIs no instance uses, unused for ``min_age_seconds``."""
        return self.backend.manage_image_cache(**self._checked(
            "manage_image_cache", dict(min_age_seconds=min_age_seconds)))

    def destroy_vdis(self, vdi_uuids):
        """Destroy VDIs (unplugging this agent's VBDs of them first)."""
        return self.backend.destroy_vdis(**self._checked(
            "destroy_vdis", dict(vdi_uuids=vdi_uuids)))
