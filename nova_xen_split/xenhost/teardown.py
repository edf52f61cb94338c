"""Unplugging and destroying VBDs and VDIs: one way, for both sides.

The agent unplugs the VBDs it made for its own work; the driver unplugs a
guest's VBDs when it destroys the VM, and sweeps its instance's VDIs when
the agent could not. Both go through here, so both retry the refusals XAPI
calls transient (``DEVICE_DETACH_REJECTED``, ``INTERNAL_ERROR``,
``VM_MISSING_PV_DRIVERS``; about ten times a second apart, as Nova did),
count ``DEVICE_ALREADY_DETACHED`` as done, treat a VBD or VDI already gone
(``HANDLE_INVALID``) as done, and serialise plug and unplug per VM (a
XenServer 6.x bug made concurrent ones fail).
"""

import contextlib
import logging
import threading
import time

from rpc import exceptions

LOG = logging.getLogger(__name__)

UNPLUG_RETRY_CODES = frozenset(
    ["DEVICE_DETACH_REJECTED", "INTERNAL_ERROR", "VM_MISSING_PV_DRIVERS"])
UNPLUG_DONE_CODES = frozenset(["DEVICE_ALREADY_DETACHED"])
UNPLUG_RETRIES = 10
RETRY_INTERVAL_SECONDS = 1.0

_locks_guard = threading.Lock()
_vm_locks = {}


def vm_lock(vm_ref):
    """The lock that serialises VBD plugs and unplugs of one VM."""
    with _locks_guard:
        return _vm_locks.setdefault(vm_ref, threading.Lock())


@contextlib.contextmanager
def _gone_is_done():
    try:
        yield
    except exceptions.XapiFailure as e:
        if e.code != "HANDLE_INVALID":
            raise


def unplug(session, vbd_ref, retries=UNPLUG_RETRIES, retry_interval=RETRY_INTERVAL_SECONDS):
    """Unplug, retrying transient refusals; already detached is success."""
    attempt = 0
    while True:
        try:
            with vm_lock(session.call("VBD.get_VM", vbd_ref)):
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


def destroy_vbd(session, vbd_ref, retries=UNPLUG_RETRIES,
                retry_interval=RETRY_INTERVAL_SECONDS):
    """Unplug (if plugged) and destroy a VBD; a VBD already gone is fine."""
    with _gone_is_done():
        if session.call("VBD.get_currently_attached", vbd_ref):
            unplug(session, vbd_ref, retries, retry_interval)
        session.call("VBD.destroy", vbd_ref)


def destroy_vdi(session, vdi_ref, vbd_filter=None, retries=UNPLUG_RETRIES,
                retry_interval=RETRY_INTERVAL_SECONDS):
    """Destroy the VDI's VBDs (those ``vbd_filter(other_config)`` accepts,
    default all), then the VDI. A VDI already gone is fine; returns whether
    this call destroyed it."""
    with _gone_is_done():
        for vbd_ref in session.call("VDI.get_VBDs", vdi_ref):
            if vbd_filter is not None:
                with _gone_is_done():
                    if not vbd_filter(session.call("VBD.get_other_config", vbd_ref)):
                        continue
            destroy_vbd(session, vbd_ref, retries, retry_interval)
        session.call("VDI.destroy", vdi_ref)
        return True
    return False
