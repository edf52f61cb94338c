"""Image cache VDIs: one per image in the SR, cloned for each instance's root.

The old XenAPI driver's ``cache_images``: the first fetch of an image fills
a cache VDI with it; every fetch then gives its instance a ``VDI.clone`` of
that VDI (on XenServer's VHD SRs a copy-on-write child: no data moves), which
the driver's ``auto_configure_disk`` grows to the flavor's size.

What keeps it safe (marks in :mod:`nova_xen_split.xenhost.marks`):

* A cache VDI is created ``filling`` (with this agent and the time) and
  marked ``ready`` only once it holds the whole image, checked; only a ready
  one whose recorded checksum is the image record's current one is cloned.
  A crash leaves a ``filling`` VDI, which no fetch uses and the agent's
  startup cleanup destroys (another agent's, once stale, goes with
  ``manage_image_cache``).
* One fill per image: within this agent a lock per image (the other
  fetches wait for it, up to ``[agent] image_cache_wait_timeout``); across
  agents on one SR an ``nxs-image-filling-<image>`` entry in the SR's
  ``other_config``, which XAPI lets only one caller add. A fetch that waited
  too long downloads its image for its instance alone.
* The image record is read with the caller's token before a cache VDI is
  cloned: a caller that may not read the image gets no clone of it.
"""

import contextlib
import logging
import threading
import time

from agent import images, vdis
from agent.backends import base
from nova_xen_split.xenhost import marks
from rpc import exceptions

LOG = logging.getLogger(__name__)

# A filling mark older than this belongs to a fill that is not coming back
# (a dead agent): even a slow download of a large image ends sooner.
FILLING_STALE_SECONDS = 6 * 3600
# How often a fetch looks again while another agent fills its image.
POLL_SECONDS = 0.5
# Image formats that can be cached: whole disks. Kernels, ramdisks and ami
# images (which get a partition written around them) are never cached.
CACHEABLE_FORMATS = ("raw", "vhd")


def wanted(conf, record, disk_format, kernel_id=None, ramdisk_id=None):
    """Whether ``[xenserver] cache_images`` asks to cache this image."""
    if disk_format not in CACHEABLE_FORMATS or kernel_id or ramdisk_id:
        return False
    policy = conf.xenserver.cache_images
    if policy == "all":
        return True
    if policy == "some":
        # Nova's rule: the image property, as text or a JSON boolean.
        return str(record.get("cache_in_nova", "")).strip().lower() in ("true", "1", "yes")
    return False


def sr_cannot_hold(session, disk_format):
    """Why the default SR cannot hold a cache VDI of this format, or None.

    A VHD image's cache VDI is the chain the dom0 plugin lands in the SR's
    directory; an SR without one (LVM) takes a VHD only as a whole import
    for one instance, so such images are not cached there.
    """
    if disk_format == "vhd" and vdis.sr_path(session, vdis.default_sr(session),
                                             required=False) is None:
        return "a VHD image is not cached on an SR without a directory (LVM)"
    return None


def checksum_of(record, image_id):
    """The record's checksum as the cache marks spell it."""
    checksum = images.record_checksum(record, image_id)
    if checksum is None:
        return marks.NO_CHECKSUM
    return marks.checksum_text(checksum.algorithm, checksum.hexdigest)


class ImageCache:
    """The image cache of one agent: per-image locks, find, fill, clone, sweep."""

    def __init__(self, ctx):
        self.ctx = ctx
        self._lock = threading.Lock()
        self._image_locks = {}

    @property
    def conf(self):
        return self.ctx.conf

    def _image_lock(self, image_id):
        with self._lock:
            return self._image_locks.setdefault(image_id, threading.Lock())

    # -- fetch --------------------------------------------------------------

    def fetch_root(self, backend, instance_uuid, image_id, disk_format, auth_token,
                   kernel_id=None, ramdisk_id=None):
        """The instance's root as a clone of the image's cache VDI (filled
        first if there is none); ``vdis.result`` of it, or None when the image
        is not to be cached here or the wait for another fill ran out (the
        caller then fetches the image for the instance alone)."""
        if disk_format not in CACHEABLE_FORMATS or kernel_id or ramdisk_id \
                or self.conf.xenserver.cache_images == "none":
            return None
        try:
            record = images.image_record(self.conf, image_id, auth_token)
        except exceptions.ImageFetchFailed as e:
            LOG.warning("Image %s: no record (%s); fetching it without the image cache",
                        image_id, e)
            return None
        if not wanted(self.conf, record, disk_format):
            return None
        session = self.ctx.session
        why_not = sr_cannot_hold(session, disk_format)
        if why_not:
            LOG.info("Image %s: %s; fetching it for instance %s alone", image_id, why_not,
                     instance_uuid)
            return None
        checksum = checksum_of(record, image_id)
        request = {"image_id": image_id, "disk_format": disk_format}
        with self.ctx.busy.key(instance_uuid, marks.ROOT):
            found = vdis.find_ready(session, instance_uuid, marks.ROOT)
            if found:
                vdis.check_same_request(found, instance_uuid, marks.ROOT, request,
                                        "fetch_image")
                return vdis.result(session, found[0])
            # A cache VDI may go (another agent's manage_image_cache) between
            # finding and cloning it: then look once more.
            for attempt in (1, 2):
                lock = self._image_lock(image_id)
                if not lock.acquire(timeout=self.conf.agent.image_cache_wait_timeout):
                    LOG.warning("Image %s: its cache VDI is still being filled after %ss "
                                "([agent] image_cache_wait_timeout); fetching it for "
                                "instance %s alone", image_id,
                                self.conf.agent.image_cache_wait_timeout, instance_uuid)
                    return None
                try:
                    cache_ref = self._ready_or_filled(
                        backend, instance_uuid, image_id, disk_format, auth_token, checksum)
                    if cache_ref is None:
                        return None
                    try:
                        return self._clone(cache_ref, instance_uuid, request)
                    except exceptions.XapiFailure as e:
                        if e.code != "HANDLE_INVALID" or attempt == 2:
                            raise
                        LOG.info("Image %s: its cache VDI went while being cloned; "
                                 "looking again", image_id)
                finally:
                    lock.release()
        return None

    def cache(self, backend, image_id, auth_token):
        """Nova's ``cache_image``: make sure the image has a ready cache VDI.

        Returns ``{"uuid": ..., "fetched": bool}`` (``fetched``: this call
        filled it), or ``{"uuid": None, "fetched": False, "reason": ...}`` when
        the image is not to be cached. Raises ImageFetchFailed.
        """
        record = images.image_record(self.conf, image_id, auth_token)
        disk_format = record.get("disk_format")
        if not wanted(self.conf, record, disk_format):
            return {"uuid": None, "fetched": False,
                    "reason": "not cached here ([xenserver] cache_images = %s, "
                    "disk_format %s)" % (self.conf.xenserver.cache_images, disk_format)}
        why_not = sr_cannot_hold(self.ctx.session, disk_format)
        if why_not:
            return {"uuid": None, "fetched": False, "reason": why_not}
        checksum = checksum_of(record, image_id)
        lock = self._image_lock(image_id)
        if not lock.acquire(timeout=self.conf.agent.image_cache_wait_timeout):
            raise exceptions.ImageFetchFailed(
                image_id=image_id, reason="its cache VDI is still being filled after "
                "[agent] image_cache_wait_timeout")
        try:
            found = self._find_ready(image_id, checksum)
            if found is not None:
                return {"uuid": self.ctx.session.call("VDI.get_uuid", found),
                        "fetched": False}
            ref = self._ready_or_filled(backend, None, image_id, disk_format, auth_token,
                                        checksum)
        finally:
            lock.release()
        if ref is None:
            raise exceptions.ImageFetchFailed(
                image_id=image_id, reason="another agent is still filling its cache VDI "
                "after [agent] image_cache_wait_timeout")
        return {"uuid": self.ctx.session.call("VDI.get_uuid", ref), "fetched": True}

    def _find_ready(self, image_id, checksum):
        """The ref of a ready cache VDI of the image filled against
        ``checksum`` in the default SR (the oldest, so all agents pick the
        same), or None."""
        session = self.ctx.session
        sr_ref = vdis.default_sr(session)
        best = None
        for ref, rec in session.call("VDI.get_all_records").items():
            mark = marks.read_cache(rec.get("other_config"))
            if mark is None or mark.image_id != image_id or mark.state != marks.READY \
                    or rec.get("SR") != sr_ref:
                continue
            if mark.checksum != checksum:
                LOG.info("Image %s: cache VDI %s was filled against checksum %s, the "
                         "record now says %s; not using it", image_id, rec.get("uuid"),
                         mark.checksum, checksum)
                continue
            key = (mark.since or 0, rec.get("uuid"))
            if best is None or key < best[0]:
                best = (key, ref)
        return None if best is None else best[1]

    def _ready_or_filled(self, backend, instance_uuid, image_id, disk_format, auth_token,
                         checksum):
        """A ready cache VDI: found, filled by this call, or filled by another
        agent while this one waited; None when the wait ran out. Called with
        the image's lock held."""
        session = self.ctx.session
        deadline = time.monotonic() + self.conf.agent.image_cache_wait_timeout
        waited_for = None
        while True:
            found = self._find_ready(image_id, checksum)
            if found is not None:
                return found
            sr_ref = vdis.default_sr(session)
            holder = self._claim(sr_ref, image_id)
            if holder is None:
                try:
                    return self._fill(backend, sr_ref, instance_uuid, image_id, disk_format,
                                      auth_token, checksum)
                finally:
                    self._release(sr_ref, image_id)
            if waited_for != holder.agent:
                LOG.info("Image %s: agent %s is filling its cache VDI; waiting",
                         image_id, holder.agent)
                waited_for = holder.agent
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL_SECONDS)

    def _claim(self, sr_ref, image_id):
        """Add this agent's filling entry for the image to the SR. Returns
        None when added, else the :class:`marks.Filling` of the agent that
        holds it. A stale entry, or one of this agent's that no fill of this
        process holds (its lock is held by the caller), is taken over."""
        session = self.ctx.session
        key, value = marks.filling_mark(image_id, self.ctx.tag, time.time())
        for _attempt in (1, 2):
            try:
                session.call("SR.add_to_other_config", sr_ref, key, value)
                self.ctx.busy.add(key)
                return None
            except exceptions.XapiFailure as e:
                if e.code != "MAP_DUPLICATE_KEY":
                    raise
            current = (session.call("SR.get_other_config", sr_ref) or {}).get(key)
            if current is None:
                continue  # released meanwhile
            holder = marks.read_filling(key, current) or marks.Filling(key, image_id, "?", None)
            if holder.agent != self.ctx.tag and not self._stale(holder.since):
                return holder
            LOG.info("Image %s: taking over the filling entry of agent %s (since %s), "
                     "which is not filling it any more", image_id, holder.agent,
                     holder.since)
            with contextlib.suppress(exceptions.XapiFailure):
                session.call("SR.remove_from_other_config", sr_ref, key)
        return marks.Filling(key, image_id, "?", None)

    def _release(self, sr_ref, image_id):
        key = marks.filling_key(image_id)
        try:
            self.ctx.session.call("SR.remove_from_other_config", sr_ref, key)
        except Exception:  # noqa: BLE001 -- the startup cleanup removes it
            LOG.exception("Could not remove %s from the SR", key)
        finally:
            self.ctx.busy.discard(key)

    @staticmethod
    def _stale(since, now=None):
        now = time.time() if now is None else now
        return since is None or now - since > FILLING_STALE_SECONDS

    def _fill(self, backend, sr_ref, instance_uuid, image_id, disk_format, auth_token,
              checksum):
        """Fill a new cache VDI through the backend; its ref, marked ready.
        Whatever fails, the VDI is destroyed before the error goes on."""
        session = self.ctx.session
        since = time.time()
        made = []

        def new_vdi(size_bytes):
            record = {
                "name_label": "image %s" % image_id,
                "name_description": "image cache of nova-xen-split",
                "SR": sr_ref, "virtual_size": str(int(size_bytes)), "type": "user",
                "sharable": False, "read_only": False, "xenstore_data": {},
                "sm_config": {}, "tags": [],
                "other_config": dict([
                    marks.cache_mark(marks.FILLING, image_id, self.ctx.tag, since),
                    marks.cache_checksum_mark(checksum)]),
            }
            ref = session.call("VDI.create", record)
            self.ctx.busy.add(ref)
            made.append(ref)
            return ref

        def finish(ref, image_bytes=None):
            """Mark a filled VDI ready (the state last: until then no fetch takes it)."""
            if ref not in made:  # landed by a dom0 plugin, unmarked
                self.ctx.busy.add(ref)
                made.append(ref)
            marks.set_mark(session, "VDI", ref, *marks.cache_checksum_mark(checksum))
            if image_bytes is not None:
                marks.set_mark(session, "VDI", ref, *marks.image_bytes_mark(image_bytes))
            marks.set_mark(session, "VDI", ref, *marks.cache_used_mark(time.time()))
            session.call("VDI.set_name_label", ref, "image %s" % image_id)
            base.checkpoint("cache filled")
            marks.set_mark(session, "VDI", ref,
                           *marks.cache_mark(marks.READY, image_id, self.ctx.tag, time.time()))

        LOG.info("Image %s: filling its cache VDI (%s)", image_id, disk_format)
        started = time.monotonic()
        try:
            ref = backend.fill_image_cache(instance_uuid, image_id, disk_format, auth_token,
                                           new_vdi, finish)
        except BaseException:
            for ref in made:
                vdis.destroy_quietly(session, ref, self.ctx.tag)
            raise
        finally:
            for ref in made:
                self.ctx.busy.discard(ref)
        LOG.info("Image %s: cache VDI %s ready in %.1fs", image_id,
                 session.call("VDI.get_uuid", ref), time.monotonic() - started)
        return ref

    def _clone(self, cache_ref, instance_uuid, request):
        """The instance's ready root: a clone of the cache VDI, re-marked."""
        session = self.ctx.session
        cache_uuid = session.call("VDI.get_uuid", cache_ref)
        marks.set_mark(session, "VDI", cache_ref, *marks.cache_used_mark(time.time()))
        clone_ref = session.call("VDI.clone", cache_ref, {})
        self.ctx.busy.add(clone_ref)
        try:
            # XAPI's clone copies other_config: the cache keys go and the
            # instance's marks come in one write, so no fetch ever takes the
            # clone for a cache VDI. The clone is whole once made: ready.
            other = dict(session.call("VDI.get_other_config", clone_ref))
            for key in marks.CACHE_KEYS:
                other.pop(key, None)
            other.update(marks.vdi_marks(instance_uuid, marks.ROOT, self.ctx.tag,
                                         marks.READY, request))
            other.update([marks.cloned_from_mark(cache_uuid)])
            session.call("VDI.set_name_label", clone_ref, "%s %s" % (instance_uuid,
                                                                     marks.ROOT))
            base.checkpoint("cloned")
            session.call("VDI.set_other_config", clone_ref, other)
            vdis.refuse_if_caller_gone("root of instance %s" % instance_uuid)
        except BaseException:
            vdis.destroy_quietly(session, clone_ref, self.ctx.tag)
            raise
        finally:
            self.ctx.busy.discard(clone_ref)
        LOG.info("Instance %s: root %s cloned from image cache VDI %s", instance_uuid,
                 session.call("VDI.get_uuid", clone_ref), cache_uuid)
        return vdis.result(session, clone_ref)

    # -- upkeep -------------------------------------------------------------

    def manage(self, min_age_seconds, now=None):
        """Nova's ``manage_image_cache``: destroy the ready cache VDIs that no
        VDI is a clone of and that were not cloned for ``min_age_seconds``,
        and stale filling ones (a dead agent's). Returns counts of
        ``removed``, ``kept_in_use`` and ``kept_recent``."""
        session = self.ctx.session
        now = time.time() if now is None else now
        records = session.call("VDI.get_all_records")
        in_use = {marks.cloned_from(rec.get("other_config")) for rec in records.values()}
        removed = kept_in_use = kept_recent = 0
        for ref, rec in records.items():
            mark = marks.read_cache(rec.get("other_config"))
            if mark is None or ref in self.ctx.busy:
                continue
            if mark.state == marks.FILLING:
                if self._stale(mark.since, now):
                    LOG.info("Destroying cache VDI %s of image %s, left filling by agent "
                             "%s", rec["uuid"], mark.image_id, mark.agent)
                    removed += self._destroy(ref, rec)
                continue
            if rec["uuid"] in in_use:
                kept_in_use += 1
                continue
            last = max(mark.used or 0, mark.since or 0)
            if now - last < min_age_seconds:
                kept_recent += 1
                continue
            lock = self._image_lock(mark.image_id)
            if not lock.acquire(blocking=False):  # a fetch of it is running
                kept_recent += 1
                continue
            try:
                LOG.info("Destroying unused cache VDI %s of image %s (last cloned %ds ago)",
                         rec["uuid"], mark.image_id, now - last)
                removed += self._destroy(ref, rec)
            finally:
                lock.release()
        return {"removed": removed, "kept_in_use": kept_in_use, "kept_recent": kept_recent}

    def _destroy(self, ref, rec):
        try:
            vdis.destroy(self.ctx.session, ref, self.ctx.tag)
            return 1
        except exceptions.XapiFailure as e:
            LOG.warning("Could not destroy cache VDI %s: %s", rec.get("uuid"), e)
            return 0

    def cleanup(self):
        """What a crash of this agent left: its filling cache VDIs and its
        SR filling entries (not those of a fill of this process). Returns
        the number of VDIs destroyed."""
        session = self.ctx.session
        busy = self.ctx.busy
        for sr_ref, rec in session.call("SR.get_all_records").items():
            for entry in marks.fillings(rec.get("other_config")):
                if entry.agent == self.ctx.tag and entry.key not in busy:
                    LOG.info("Removing the filling entry of image %s left by a previous "
                             "run", entry.image_id)
                    with contextlib.suppress(exceptions.XapiFailure):
                        session.call("SR.remove_from_other_config", sr_ref, entry.key)
        destroyed = 0
        for ref, rec in session.call("VDI.get_all_records").items():
            mark = marks.read_cache(rec.get("other_config"))
            if mark is None or mark.state != marks.FILLING or mark.agent != self.ctx.tag \
                    or ref in busy:
                continue
            LOG.info("Destroying cache VDI %s of image %s, left half filled by a previous "
                     "run", rec.get("uuid"), mark.image_id)
            vdis.destroy(session, ref, self.ctx.tag)
            destroyed += 1
        return destroyed
