"""Snapshot of an instance into an image: XAPI takes it, the agent uploads it.

Nova makes the image record and calls the driver's ``snapshot`` with its id
and an ``update_task_state`` callback. The driver takes ``VDI.snapshot`` of
the instance's root through XAPI (``image_pending_upload``), marks the new
VDI as the instance's snapshot (replacing the root's marks that
``VDI.snapshot`` copies), and has the agent upload it (``image_uploading``)
as a VHD tarball. The snapshot VDI is destroyed afterwards whatever
happened; on a failed upload the agent has already deleted the image.
"""

import logging

from nova_xen_split import driver_errors, vm_utils
from nova_xen_split.xenhost import marks, teardown
from rpc import exceptions, methods

LOG = logging.getLogger(__name__)

# Nova's task states (nova.compute.task_states) that a snapshot moves through.
IMAGE_PENDING_UPLOAD = "image_pending_upload"
IMAGE_UPLOADING = "image_uploading"
# The interface version that added upload_snapshot.
UPLOAD_VERSION = "1.5"


def root_vdi(session, vm_ref, instance_uuid):
    """(ref, uuid) of the VM's root VDI (userdevice 0)."""
    for vbd_ref, vdi_uuid in vm_utils.vm_disks(session, vm_ref):
        if vdi_uuid and session.call("VBD.get_userdevice", vbd_ref) == \
                vm_utils.USERDEVICE_ROOT:
            return session.call("VDI.get_by_uuid", vdi_uuid), vdi_uuid
    raise driver_errors.InstanceNotFound(instance_uuid="%s (no root disk)" % instance_uuid)


def snapshot(conf, agent, session, instance, vm_ref, image_id, auth_token,
             update_task_state):
    """Take, upload and drop a snapshot of the instance's root disk.

    The request is checked (image id, the agent's interface) before XAPI is
    asked for anything. Returns the agent's answer (``image_id``,
    ``size_bytes``); raises what the agent raised (ImageUploadFailed,
    XapiFailure), or XapiFailure from ``VDI.snapshot``.
    """
    root_ref, root_uuid = root_vdi(session, vm_ref, instance.uuid)
    methods.validate("upload_snapshot", dict(
        instance_uuid=instance.uuid, vdi_uuid=root_uuid, image_id=image_id,
        auth_token=auth_token))
    if not agent.can_send_version(UPLOAD_VERSION):
        raise exceptions.VersionTooOld(host=conf.host, method="upload_snapshot",
                                       have=agent.agent_version, need=UPLOAD_VERSION)
    update_task_state(task_state=IMAGE_PENDING_UPLOAD)
    snap_ref = session.call("VDI.snapshot", root_ref, {})
    try:
        session.call("VDI.set_other_config", snap_ref,
                     marks.snapshot_marks(instance.uuid, conf.host))
        snap_uuid = session.call("VDI.get_uuid", snap_ref)
        LOG.info("Instance %s: snapshot %s of root %s taken for image %s",
                 instance.uuid, snap_uuid, root_uuid, image_id)
        update_task_state(task_state=IMAGE_UPLOADING, expected_state=IMAGE_PENDING_UPLOAD)
        return agent.upload_snapshot(instance_uuid=instance.uuid, vdi_uuid=snap_uuid,
                                     image_id=image_id, auth_token=auth_token)
    finally:
        try:
            teardown.destroy_vdi(session, snap_ref)
        except exceptions.XapiFailure:
            # The upload's outcome is what counts; the driver's sweep at
            # destroy and the agent's crash cleanup find the marked VDI.
            LOG.exception("Instance %s: could not destroy snapshot VDI %s",
                          instance.uuid, snap_ref)
