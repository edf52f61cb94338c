"""VDIs the agent makes: marks, idempotency, destruction, crash cleanup.

Every VDI the agent creates carries the VDI marks of
:mod:`nova_xen_split.xenhost.marks`: the instance and purpose (the
idempotency key: a second request for the same instance and purpose returns
the VDI already made), the agent that made it (one agent never cleans up
another's work on a shared SR) and its state (``in-progress`` while it is
filled, ``ready`` once done, so a VDI left half-made by a crash is
recognised and destroyed at startup).

A VHD chain is made by a dom0 plugin, which XAPI keeps running if the agent
dies, and its VDIs appear unmarked: before the call, the agent records the
uuid it chose for the chain's leaf in the SR (a pending-chain mark) and
removes the entry once the leaf is marked or known not to have landed. An
entry a crash left behind is settled by :func:`cleanup`. The driver, giving
up on the instance (its call timed out, the spawn is undone), marks the
entry abandoned: the fetch then destroys the chain it landed instead of
handing it over, and so does the cleanup, ready or not.
"""

import calendar
import contextlib
import logging
import threading
import time
import uuid as uuidlib

from nova_xen_split.xenhost import marks, teardown, xapi
from rpc import dispatch, exceptions

LOG = logging.getLogger(__name__)

# A pending chain that has not landed after this long is not coming: even a
# slow download of a large image ends sooner.
PENDING_CHAIN_STALE_SECONDS = 6 * 3600


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


def owned_ref(session, vdi_uuid, instance_uuid, agent_tag, method, field="vdi_uuid"):
    """The ref of a ready VDI made for ``instance_uuid``; anything else (a VDI
    of another instance or tenant, a volume, one still being made) is
    refused with InvalidRequest naming it, before anything is read or
    changed. Without ``instance_uuid`` (a caller older than interface 1.3)
    the VDI must at least be one this agent made for an instance."""
    ref = ref_by_uuid(session, vdi_uuid, method, field)
    mark = marks.read_vdi(session.call("VDI.get_other_config", ref))
    if instance_uuid is not None:
        owned = mark is not None and mark.instance_uuid == instance_uuid
        whose = "instance %s" % instance_uuid
    else:
        owned = mark is not None and mark.agent == agent_tag
        whose = "an instance by this agent (%s)" % agent_tag
    if not owned or mark.state != marks.READY:
        raise exceptions.InvalidRequest(
            method=method, field=field,
            reason="VDI %s is not a %sdisk made for %s; refusing to touch it" % (
                vdi_uuid, "" if not owned else "finished ", whose))
    return ref


def snapshot_ref(session, vdi_uuid, instance_uuid, method, field="vdi_uuid"):
    """The ref of a snapshot VDI the driver took of ``instance_uuid``'s root
    for upload (``VDI.snapshot``, marked ``snapshot`` for that instance);
    anything else is refused with InvalidRequest before it is read."""
    ref = ref_by_uuid(session, vdi_uuid, method, field)
    record = session.call("VDI.get_record", ref)
    mark = marks.read_vdi(record["other_config"])
    if mark is None or mark.instance_uuid != instance_uuid or \
            mark.purpose != marks.SNAPSHOT or not record["is_a_snapshot"]:
        raise exceptions.InvalidRequest(
            method=method, field=field,
            reason="VDI %s is not a snapshot taken of instance %s for upload; refusing "
            "to read it" % (vdi_uuid, instance_uuid))
    return ref


def default_sr(session):
    """The pool's default SR, where new VDIs go."""
    pool = session.call("pool.get_all")[0]
    sr_ref = session.call("pool.get_default_SR", pool)
    if not sr_ref or sr_ref == "OpaqueRef:NULL":
        raise exceptions.XapiFailure(details=["SR_NOT_FOUND", "the pool has no default SR"])
    return sr_ref


def sr_path(session, sr_ref, required=True):
    """Directory of a file-based SR: its PBD's ``device_config`` path. An SR
    on a device (LVM) has none: None, or (``required``) XapiFailure."""
    for pbd in session.call("SR.get_PBDs", sr_ref):
        path = session.call("PBD.get_device_config", pbd).get("path")
        if path:
            return path
    if not required:
        return None
    sr_uuid = session.call("SR.get_uuid", sr_ref)
    raise exceptions.XapiFailure(
        details=["SR_BACKEND_FAILURE", "SR %s has no PBD with a path" % sr_uuid])


def find_ready(session, instance_uuid, purpose):
    """``(ref, record)`` of the ready VDI made for this key, or None."""
    for ref, rec in session.call("VDI.get_all_records").items():
        mark = marks.read_vdi(rec.get("other_config"))
        if (mark and mark.instance_uuid == instance_uuid and mark.purpose == purpose
                and mark.state == marks.READY):
            return ref, rec
    return None


def tag(session, vdi_ref, instance_uuid, purpose, agent_tag, state, request=None):
    """Put the agent's marks on a VDI it did not create itself (SR.scan)."""
    marks.set_marks(session, "VDI", vdi_ref,
                    marks.vdi_marks(instance_uuid, purpose, agent_tag, state, request))


def check_same_request(found, instance_uuid, purpose, request, method):
    """Refuse to hand out the ready VDI ``found`` (``(ref, record)``) for a
    request other than the one it was made for (a retry is the same
    request; another size, format, image or content is not)."""
    if marks.vdi_request(found[1].get("other_config")) != marks.request_mark(request)[1]:
        raise exceptions.InvalidRequest(
            method=method, field="instance_uuid",
            reason="instance %s already has a %s disk (VDI %s) made by another "
            "request (size, format, image or content differ); destroy it first"
            % (instance_uuid, purpose, found[1]["uuid"]))


def create(session, sr_ref, size_bytes, instance_uuid, purpose, agent_tag, request):
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
        "other_config": marks.vdi_marks(instance_uuid, purpose, agent_tag,
                                        marks.IN_PROGRESS, request),
    }
    return session.call("VDI.create", record)


def mark_ready(session, vdi_ref):
    marks.set_mark(session, "VDI", vdi_ref, *marks.vdi_state_mark(marks.READY))


def refuse_if_caller_gone(what):
    """Raise CallExpired if the caller of the running call has given up:
    its result would be a disk nobody removes (the driver's undo has swept
    the instance already). The caller's error handling destroys the VDI."""
    why = dispatch.caller_gone()
    if why:
        raise exceptions.CallExpired(method="making the %s VDI" % what, why=why,
                                     outcome="the VDI is destroyed")


def given_up(session, instance_uuid):
    """Whether the driver has marked ``instance_uuid`` given up (it swept the
    instance's disks: a spawn undone, a destroy), so nobody takes a disk
    made for it now."""
    pool = session.call("pool.get_all")[0]
    return marks.gave_up_key(instance_uuid) in (
        session.call("pool.get_other_config", pool) or {})


def refuse_if_given_up(session, instance_uuid, what):
    """Raise CallExpired if the driver has given up on ``instance_uuid``."""
    if given_up(session, instance_uuid):
        raise exceptions.CallExpired(
            method="making the %s VDI" % what,
            why="the driver swept instance %s's disks meanwhile" % instance_uuid,
            outcome="the VDI is destroyed")


def still_wanted(session, vdi_ref, what, instance_uuid=None):
    """A check for long work filling a VDI, to call now and then from any
    thread: raises CallExpired once the running call's caller has given up,
    and XapiFailure when XAPI cannot be reached or the VDI is gone (the
    driver's sweep destroyed it), so that the work stops at once instead of
    reading the rest of an image for nothing."""
    gone = dispatch.caller_gone_check()

    def check():
        why = gone() if gone is not None else None
        if why:
            raise exceptions.CallExpired(method="making the %s VDI" % what, why=why,
                                         outcome="the VDI is destroyed")
        session.call("VDI.get_uuid", vdi_ref)
        if instance_uuid is not None:
            refuse_if_given_up(session, instance_uuid, what)

    return check


def result(session, vdi_ref):
    """What the interface returns for a made VDI."""
    rec = session.call("VDI.get_record", vdi_ref)
    return {"uuid": rec["uuid"], "size_bytes": xapi.to_int(rec["virtual_size"])}


def make(ctx, method, instance_uuid, purpose, request, size_bytes, fill, sr_ref=None):
    """The VDI for (instance, purpose): the ready one, or a new one.

    ``request`` is what defines the VDI's content (the call's arguments
    without secrets): a ready VDI made from another request is refused
    (:func:`check_same_request`). A new VDI is created in-progress, handed
    to ``fill(vdi_ref)``, and marked ready only when fill returns; if
    anything fails it is destroyed (with any VBD of ours on it) before the
    error propagates.
    """
    session = ctx.session
    with ctx.busy.key(instance_uuid, purpose):
        found = find_ready(session, instance_uuid, purpose)
        if found:
            check_same_request(found, instance_uuid, purpose, request, method)
            LOG.info("Reusing VDI %s for instance %s %s", found[1]["uuid"],
                     instance_uuid, purpose)
            return found[0]
        # A call that reaches a worker after its caller's undo swept the
        # instance makes nothing.
        refuse_if_given_up(session, instance_uuid, "%s of instance %s"
                           % (purpose, instance_uuid))
        if callable(size_bytes):  # e.g. learnt by opening the image
            size_bytes = size_bytes()
        sr_ref = sr_ref or default_sr(session)
        vdi_ref = create(session, sr_ref, size_bytes, instance_uuid, purpose, ctx.tag,
                         request)
        ctx.busy.add(vdi_ref)
        try:
            fill(vdi_ref)
            # Before marking: a VDI left in-progress by a failure here is
            # destroyed by the agent's settling even if destroying it now
            # fails. A driver giving up from here on finds the VDI in its
            # undo's sweep.
            what = "%s of instance %s" % (purpose, instance_uuid)
            refuse_if_caller_gone(what)
            refuse_if_given_up(session, instance_uuid, what)
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
    if marks.vdi_instance(session.call("VDI.get_other_config", vdi_ref)) is None:
        raise exceptions.InvalidRequest(
            method="destroy_vdis", field=field,
            reason="VDI %s was not made by nova-xen-split for an instance (no instance "
            "mark in its other_config); refusing to destroy it" % vdi_uuid)
    for vbd_ref in session.call("VDI.get_VBDs", vdi_ref):
        vbd = session.call("VBD.get_record", vbd_ref)
        if vbd.get("currently_attached") and \
                marks.vbd_agent(vbd.get("other_config")) != agent_tag:
            raise exceptions.InvalidRequest(
                method="destroy_vdis", field=field,
                reason="VDI %s is plugged into VM %s; unplug it first"
                % (vdi_uuid, session.call("VM.get_uuid", vbd["VM"])))


def destroy(session, vdi_ref, agent_tag):
    """Unplug and destroy this agent's VBDs of the VDI, then destroy it."""
    teardown.destroy_vdi(session, vdi_ref,
                         vbd_filter=lambda other: marks.vbd_agent(other) == agent_tag)


def destroy_quietly(session, vdi_ref, agent_tag):
    """destroy() for error paths: never masks the original error."""
    try:
        destroy(session, vdi_ref, agent_tag)
    except Exception:
        LOG.exception("Could not destroy VDI %s after a failure", vdi_ref)


class PendingChain:
    """A VHD chain a dom0 plugin is landing under ``leaf_uuid``.

    ``maybe_running`` is set when a plugin call's outcome is unknown (the
    connection to XAPI broke): the entry then stays for :func:`cleanup`.
    """

    def __init__(self, leaf_uuid):
        self.leaf_uuid = leaf_uuid
        self.maybe_running = False


@contextlib.contextmanager
def pending_chain(session, sr_ref, instance_uuid, agent_tag, busy):
    """Record a chain's leaf uuid in the SR before the plugin runs; yields a
    :class:`PendingChain`. On a clean exit the leaf is tagged and the entry
    goes; on a failure, a leaf that landed is destroyed first (unless the
    plugin may still be running, when the entry is left for cleanup)."""
    leaf_uuid = str(uuidlib.uuid4())
    key, value = marks.pending_chain_mark(leaf_uuid, agent_tag, instance_uuid, time.time())
    session.call("SR.add_to_other_config", sr_ref, key, value)
    pending = PendingChain(leaf_uuid)
    busy.add(key)
    try:
        yield pending
    except BaseException:
        if not pending.maybe_running:
            _settle_quietly(session, sr_ref, key, leaf_uuid, agent_tag)
        raise
    else:
        _forget_entry_quietly(session, sr_ref, key)
    finally:
        busy.discard(key)


def _settle_quietly(session, sr_ref, key, leaf_uuid, agent_tag):
    try:
        session.call("SR.scan", sr_ref)
        _destroy_unready_leaf(session, leaf_uuid, agent_tag)
        session.call("SR.remove_from_other_config", sr_ref, key)
    except Exception:
        LOG.exception("Could not settle pending VHD chain %s; the agent's cleanup will",
                      leaf_uuid)


def _forget_entry_quietly(session, sr_ref, key):
    try:
        session.call("SR.remove_from_other_config", sr_ref, key)
    except Exception:
        LOG.exception("Could not remove %s from the SR; the agent's cleanup will", key)


def chain_abandoned(session, sr_ref, leaf_uuid):
    """Whether the driver gave up on the chain's instance: its pending entry
    is marked abandoned, or gone (the driver's mark replaces the entry)."""
    key = marks.pending_chain_key(leaf_uuid)
    value = (session.call("SR.get_other_config", sr_ref) or {}).get(key)
    chain = None if value is None else marks.read_pending_chain(key, value)
    return chain is None or chain.abandoned


def _destroy_unready_leaf(session, leaf_uuid, agent_tag, even_ready=False):
    """Destroy the chain's leaf if it landed but never became ready (its
    now childless parents go with XAPI's garbage collection), or whatever
    its state with ``even_ready``. Returns ``None`` (it never landed),
    ``READY`` (kept) or ``"destroyed"``."""
    try:
        leaf_ref = session.call("VDI.get_by_uuid", leaf_uuid)
    except exceptions.XapiFailure as e:
        if e.code in ("UUID_INVALID", "HANDLE_INVALID"):
            return None
        raise
    if not even_ready and \
            marks.vdi_ready(session.call("VDI.get_other_config", leaf_ref)):
        return marks.READY
    LOG.info("Destroying VHD chain %s, landed by a fetch that did not finish", leaf_uuid)
    destroy(session, leaf_ref, agent_tag)
    return "destroyed"


def _cleanup_pending_chains(session, agent_tag, busy, now=None):
    """Settle the pending-chain entries of this agent; returns VDIs destroyed."""
    now = time.time() if now is None else now
    destroyed = 0
    for sr_ref, rec in session.call("SR.get_all_records").items():
        chains = [chain for chain in marks.pending_chains(rec.get("other_config"))
                  if chain.agent == agent_tag and chain.key not in busy]
        if not chains:
            continue
        session.call("SR.scan", sr_ref)
        for chain in chains:
            stale = chain.since is None or now - chain.since > PENDING_CHAIN_STALE_SECONDS
            outcome = _destroy_unready_leaf(session, chain.leaf_uuid, agent_tag,
                                            even_ready=chain.abandoned)
            destroyed += outcome == "destroyed"
            if outcome is not None or stale:
                session.call("SR.remove_from_other_config", sr_ref, chain.key)
            else:
                LOG.info("VHD chain %s of instance %s has not landed yet; its fetch may "
                         "still be running in dom0", chain.leaf_uuid, chain.instance_uuid)
    return destroyed


def settle_given_up(session, agent_tag, busy, keep_seconds, now=None):
    """Destroy this agent's VDIs of instances the driver gave up on (what a
    call finished after its caller left, or made while the agent could not
    tell), skipping refs in ``busy``; remove gave-up marks older than
    ``keep_seconds`` (no call can still be making a disk for them) once no
    VDI of their instance is left. Returns the VDIs destroyed."""
    now = time.time() if now is None else now
    pool = session.call("pool.get_all")[0]
    instances = marks.gave_up_instances(session.call("pool.get_other_config", pool))
    if not instances:
        return 0
    destroyed = 0
    left = set()
    for vdi_ref, rec in session.call("VDI.get_all_records").items():
        mark = marks.read_vdi(rec.get("other_config"))
        if mark is None or mark.instance_uuid not in instances:
            continue
        if mark.agent != agent_tag or vdi_ref in busy:
            left.add(mark.instance_uuid)
            continue
        LOG.info("Destroying VDI %s (%s) of instance %s, which the driver gave up on",
                 rec.get("uuid"), mark.purpose, mark.instance_uuid)
        destroy(session, vdi_ref, agent_tag)
        destroyed += 1
    for instance_uuid, since in instances.items():
        if instance_uuid not in left and (since is None or now - since > keep_seconds):
            session.call("pool.remove_from_other_config", pool,
                         marks.gave_up_key(instance_uuid))
    return destroyed


def xapi_time(value):
    """Seconds since the epoch of an XAPI dateTime (``20261206T02:40:00Z``,
    as text or an ``xmlrpc.client.DateTime``); None for XAPI's "never"
    (the epoch) or anything that is not one."""
    text = str(value or "").strip()
    for layout in ("%Y%m%dT%H:%M:%SZ", "%Y%m%dT%H:%M:%S"):
        try:
            stamp = calendar.timegm(time.strptime(text, layout))
        except ValueError:
            continue
        return stamp if stamp > 0 else None
    return None


def cleanup(session, vm_refs, agent_tag, busy, snapshot_grace=0.0, now=None):
    """Remove what a crash of this agent left behind.

    VBDs tagged by this agent on the given VMs are unplugged and destroyed;
    VDIs this agent left in-progress are destroyed, and so are VHD chains
    its fetches left landed but untagged (its pending-chain entries). Refs
    in ``busy`` belong to operations running now and are left alone.

    A snapshot VDI is the driver's until the agent's ``upload_snapshot``
    takes it (it is marked in-progress for this agent before the call is
    even sent), so one younger than ``snapshot_grace`` seconds by XAPI's
    ``snapshot_time`` is left alone: its upload may still be on its way.
    """
    now = time.time() if now is None else now
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
            if marks.vbd_agent(rec.get("other_config")) != agent_tag:
                continue
            if rec.get("VDI") in busy:
                continue
            LOG.info("Cleaning up VBD %s (device %s) left by a previous run",
                     rec.get("uuid"), rec.get("device"))
            teardown.destroy_vbd(session, vbd_ref)
            unplugged += 1
    for vdi_ref, rec in session.call("VDI.get_all_records").items():
        mark = marks.read_vdi(rec.get("other_config"))
        if (mark is None or mark.state != marks.IN_PROGRESS or mark.agent != agent_tag
                or vdi_ref in busy):
            continue
        if mark.purpose == marks.SNAPSHOT:
            taken = xapi_time(rec.get("snapshot_time"))
            if taken is not None and now - taken < snapshot_grace:
                continue
        LOG.info("Destroying half-made VDI %s (instance %s, %s)", rec.get("uuid"),
                 mark.instance_uuid, mark.purpose)
        destroy(session, vdi_ref, agent_tag)
        destroyed += 1
    destroyed += _cleanup_pending_chains(session, agent_tag, busy)
    return {"unplugged": unplugged, "destroyed": destroyed}
