"""The agent's RPC endpoint: one method per row of the interface (rpc/methods.py).

Each method validates the whole request first — the declared schema of
:mod:`rpc.methods` (the server already did, but the endpoint is also called
directly) plus the rules that span arguments — and only then hands it to the
backend chosen at startup. A bad request raises ``InvalidRequest`` and
changes nothing.
"""

import logging

from rpc import exceptions
from rpc import methods
from rpc import schema

LOG = logging.getLogger(__name__)

MIN_DISK_MB = 4  # room for the 1 MiB partition gap and the smallest fs
VFAT_LABEL_MAX = 11


def _invalid(method, field, reason):
    return exceptions.InvalidRequest(method=method, field=field, reason=reason)


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
        args = self._checked("fetch_image", dict(
            instance_uuid=instance_uuid, image_id=image_id, disk_format=disk_format,
            kernel_id=kernel_id, ramdisk_id=ramdisk_id, auth_token=auth_token))
        if (kernel_id or ramdisk_id) and disk_format != "ami":
            raise _invalid("fetch_image", "kernel_id" if kernel_id else "ramdisk_id",
                           "separate kernel/ramdisk images go with disk_format ami")
        return self.backend.fetch_image(**args)

    def auto_configure_disk(self, vdi_uuid, new_gb):
        """Grow a disk, its only partition and its ext fs to ``new_gb``."""
        return self.backend.auto_configure_disk(**self._checked(
            "auto_configure_disk", dict(vdi_uuid=vdi_uuid, new_gb=new_gb)))

    def generate_disk(self, instance_uuid, kind, size_mb, fs_type, label):
        """A new partitioned, formatted ephemeral or swap disk."""
        args = self._checked("generate_disk", dict(
            instance_uuid=instance_uuid, kind=kind, size_mb=size_mb, fs_type=fs_type,
            label=label))
        if (kind == "swap") != (fs_type == "swap"):
            raise _invalid("generate_disk", "fs_type",
                           "a swap disk takes fs_type swap, an ephemeral disk a filesystem")
        if size_mb < MIN_DISK_MB:
            raise _invalid("generate_disk", "size_mb",
                           "at least %d MiB are needed for a partition and a filesystem"
                           % MIN_DISK_MB)
        if fs_type == "vfat" and len(label) > VFAT_LABEL_MAX:
            raise _invalid("generate_disk", "label",
                           "a vfat label takes at most %d characters" % VFAT_LABEL_MAX)
        return self.backend.generate_disk(**args)

    def generate_configdrive(self, instance_uuid, metadata, user_data=None,
                             network_data=None, vendor_data=None, files=(),
                             admin_password=None):
        """A new config-drive disk (ISO9660 ``config-2``, OpenStack layout)."""
        args = self._checked("generate_configdrive", dict(
            instance_uuid=instance_uuid, metadata=metadata, user_data=user_data,
            network_data=network_data, vendor_data=vendor_data,
            files=list(files or ()), admin_password=admin_password))
        if metadata.get("uuid") != instance_uuid:
            raise _invalid("generate_configdrive", "metadata",
                           "meta_data uuid must be the instance uuid")
        return self.backend.generate_configdrive(**args)

    def resize_disk(self, instance_uuid, vdi_uuid, new_gb):
        """Copy a root disk into a new, smaller one; returns the new VDI."""
        return self.backend.resize_disk(**self._checked("resize_disk", dict(
            instance_uuid=instance_uuid, vdi_uuid=vdi_uuid, new_gb=new_gb)))

    def preconfigure_instance(self, vdi_uuid, network_config=None, files=None, ssh_key=None,
                              metadata=None):
        """Write network configuration, an SSH key, metadata and files into an image."""
        args = self._checked("preconfigure_instance", dict(
            vdi_uuid=vdi_uuid, network_config=network_config, files=files, ssh_key=ssh_key,
            metadata=metadata))
        placed = [(arg, path) for arg, path in methods.PRECONFIGURE_PLACES
                  if args[arg] is not None]
        for index, (name, _) in enumerate(args["files"] or ()):
            for arg, path in placed:
                if schema.paths_overlap(name, path):
                    raise _invalid("preconfigure_instance", "files[%d]" % index,
                                   "overlaps %s, where %s goes" % (path, arg))
        return self.backend.preconfigure_instance(**args)

    def cleanup_attached_vdis(self):
        """Remove this agent's leftover VBDs and half-made VDIs."""
        self._checked("cleanup_attached_vdis", {})
        return self.backend.cleanup_attached_vdis()

    def destroy_vdis(self, vdi_uuids):
        """Destroy VDIs (unplugging this agent's VBDs of them first)."""
        args = self._checked("destroy_vdis", dict(vdi_uuids=vdi_uuids))
        if len(set(vdi_uuids)) != len(vdi_uuids):
            raise _invalid("destroy_vdis", "vdi_uuids", "names a VDI twice")
        return self.backend.destroy_vdis(**args)
