"""VDIs the agent makes: tags, idempotency, destruction, crash cleanup.

Every VDI the agent creates carries in ``other_config``:

* ``nxs-instance-uuid`` and ``nxs-purpose`` — the idempotency key: a second
  request for the same instance and purpose returns the VDI already made;
* ``nxs-state`` — ``in-progress`` while it is filled, ``ready`` once done, so
  a VDI left half-made by a crash is recognised and destroyed at startup;
* ``nxs-agent`` — the ``[DEFAULT] host`` of the agent that made it, so one
  agent never cleans up another's work on a shared SR.
"""

import contextlib
import logging
import threading

from agent import attach
from nova_xen_split import xapi
from rpc import exceptions

LOG = logging.getLogger(__name__)

INSTANCE_KEY = "nxs-instance-uuid"
PURPOSE_KEY = "nxs-purpose"
STATE_KEY = "nxs-state"
AGENT_KEY = "nxs-agent"
IN_PROGRESS = "in-progress"
READY = "ready"


class BusySet:
    """Refs an operation of this process is using, and per-key locks.

    The key locks serialise two identical requests (a driver retrying while
    the first attempt still runs), so the second finds the first's VDI.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._refs = set()
        self._key_locks = {}

    def add(self, ref):
        with self._lock:
            self._refs.add(ref)

    def discard(self, ref):
        with self._lock:
            self._refs.discard(ref)

    def __contains__(self, ref):
        with self._lock:
            return ref in self._refs

    @contextlib.contextmanager
    def key(self, instance_uuid, purpose):
        with self._lock:
            lock = self._key_locks.setdefault((instance_uuid, purpose), threading.Lock())
        with lock:
            yield


def ref_by_uuid(session, vdi_uuid, method, field="vdi_uuid"):
    """The VDI's ref; an unknown uuid is the caller's mistake (InvalidRequest)."""
    try:
        return session.call("VDI.get_by_uuid", vdi_uuid)
    except exceptions.XapiFailure as e:
        if e.code in ("UUID_INVALID", "HANDLE_INVALID"):
            raise exceptions.InvalidRequest(
                method=method, field=field,
                reason="no VDI with uuid %s" % vdi_uuid) from None
        raise


def default_sr(session):
    """The pool's default SR, where new VDIs go."""
    pool = session.call("pool.get_all")[0]
    sr_ref = session.call("pool.get_default_SR", pool)
    if not sr_ref or sr_ref == "OpaqueRef:NULL":
        raise exceptions.XapiFailure(details=["SR_NOT_FOUND", "the pool has no default SR"])
    return sr_ref


def sr_path(session, sr_ref):
    """Directory of a file-based SR: its PBD's ``device_config`` path."""
    for pbd in session.call("SR.get_PBDs", sr_ref):
        path = session.call("PBD.get_device_config", pbd).get("path")
        if path:
            return path
    sr_uuid = session.call("SR.get_uuid", sr_ref)
    raise exceptions.XapiFailure(
        details=["SR_BACKEND_FAILURE", "SR %s has no PBD with a path" % sr_uuid])


def find_ready(session, instance_uuid, purpose):
    """``(ref, record)`` of the ready VDI made for this key, or None."""
    for ref, rec in session.call("VDI.get_all_records").items():
        other = rec.get("other_config") or {}
        if (other.get(INSTANCE_KEY) == instance_uuid
                and other.get(PURPOSE_KEY) == purpose
                and other.get(STATE_KEY) == READY):
            return ref, rec
    return None


def tag(session, vdi_ref, instance_uuid, purpose, agent_tag, state):
    """Put the agent's keys on a VDI it did not create itself (SR.scan)."""
    for key, value in ((INSTANCE_KEY, instance_uuid), (PURPOSE_KEY, purpose),
                       (AGENT_KEY, agent_tag), (STATE_KEY, state)):
        set_other_config(session, vdi_ref, key, value)


def set_other_config(session, vdi_ref, key, value):
    """Set one ``other_config`` key of a VDI (replacing any old value)."""
    try:
        session.call("VDI.remove_from_other_config", vdi_ref, key)
    except exceptions.XapiFailure:
        LOG.debug("VDI had no %s yet", key)
    session.call("VDI.add_to_other_config", vdi_ref, key, value)


def create(session, sr_ref, size_bytes, instance_uuid, purpose, agent_tag):
    """A new VDI in state in-progress; returns its ref."""
    record = {
        "name_label": "%s %s" % (instance_uuid, purpose),
        "name_description": "made by nova-xen-split-agent",
        "SR": sr_ref,
        "virtual_size": str(int(size_bytes)),
        "type": "user",
        "sharable": False,
        "read_only": False,
        "xenstore_data": {},
        "sm_config": {},
        "tags": [],
        "other_config": {
            INSTANCE_KEY: instance_uuid,
            PURPOSE_KEY: purpose,
            AGENT_KEY: agent_tag,
            STATE_KEY: IN_PROGRESS,
        },
    }
    return session.call("VDI.create", record)


def mark_ready(session, vdi_ref):
    set_other_config(session, vdi_ref, STATE_KEY, READY)


def result(session, vdi_ref):
    """What the interface returns for a made VDI."""
    rec = session.call("VDI.get_record", vdi_ref)
    return {"uuid": rec["uuid"], "size_bytes": xapi.to_int(rec["virtual_size"])}


def make(ctx, instance_uuid, purpose, size_bytes, fill, sr_ref=None):
    """The VDI for (instance, purpose): the ready one, or a new one.

    A new VDI is created in-progress, handed to ``fill(vdi_ref)``, and marked
    ready only when fill returns; if anything fails it is destroyed (with
    any VBD of ours on it) before the error propagates.
    """
    session = ctx.session
    with ctx.busy.key(instance_uuid, purpose):
        found = find_ready(session, instance_uuid, purpose)
        if found:
            LOG.info("Reusing VDI %s for instance %s %s", found[1]["uuid"],
                     instance_uuid, purpose)
            return found[0]
        if callable(size_bytes):  # e.g. learnt by opening the image
            size_bytes = size_bytes()
        sr_ref = sr_ref or default_sr(session)
        vdi_ref = create(session, sr_ref, size_bytes, instance_uuid, purpose, ctx.tag)
        ctx.busy.add(vdi_ref)
        try:
            fill(vdi_ref)
            mark_ready(session, vdi_ref)
        except BaseException:
            with contextlib.suppress(Exception):
                LOG.warning("Making the %s VDI of instance %s failed; destroying it",
                            purpose, instance_uuid)
            destroy_quietly(session, vdi_ref, ctx.tag)
            raise
        finally:
            ctx.busy.discard(vdi_ref)
        return vdi_ref


def check_destroyable(session, vdi_ref, vdi_uuid, agent_tag, field):
    """Refuse (InvalidRequest) a VDI that destroy() must not touch: one that
    no agent made for an instance, or one plugged through a VBD that is not
    this agent's (XAPI would refuse it half-way through a batch)."""
    other = session.call("VDI.get_other_config", vdi_ref) or {}
    if not other.get(INSTANCE_KEY):
        raise exceptions.InvalidRequest(
            method="destroy_vdis", field=field,
            reason="VDI %s was not made by nova-xen-split for an instance (no %s in "
            "its other_config); refusing to destroy it" % (vdi_uuid, INSTANCE_KEY))
    for vbd_ref in session.call("VDI.get_VBDs", vdi_ref):
        vbd = session.call("VBD.get_record", vbd_ref)
        if vbd.get("currently_attached") and \
                (vbd.get("other_config") or {}).get(attach.VBD_TAG) != agent_tag:
            raise exceptions.InvalidRequest(
                method="destroy_vdis", field=field,
                reason="VDI %s is plugged into VM %s; unplug it first"
                % (vdi_uuid, session.call("VM.get_uuid", vbd["VM"])))


def destroy(session, vdi_ref, agent_tag):
    """Unplug and destroy this agent's VBDs of the VDI, then destroy it."""
    for vbd_ref in session.call("VDI.get_VBDs", vdi_ref):
        other = session.call("VBD.get_other_config", vbd_ref)
        if other.get(attach.VBD_TAG) == agent_tag:
            attach.unplug_and_destroy(session, vbd_ref)
    session.call("VDI.destroy", vdi_ref)


def destroy_quietly(session, vdi_ref, agent_tag):
    """destroy() for error paths: never masks the original error."""
    try:
        destroy(session, vdi_ref, agent_tag)
    except Exception:
        LOG.exception("Could not destroy VDI %s after a failure", vdi_ref)


def cleanup(session, vm_refs, agent_tag, busy):
    """Remove what a crash of this agent left behind.

    VBDs tagged by this agent on the given VMs are unplugged and destroyed;
    VDIs this agent left in-progress are destroyed. Refs in ``busy`` belong
    to operations running now and are left alone.
    """
    unplugged = destroyed = 0
    for vm_ref in vm_refs:
        for vbd_ref in session.call("VM.get_VBDs", vm_ref):
            if vbd_ref in busy:
                continue
            try:
                rec = session.call("VBD.get_record", vbd_ref)
            except exceptions.XapiFailure as e:
                if e.code == "HANDLE_INVALID":  # gone meanwhile
                    continue
                raise
            if (rec.get("other_config") or {}).get(attach.VBD_TAG) != agent_tag:
                continue
            if rec.get("VDI") in busy:
                continue
            LOG.info("Cleaning up VBD %s (device %s) left by a previous run",
                     rec.get("uuid"), rec.get("device"))
            attach.unplug_and_destroy(session, vbd_ref)
            unplugged += 1
    for vdi_ref, rec in session.call("VDI.get_all_records").items():
        other = rec.get("other_config") or {}
        if (other.get(STATE_KEY) != IN_PROGRESS or other.get(AGENT_KEY) != agent_tag
                or vdi_ref in busy):
            continue
        LOG.info("Destroying half-made VDI %s (instance %s, %s)", rec.get("uuid"),
                 other.get(INSTANCE_KEY), other.get(PURPOSE_KEY))
        destroy(session, vdi_ref, agent_tag)
        destroyed += 1
    return {"unplugged": unplugged, "destroyed": destroyed}
