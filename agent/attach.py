"""Plug a VDI into a VM for the length of a ``with`` block.

The shape of Nova's ``vdi_attached``: ``VBD.create`` (userdevice
``autodetect``, type Disk, unpluggable) → ``VBD.plug`` → ``VBD.get_device`` →
wait for the block device → work → ``VBD.unplug`` → ``VBD.destroy``, the last
two always, in a ``finally``. Unplug is retried while XAPI calls the refusal
transient; ``DEVICE_ALREADY_DETACHED`` counts as done. Plug and unplug are
serialised per VM (a XenServer 6.x bug made concurrent ones fail).

Every VBD made here carries ``other_config nxs-agent-vbd = <host>`` so the
startup cleanup can find the ones a crash left plugged.
"""

import contextlib
import logging
import threading
import time

from rpc import exceptions

LOG = logging.getLogger(__name__)

VBD_TAG = "nxs-agent-vbd"
UNPLUG_RETRY_CODES = frozenset(
    ["DEVICE_DETACH_REJECTED", "INTERNAL_ERROR", "VM_MISSING_PV_DRIVERS"])
UNPLUG_DONE_CODES = frozenset(["DEVICE_ALREADY_DETACHED"])

_locks_guard = threading.Lock()
_vm_locks = {}


def _vm_lock(vm_ref):
    with _locks_guard:
        return _vm_locks.setdefault(vm_ref, threading.Lock())


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
        "other_config": {VBD_TAG: agent_tag},
        "qos_algorithm_type": "",
        "qos_algorithm_params": {},
    }
    vbd_ref = session.call("VBD.create", record)
    if busy is not None:
        busy.add(vbd_ref)
    try:
        with _vm_lock(vm_ref):
            session.call("VBD.plug", vbd_ref)
        device = session.call("VBD.get_device", vbd_ref)
        LOG.debug("VDI %s plugged as %s", vdi_ref, device)
        path = wait_for_device(device)
        yield Attachment(vbd_ref, device, path)
    except BaseException:
        try:
            unplug_and_destroy(session, vbd_ref, unplug_retries, retry_interval)
        except Exception:
            # Keep the block's error; the startup or on-demand cleanup finds
            # the tagged VBD later.
            LOG.exception("Could not unplug/destroy VBD %s", vbd_ref)
        raise
    else:
        unplug_and_destroy(session, vbd_ref, unplug_retries, retry_interval)
    finally:
        if busy is not None:
            busy.discard(vbd_ref)


def unplug(session, vbd_ref, retries=10, retry_interval=1.0):
    """Unplug, retrying transient refusals; already detached is success."""
    attempt = 0
    while True:
        try:
            with _vm_lock(session.call("VBD.get_VM", vbd_ref)):
                session.call("VBD.unplug", vbd_ref)
            return
        except exceptions.XapiFailure as e:
            if e.code in UNPLUG_DONE_CODES:
                return
            if e.code not in UNPLUG_RETRY_CODES or attempt >= retries:
                raise
            attempt += 1
            LOG.info("Unplug of VBD %s refused (%s); retry %d of %d",
                     vbd_ref, e.code, attempt, retries)
            time.sleep(retry_interval)


def unplug_and_destroy(session, vbd_ref, retries=10, retry_interval=1.0):
    """Unplug (if plugged) and destroy a VBD; a VBD already gone is fine."""
    try:
        plugged = session.call("VBD.get_currently_attached", vbd_ref)
    except exceptions.XapiFailure as e:
        if e.code == "HANDLE_INVALID":
            return
        raise
    if plugged:
        unplug(session, vbd_ref, retries, retry_interval)
    try:
        session.call("VBD.destroy", vbd_ref)
    except exceptions.XapiFailure as e:
        if e.code != "HANDLE_INVALID":
            raise
