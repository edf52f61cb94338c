"""``event.from``: wait for changes to objects, from a token.

It follows ``ocaml/xapi/xapi_event.ml`` (``from``, ``from_inner``,
``collect_events``, ``Subscription``, ``Token``):

* ``classes`` are subscriptions: ``*`` (everything), a class name (any
  case), or ``class/ref`` (one object).
* ``token`` is ``""`` (from the beginning) or ``"<generation>,<message
  generation>"``, both zero-padded to 20 digits; anything else is
  ``EVENT_FROM_TOKEN_PARSE_FAILURE [token]``.
* The answer is ``{"events", "valid_ref_counts", "token"}``. An object made
  after the token is an ``add``, one changed after it a ``mod`` (both with
  the record as ``snapshot``), one made before and deleted after it a
  ``del`` (no snapshot); one made and deleted after the token is not seen.
  ``valid_ref_counts`` counts every table's rows. The new token is the last
  change seen of a subscribed object.
* With nothing to report the call blocks until a subscribed object changes
  or ``timeout`` seconds pass (then ``events`` is empty); its session
  logged out meanwhile ends it with ``SESSION_INVALID``.
* XAPI batches: task-only subscriptions wait 50 ms between looks, others
  50 ms before the first one too (xapi_globs.ml, ``event_from_task_delay``,
  ``event_from_delay``).
"""

import re
import time

from dom0.simulator import errors
from dom0.simulator import model
from dom0.simulator.api import generic
from dom0.simulator.api import unmarshal
from dom0.simulator.api.registry import message

# The classes that make events: every class the simulator serves but the
# session (datamodel.ml, _session: ~gen_events:false).
EVENT_CLASSES = tuple(name for name in model.CLASSES if name != "session")
DELAY_SECONDS = 0.05
# xapi_event.ml, from: a timeout that is no time span waits a day.
DEFAULT_TIMEOUT_SECONDS = 24 * 3600.0
_INT64 = re.compile(r"-?[0-9]+\Z")


def parse_token(token):
    """(generation, message generation) of a token (Token.of_string)."""
    if token == "":
        return 0, 0
    parts = token.split(",")
    if len(parts) != 2 or not all(_INT64.match(part) for part in parts):
        raise errors.XapiError(errors.EVENT_FROM_TOKEN_PARSE_FAILURE, token)
    return int(parts[0]), int(parts[1])


def make_token(generation, message_generation=0):
    return "%020d,%020d" % (generation, message_generation)


class Subscriptions:
    """Subscription.of_string for each class string, and the matching."""

    def __init__(self, classes):
        self.everything = False
        self.classes = set()
        self.objects = set()
        for text in classes:
            if text == "*":
                self.everything = True
                continue
            cls, slash, ref = text.partition("/")
            if slash:
                self.objects.add((cls.lower(), ref))
            else:
                self.classes.add(cls.lower())
        self.task_only = not self.everything and all(
            name == "task" for name in self.classes | {c for c, _ in self.objects})

    def table_matches(self, cls):
        cls = cls.lower()
        return self.everything or cls in self.classes or any(
            c == cls for c, _ in self.objects)

    def object_matches(self, cls, ref):
        cls = cls.lower()
        return self.everything or cls in self.classes or (cls, ref) in self.objects


def _collect(store, subs, since):
    """(events, last generation seen) of subscribed objects changed after ``since``."""
    creates, mods, deletes = [], [], []
    last = since
    for cls in EVENT_CLASSES:
        if not subs.table_matches(cls):
            continue
        for ref, (created, modified) in store.stats[cls].items():
            if not subs.object_matches(cls, ref):
                continue
            last = max(last, modified)
            if created > since:
                creates.append((created, cls, ref, "add"))
            elif modified > since:
                mods.append((modified, cls, ref, "mod"))
    for cls, ref, created, deleted in store.deletions:
        if cls in EVENT_CLASSES and subs.object_matches(cls, ref):
            last = max(last, deleted)
            if created <= since < deleted:
                deletes.append((deleted, cls, ref, "del"))
    return sorted(deletes + mods + creates), last


def _event(host, generation, cls, ref, operation):
    event = {"id": str(generation), "timestamp": "0.0", "class": cls.lower(),
             "operation": operation, "ref": ref}
    if operation != "del":
        event["snapshot"] = generic.render(host, cls, ref)
    return event


def _check_params(params):
    _, classes, token, timeout = params
    if not isinstance(classes, list):
        raise unmarshal.failure("Expecting Rpc.Enum, but found '%s'" % unmarshal.rpc_text(
            classes))
    for text in classes:
        unmarshal.check_string(text)
    unmarshal.check_string(token)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float, str)):
        raise unmarshal.failure("Expected float, got '%s'" % unmarshal.rpc_text(timeout))
    if isinstance(timeout, str):
        try:
            float(timeout)
        except ValueError:
            raise unmarshal.failure("Expected float, got '%s'" % unmarshal.rpc_text(
                timeout)) from None


def _session_gone(host, session):
    return not host.store.exists("session", session)


@message("event.from", locked=False, unmarshal=_check_params)
def event_from(host, session, classes, token, timeout):
    seconds = float(timeout)
    if not 0 <= seconds < float("inf"):
        seconds = DEFAULT_TIMEOUT_SECONDS
    deadline = time.monotonic() + seconds
    subs = Subscriptions(classes)
    since, _ = parse_token(token)
    store = host.store
    if not subs.task_only:
        time.sleep(DELAY_SECONDS)
    while True:
        with store.lock:
            if _session_gone(host, session):
                raise errors.XapiError(errors.SESSION_INVALID, session)
            found, last = _collect(store, subs, since)
            events = []
            for generation, cls, ref, operation in found:
                if operation == "del" or store.exists(cls, ref):
                    events.append(_event(host, generation, cls, ref, operation))
            expired = time.monotonic() >= deadline
            if events or expired:
                counts = {cls.lower(): len(store.table(cls)) for cls in model.CLASSES}
                return {"events": events, "valid_ref_counts": counts,
                        "token": make_token(last)}
            # Nothing yet: wait for a subscribed object to change.
            since = last
            while not _session_gone(host, session):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or _collect(store, subs, since)[1] > since:
                    break
                store.changed.wait(remaining)
        time.sleep(DELAY_SECONDS)
