"""``XenSplitDriver``: the Nova compute driver nova-compute 34 loads by name.

``[DEFAULT] compute_driver = xensplit.XenSplitDriver`` (through the
``nova.virt.xensplit`` module this distribution installs). The class is a
``nova.virt.driver.ComputeDriver`` with Nova 34's signatures; each method
turns Nova's objects into what the Nova-free driver underneath
(:class:`nova_xen_split.driver.XenSplitDriver`) takes, and its errors into
Nova's exceptions. The work itself — VMs through XAPI, disks through the
agent — is all underneath.
"""

import contextlib
import json

import os_resource_classes as orc
from oslo_log import log as logging
from oslo_utils import versionutils

import nova.conf
from nova import exception
from nova.objects import fields as nova_fields
from nova.virt import configdrive
from nova.virt import driver as nova_driver
from nova.virt import hardware

from nova_xen_split import driver as core_driver
from nova_xen_split import driver_errors, host_stats, objects
from nova_xen_split.virt import conf as virt_conf
from rpc import exceptions as rpc_exceptions

CONF = nova.conf.CONF
LOG = logging.getLogger(__name__)

# What every agent mode serves; image types that need more are added from
# what the agent publishes (see init_host).
_CAPABILITIES = {
    "has_imagecache": True,
    "supports_evacuate": False,
    "supports_migrate_to_same_host": True,
    "supports_attach_interface": False,
    "supports_device_tagging": False,
    "supports_multiattach": False,
    "supports_image_type_raw": True,
    "supports_image_type_vhd": True,
}


class XenSplitDriver(nova_driver.ComputeDriver):
    """nova-compute's driver for one XenServer / XCP-ng host and its agent."""

    capabilities = dict(nova_driver.ComputeDriver.capabilities, **_CAPABILITIES)

    def __init__(self, virtapi, read_only=False):
        super().__init__(virtapi)
        virt_conf.register_opts(CONF)
        self._core = core_driver.XenSplitDriver(virt_conf.driver_conf(CONF), virtapi=virtapi)
        self.capabilities = dict(self.capabilities)
        self._nodename = None

    # -- startup and the node ---------------------------------------------------

    def init_host(self, host):
        """Wait for the agent, check what it speaks and what its mode serves."""
        info = self._core.init_host(host)
        kernels = bool((info.get("capabilities") or {}).get("fetch_kernel_ramdisk"))
        for image_type in ("ami", "aki", "ari"):
            self.capabilities["supports_image_type_%s" % image_type] = kernels
        self._nodename = host_stats.read(self._core.session).hostname or host
        LOG.info("nova-xen-split serves node %s through an agent in %s mode",
                 self._nodename, info.get("mode"))

    def cleanup_host(self, host):
        self._core.cleanup_host(host)

    def get_available_nodes(self, refresh=False):
        if self._nodename is None or refresh:
            self._nodename = host_stats.read(self._core.session).hostname or CONF.host
        return [self._nodename]

    def get_host_ip_addr(self):
        return host_stats.this_host(self._core.session)[1].get("address") or CONF.my_ip

    def get_available_resource(self, nodename):
        """The host's sizes for Nova's ComputeNode record."""
        stats = host_stats.read(self._core.session)
        return {
            "vcpus": stats.vcpus,
            "memory_mb": stats.memory_mb,
            "local_gb": stats.disk_gb,
            "vcpus_used": 0,
            "memory_mb_used": stats.memory_mb - stats.memory_mb_free,
            "local_gb_used": stats.disk_gb_used,
            "hypervisor_type": nova_fields.HVType.XEN,
            "hypervisor_version": _version_int(stats.product_version),
            "hypervisor_hostname": nodename,
            "cpu_info": json.dumps(stats.cpu_info),
            "disk_available_least": stats.disk_gb - stats.disk_gb_used,
            "supported_instances": [
                (nova_fields.Architecture.X86_64, nova_fields.HVType.XEN, mode)
                for mode in (nova_fields.VMMode.XEN, nova_fields.VMMode.HVM)],
            "numa_topology": None,
        }

    def update_provider_tree(self, provider_tree, nodename, allocations=None):
        """VCPU, MEMORY_MB and DISK_GB of the host, with Nova's allocation
        ratios and reserves; the control domain's memory is reserved too,
        since no guest can have it."""
        stats = host_stats.read(self._core.session)
        ratios = self._get_allocation_ratios(provider_tree.data(nodename).inventory)
        reserved = {
            orc.VCPU: CONF.reserved_host_cpus,
            orc.MEMORY_MB: CONF.reserved_host_memory_mb + stats.control_domain_memory_mb,
            orc.DISK_GB: self._get_reserved_host_disk_gb_from_config(),
        }
        totals = {orc.VCPU: stats.vcpus, orc.MEMORY_MB: stats.memory_mb,
                  orc.DISK_GB: stats.disk_gb}
        inventory = {}
        for rc, total in totals.items():
            if total <= 0:
                continue
            inventory[rc] = {"total": total, "min_unit": 1, "max_unit": total,
                             "step_size": 1, "allocation_ratio": ratios[rc],
                             "reserved": min(reserved[rc], total)}
        provider_tree.update_inventory(nodename, inventory)

    # -- instances ----------------------------------------------------------------

    def list_instances(self):
        return self._core.list_instances()

    def list_instance_uuids(self):
        return self._core.list_instance_uuids()

    def instance_exists(self, instance):
        return self._core.instance_exists(instance)

    def get_info(self, instance, use_cache=True):
        with _nova_errors(instance):
            return hardware.InstanceInfo(state=self._core.get_info(instance).state)

    def spawn(self, context, instance, image_meta, injected_files, admin_password,
              allocations, network_info=None, block_device_info=None, power_on=True,
              accel_info=None):
        """Boot the instance: disks through the agent, the VM and its VIFs
        through XAPI. Volumes are not served (see attach_volume)."""
        _refuse_volumes(instance, block_device_info)
        with _nova_errors(instance):
            self._core.spawn(context, self._instance(instance), image_meta, injected_files,
                             admin_password, allocations, network_info, block_device_info)
            if not power_on:
                self._core.power_off(instance)

    def destroy(self, context, instance, network_info, block_device_info=None,
                destroy_disks=True, destroy_secrets=True):
        self._core.destroy(context, instance, network_info, block_device_info,
                           destroy_disks=destroy_disks)

    def cleanup(self, context, instance, network_info, block_device_info=None,
                destroy_disks=True, migrate_data=None, destroy_vifs=True,
                destroy_secrets=True):
        """Nova's cleanup after destroy or a move: the VM is gone already or
        goes now, with its disks when ``destroy_disks``."""
        self._core.destroy(context, instance, network_info, block_device_info,
                           destroy_disks=destroy_disks)

    def plug_vifs(self, instance, network_info):
        with _nova_errors(instance):
            self._core.plug_vifs(instance, network_info)

    def unplug_vifs(self, instance, network_info):
        self._core.unplug_vifs(instance, network_info)

    # -- power --------------------------------------------------------------------

    def power_off(self, instance, timeout=0, retry_interval=0):
        with _nova_errors(instance):
            self._core.power_off(instance, timeout, retry_interval)

    def power_on(self, context, instance, network_info, block_device_info=None,
                 accel_info=None, share_info=None):
        with _nova_errors(instance):
            self._core.power_on(context, instance, network_info, block_device_info)

    def reboot(self, context, instance, network_info, reboot_type, block_device_info=None,
               bad_volumes_callback=None, accel_info=None, share_info=None):
        with _nova_errors(instance):
            self._core.reboot(context, instance, network_info, reboot_type,
                              block_device_info)

    def get_console_output(self, context, instance):
        """The tail of the console log: Nova's ConsoleNotAvailable when the
        instance has none (not running, no log in dom0)."""
        with _nova_errors(instance):
            try:
                return self._core.get_console_output(context, instance)
            except rpc_exceptions.ConsoleLogUnavailable as e:
                LOG.info("%s", e)
                raise exception.ConsoleNotAvailable() from None
            except rpc_exceptions.VersionTooOld as e:
                raise exception.ConsoleLogOutputException(instance_id=instance.uuid,
                                                          reason=str(e)) from None

    def snapshot(self, context, instance, image_id, update_task_state):
        """Snapshot the root disk into Nova's image ``image_id`` (the driver
        underneath: XAPI's VDI.snapshot, uploaded by the agent)."""
        with _nova_errors(instance):
            self._core.snapshot(context, instance, image_id, update_task_state)

    def rescue(self, context, instance, network_info, image_meta, rescue_password,
               block_device_info, share_info):
        _refuse_volumes(instance, block_device_info)
        with _nova_errors(instance):
            self._core.rescue(context, instance, network_info, image_meta, rescue_password)

    def unrescue(self, context, instance):
        with _nova_errors(instance):
            self._core.unrescue(context, instance)

    # -- resize on this host ---------------------------------------------------------

    def migrate_disk_and_power_off(self, context, instance, dest, flavor, network_info,
                                   block_device_info=None, timeout=0, retry_interval=0):
        """Keep the VM as the resize's original. A resize down the agent
        cannot serve is Nova's InstanceFaultRollback: the server stays as it
        was, running, with the reason as its fault."""
        with _nova_errors(instance):
            try:
                return self._core.migrate_disk_and_power_off(
                    context, instance, dest, flavor, network_info, block_device_info,
                    timeout, retry_interval)
            except (rpc_exceptions.UnsupportedInIndependentMode,
                    rpc_exceptions.InvalidRequest, driver_errors.InvalidFlavor) as e:
                raise exception.InstanceFaultRollback(
                    inner_exception=exception.ResizeError(reason=str(e))) from None

    def finish_migration(self, context, migration, instance, disk_info, network_info,
                         image_meta, resize_instance, allocations, block_device_info=None,
                         power_on=True, share_info=None):
        with _nova_errors(instance):
            self._core.finish_migration(context, migration, instance, disk_info,
                                        network_info, image_meta, resize_instance,
                                        allocations, block_device_info, power_on)

    def confirm_migration(self, context, migration, instance, network_info):
        self._core.confirm_migration(context, migration, instance, network_info)

    def finish_revert_migration(self, context, instance, network_info, migration,
                                block_device_info=None, power_on=True, share_info=None):
        with _nova_errors(instance):
            self._core.finish_revert_migration(context, instance, network_info, migration,
                                               block_device_info, power_on)

    # -- the image cache ------------------------------------------------------------

    def cache_image(self, context, image_id):
        """Nova's image pre-caching (``nova aggregate-cache-images``): True
        when the image was fetched into this host's cache VDI now, False when
        it was cached already; NotImplementedError for an agent too old."""
        return self._core.cache_image(context, image_id)

    def manage_image_cache(self, context, all_instances):
        """Nova's periodic cache pass: cache VDIs no instance was cloned
        from, unused for ``[image_cache]
        remove_unused_original_minimum_age_seconds``, go when ``[image_cache]
        remove_unused_base_images`` says so."""
        self._core.manage_image_cache(context, all_instances)

    # -- volumes: not served ------------------------------------------------------------

    def attach_volume(self, context, connection_info, instance, mountpoint, disk_bus=None,
                      device_type=None, encryption=None):
        raise exception.VolumeAttachFailed(
            volume_id=_volume_id(connection_info),
            reason="nova-xen-split does not attach volumes")

    def detach_volume(self, context, connection_info, instance, mountpoint,
                      encryption=None):
        raise exception.VolumeDetachFailed(
            volume_id=_volume_id(connection_info),
            reason="nova-xen-split does not attach volumes")

    def get_volume_connector(self, instance):
        """Asked first when Nova attaches a volume: refused there, before
        Cinder exports anything."""
        raise exception.VolumeAttachFailed(
            volume_id="of instance %s" % instance.uuid,
            reason="nova-xen-split does not attach volumes")

    # -- helpers --------------------------------------------------------------------

    @staticmethod
    def _instance(instance):
        """Ours, with the config drive as Nova decides it
        (``configdrive.required_by``: the instance, the image, or
        ``[DEFAULT] force_config_drive``)."""
        ours = objects.instance_from(instance)
        ours.config_drive = "True" if configdrive.required_by(instance) else ""
        return ours


@contextlib.contextmanager
def _nova_errors(instance):
    """Our errors that Nova has a type for, raised as that type."""
    try:
        yield
    except driver_errors.InstanceNotFound:
        raise exception.InstanceNotFound(instance_id=instance.uuid) from None



def _refuse_volumes(instance, block_device_info):
    mappings = nova_driver.block_device_info_get_mapping(block_device_info)
    if mappings:
        raise exception.VolumeAttachFailed(
            volume_id=_volume_id(mappings[0].get("connection_info")),
            reason="nova-xen-split does not attach volumes; boot %s from an image"
            % instance.uuid)


def _volume_id(connection_info):
    data = (connection_info or {}).get("data") or {}
    return data.get("volume_id") or (connection_info or {}).get("serial") or "(unknown)"


def _version_int(version):
    try:
        return versionutils.convert_version_to_int(version)
    except Exception:  # noqa: BLE001 -- a version XAPI words oddly is just unknown
        return 0
