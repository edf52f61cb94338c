"""A resize on one host: keep the original, boot copies, then confirm or revert.

Nova resizes in four calls; on one host they are:

1. :func:`migrate_disk_and_power_off`: the VM is shut down and kept as the
   instance's *original*: it and its disks lose the instance's marks and
   get the kept-original ones (``marks.vm_parked``, ``marks.vdi_parked``),
   so nothing that looks for the instance's VM or disks can take them.
2. :func:`finish_migration`: each disk is copied (``VDI.copy``) into a disk
   of the instance, the root copy grown to the new flavor by the agent
   (``auto_configure_disk``) or, to a smaller flavor, copied down by it
   (``resize_disk``, where the agent's mode can); a new VM with the new
   flavor's memory and vCPUs gets the copies and the VIFs, and starts.
3. :func:`confirm_migration`: the original VM and its disks go.
4. Revert: Nova destroys the new VM and the instance's disks first, then
   :func:`finish_revert_migration` makes the original the instance's again
   and starts it: it was never changed.

A resize down that the agent cannot serve is refused in step 1, before
anything changes (``UnsupportedInIndependentMode``; a root of 0 GB,
``InvalidRequest``).
"""

import json
import logging

from nova_xen_split import driver_errors, netinfo, objects, spawn, vifs, vm_utils
from nova_xen_split.xenhost import marks, teardown
from rpc import exceptions, methods

LOG = logging.getLogger(__name__)

GiB = 1024 ** 3


def kept_original(session, instance_uuid):
    """``(vm_ref, record)`` of the instance's kept original VM, or ``(None, None)``."""
    for ref, rec in session.call("VM.get_all_records").items():
        if marks.vm_parked_for(rec.get("other_config")) == instance_uuid:
            return ref, rec
    return None, None


def migrate_disk_and_power_off(driver, instance, flavor, timeout=0, retry_interval=0):
    """Shut the VM down and keep it as the original; returns Nova's disk info.

    Raises InvalidFlavor, InstanceNotFound, InvalidRequest (a root of
    0 GB) or UnsupportedInIndependentMode (a resize down the agent cannot
    serve), each before anything is changed.
    """
    instance = objects.instance_from(instance)
    new_flavor = objects.flavor_from(flavor)
    spawn.check_flavor(new_flavor)
    session = driver.session
    vm_ref = driver._vm_ref(instance)
    if int(new_flavor.root_gb) < int(instance.flavor.root_gb):
        if int(new_flavor.root_gb) <= 0:
            raise exceptions.InvalidRequest(
                method="migrate_disk_and_power_off", field="flavor.root_gb",
                reason="cannot resize a root disk down to 0 GB")
        info = driver._describe()
        if not (info.get("capabilities") or {}).get("resize_down"):
            raise exceptions.UnsupportedInIndependentMode(
                feature="%s (the root disk from %s GB to %s GB)" % (
                    methods.CAPABILITIES["resize_down"], instance.flavor.root_gb,
                    new_flavor.root_gb),
                option=info.get("limitation") or "the agent does not publish resize_down")
    driver.power_off(instance, timeout, retry_interval)
    disks = []
    for _vbd_ref, vdi_uuid in vm_utils.vm_disks(session, vm_ref):
        if vdi_uuid is None:
            continue
        vdi_ref = vm_utils.vdi_ref(session, vdi_uuid)
        config = session.call("VDI.get_other_config", vdi_ref)
        if marks.vdi_instance(config) == instance.uuid:
            session.call("VDI.set_other_config", vdi_ref, marks.vdi_parked(config))
            disks.append(vdi_uuid)
    session.call("VM.set_other_config", vm_ref,
                 marks.vm_parked(session.call("VM.get_other_config", vm_ref)))
    LOG.info("Instance %s: original VM %s kept for the resize, with %d disks",
             instance.uuid, vm_ref, len(disks))
    return json.dumps({"kept_vm": session.call("VM.get_uuid", vm_ref), "disks": disks})


def finish_migration(driver, instance, network_info, power_on=True):
    """Boot the instance with the new flavor from copies of the kept disks.

    On failure whatever this made goes and the original stays kept, so a
    revert still finds it.
    """
    instance = objects.instance_from(instance)
    flavor = instance.flavor
    session = driver.session
    parsed = netinfo.parse(network_info)
    networks = vifs.networks_for(session, parsed,
                                 driver._conf.xenserver.ovs_integration_bridge)
    kept_ref, kept = kept_original(session, instance.uuid)
    if kept_ref is None:
        raise driver_errors.InstanceNotFound(instance_uuid=instance.uuid)
    made_vdis, vm_ref = [], None
    try:
        disks = []
        for vbd_ref in session.call("VM.get_VBDs", kept_ref):
            vbd = session.call("VBD.get_record", vbd_ref)
            if vbd.get("empty") or vbd["VDI"] in ("", "OpaqueRef:NULL"):
                continue
            copy_ref = session.call("VDI.copy", vbd["VDI"], session.call(
                "VDI.get_SR", vbd["VDI"]))
            made_vdis.append(session.call("VDI.get_uuid", copy_ref))
            config = session.call("VDI.get_other_config", copy_ref)
            if marks.vdi_parked_for(config) == instance.uuid:
                session.call("VDI.set_other_config", copy_ref, marks.vdi_unparked(config))
            disks.append((vbd, copy_ref))
        disks = [_resized_root(driver, instance, vbd, copy_ref, made_vdis)
                 for vbd, copy_ref in disks]
        vm_mode = "xen" if kept.get("PV_bootloader") else "hvm"
        vm_ref = vm_utils.create_vm(session, instance, flavor, vm_mode)
        for vbd, copy_ref in disks:
            vm_utils.create_vbd(session, vm_ref, copy_ref, vbd["userdevice"],
                                bootable=vbd["bootable"], read_only=vbd["mode"] == "RO")
        vifs.plug(session, vm_ref, parsed, networks, running=False)
        if power_on:
            vm_utils.start(session, vm_ref)
    except BaseException:
        LOG.warning("Resize of %s failed; removing its new VM and disks, the original "
                    "stays kept", instance.uuid)
        if vm_ref is not None:
            vm_utils.destroy_vm(session, vm_ref)
        spawn.destroy_disks(driver.agent, session, instance.uuid, made_vdis)
        raise


def _resized_root(driver, instance, vbd, copy_ref, made_vdis):
    """``(vbd, vdi_ref)``: the root copy grown or shrunk to the flavor."""
    if vbd["userdevice"] != vm_utils.USERDEVICE_ROOT:
        return vbd, copy_ref
    session = driver.session
    want = int(instance.flavor.root_gb)
    size_bytes = int(session.call("VDI.get_virtual_size", copy_ref))
    copy_uuid = session.call("VDI.get_uuid", copy_ref)
    if want * GiB > size_bytes:
        driver.agent.auto_configure_disk(vdi_uuid=copy_uuid, new_gb=want,
                                         instance_uuid=instance.uuid)
        return vbd, copy_ref
    if 0 < want * GiB < size_bytes:
        smaller = driver.agent.resize_disk(instance_uuid=instance.uuid, vdi_uuid=copy_uuid,
                                           new_gb=want)
        made_vdis.append(smaller["uuid"])
        driver.agent.destroy_vdis(vdi_uuids=[copy_uuid])
        made_vdis.remove(copy_uuid)
        return vbd, vm_utils.vdi_ref(session, smaller["uuid"])
    return vbd, copy_ref


def confirm_migration(driver, instance):
    """Remove the kept original VM and its disks (none kept: nothing to do)."""
    session = driver.session
    uuid = objects.instance_from(instance).uuid
    kept_ref, _ = kept_original(session, uuid)
    if kept_ref is None:
        LOG.warning("Instance %s has no kept original to remove", uuid)
        return
    kept_disks = [vdi_uuid for _, vdi_uuid in vm_utils.vm_disks(session, kept_ref) if vdi_uuid]
    vm_utils.destroy_vm(session, kept_ref)
    for vdi_uuid in kept_disks:
        vdi_ref = vm_utils.vdi_ref(session, vdi_uuid)
        if marks.vdi_parked_for(session.call("VDI.get_other_config", vdi_ref)) == uuid:
            teardown.destroy_vdi(session, vdi_ref)


def finish_revert_migration(driver, instance, power_on=True):
    """Make the kept original the instance's VM again and start it.

    Nova has destroyed the resized VM and the instance's disks already; one
    still there (a revert after a failed finish) goes first.
    """
    session = driver.session
    uuid = objects.instance_from(instance).uuid
    kept_ref, kept = kept_original(session, uuid)
    if kept_ref is None:
        raise driver_errors.InstanceNotFound(instance_uuid=uuid)
    resized = vm_utils.find_vm(session, uuid)
    if resized is not None:
        spawn.destroy_disks(driver.agent, session, uuid, vm_utils.destroy_vm(session, resized))
    for _, vdi_uuid in vm_utils.vm_disks(session, kept_ref):
        if vdi_uuid is None:
            continue
        vdi_ref = vm_utils.vdi_ref(session, vdi_uuid)
        config = session.call("VDI.get_other_config", vdi_ref)
        if marks.vdi_parked_for(config) == uuid:
            session.call("VDI.set_other_config", vdi_ref, marks.vdi_unparked(config))
    session.call("VM.set_other_config", kept_ref, marks.vm_unparked(kept["other_config"]))
    if power_on and vm_utils.power_state(session, kept_ref) != vm_utils.RUNNING:
        vm_utils.start(session, kept_ref)
