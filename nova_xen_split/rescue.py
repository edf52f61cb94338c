"""Rescue: boot a rescue image with the instance's root disk as its second disk.

As the old XenAPI driver did: the instance's VM is shut down and kept as it
is; a rescue VM boots from the rescue image, with the instance's root disk
attached as its disk 1, and its VIFs. The rescue VM and the disks made for
it belong to a stand-in instance, :func:`rescue_uuid` (a uuid derived from
the instance's), so the agent keys and marks them apart from the instance's
own disks and nothing that looks for the instance's VM or disks takes them.
Unrescue removes the rescue VM and its disks and starts the instance's VM.
"""

import logging
import uuid as uuidlib

from nova_xen_split import driver_errors, objects, spawn, vm_utils

LOG = logging.getLogger(__name__)

_RESCUE_NAMESPACE = uuidlib.UUID("6a1d7f3e-58b1-4f3a-9d0c-7e2f4b8a9c11")


def rescue_uuid(instance_uuid):
    """The stand-in instance whose VM and disks make an instance's rescue."""
    return str(uuidlib.uuid5(_RESCUE_NAMESPACE, "rescue:%s" % instance_uuid))


def rescue(driver, context, instance, network_info, image_meta, rescue_password):
    """Boot the rescue VM; the instance's VM is shut down first.

    Raises InstanceNotFound, and whatever a spawn raises (its own undo
    leaves nothing of the rescue VM behind; the instance's VM stays halted).
    """
    instance = objects.instance_from(instance)
    session = driver.session
    vm_ref = driver._vm_ref(instance)
    root_ref = None
    for vbd_ref, vdi_uuid in vm_utils.vm_disks(session, vm_ref):
        if vdi_uuid and session.call("VBD.get_userdevice", vbd_ref) == vm_utils.USERDEVICE_ROOT:
            root_ref = vm_utils.vdi_ref(session, vdi_uuid)
    if root_ref is None:
        raise driver_errors.InstanceNotFound(instance_uuid=instance.uuid)
    stand_in = objects.Instance(
        uuid=rescue_uuid(instance.uuid), name="%s-rescue" % instance.name,
        hostname=instance.hostname, display_name=instance.display_name,
        project_id=instance.project_id, user_id=instance.user_id,
        flavor=objects.Flavor(name=instance.flavor.name, memory_mb=instance.flavor.memory_mb,
                              vcpus=instance.flavor.vcpus, root_gb=instance.flavor.root_gb),
        image_ref=instance.image_ref, key_data=instance.key_data, config_drive="")
    driver.power_off(instance)
    job = spawn.Spawn(driver._conf, driver.agent, session)
    plan = job.plan(context, stand_in, image_meta, [], rescue_password, network_info)
    job.extra_disks = [(root_ref, vm_utils.USERDEVICE_SWAP)]
    try:
        job.run(plan)
    except BaseException:
        job.undo(stand_in.uuid)
        raise
    LOG.info("Instance %s rescued as VM %s", instance.uuid, job.vm_ref)


def rescue_vm(session, instance_uuid):
    """The instance's rescue VM, or None."""
    return vm_utils.find_vm(session, rescue_uuid(instance_uuid))


def remove(driver, instance_uuid):
    """Remove the rescue VM and the disks made for it (not the instance's
    root, which it had as disk 1); returns whether there was one."""
    session = driver.session
    vm_ref = rescue_vm(session, instance_uuid)
    if vm_ref is None:
        return False
    stand_in = rescue_uuid(instance_uuid)
    spawn.destroy_disks(driver.agent, session, stand_in, vm_utils.destroy_vm(session, vm_ref))
    return True


def unrescue(driver, instance):
    """Remove the rescue VM and start the instance's VM again."""
    instance = objects.instance_from(instance)
    remove(driver, instance.uuid)
    vm_ref = driver._vm_ref(instance)
    if vm_utils.power_state(driver.session, vm_ref) != vm_utils.RUNNING:
        driver.session.call("VM.start", vm_ref, False, False)
