"""Plug a VDI into a VM for the length of a ``with`` block.

The shape of Nova's ``vdi_attached``: ``VBD.create`` (userdevice
``autodetect``, type Disk, unpluggable) → ``VBD.plug`` → ``VBD.get_device`` →
wait for the block device → work → ``VBD.unplug`` → ``VBD.destroy``, the last
two always, in a ``finally``. Unplug is retried while XAPI calls the refusal
transient; ``DEVICE_ALREADY_DETACHED`` counts as done. Plug and unplug are
serialised per VM (a XenServer 6.x bug made concurrent ones fail).

Every VBD made here carries the agent's VBD mark
(:func:`nova_xen_split.xenhost.marks.vbd_marks`) so the startup cleanup can
find the ones a crash left plugged. Unplugging is
:mod:`nova_xen_split.xenhost.teardown`'s, which the driver uses too.
"""

import contextlib
import logging

from nova_xen_split.xenhost import marks, teardown

LOG = logging.getLogger(__name__)


class Attachment:
    """A plugged VBD: ``device`` (e.g. ``xvdb``) and the caller's ``path``."""

    def __init__(self, vbd_ref, device, path):
        self.vbd_ref = vbd_ref
        self.device = device
        self.path = path


@contextlib.contextmanager
def attached(session, vm_ref, vdi_ref, agent_tag, wait_for_device,
             read_only=False, busy=None, unplug_retries=10, retry_interval=1.0):
    """Plug ``vdi_ref`` into ``vm_ref``; yield an :class:`Attachment`.

    ``wait_for_device(device)`` returns the device's path once it exists, or
    raises. Whatever happens inside, the VBD is unplugged and destroyed.
    """
    record = {
        "VM": vm_ref,
        "VDI": vdi_ref,
        "userdevice": "autodetect",
        "bootable": False,
        "mode": "RO" if read_only else "RW",
        "type": "Disk",
        "unpluggable": True,
        "empty": False,
        "other_config": marks.vbd_marks(agent_tag),
        "qos_algorithm_type": "",
        "qos_algorithm_params": {},
    }
    vbd_ref = session.call("VBD.create", record)
    if busy is not None:
        busy.add(vbd_ref)
    try:
        with teardown.vm_lock(vm_ref):
            session.call("VBD.plug", vbd_ref)
        device = session.call("VBD.get_device", vbd_ref)
        LOG.debug("VDI %s plugged as %s", vdi_ref, device)
        path = wait_for_device(device)
        yield Attachment(vbd_ref, device, path)
    except BaseException:
        try:
            teardown.destroy_vbd(session, vbd_ref, unplug_retries, retry_interval)
        except Exception:
            # Keep the block's error; the startup or on-demand cleanup finds
            # the tagged VBD later.
            LOG.exception("Could not unplug/destroy VBD %s", vbd_ref)
        raise
    else:
        teardown.destroy_vbd(session, vbd_ref, unplug_retries, retry_interval)
    finally:
        if busy is not None:
            busy.discard(vbd_ref)
