"""The simulator's object store: every XAPI object, persisted to ``db.json``.

One re-entrant lock guards all tables; callers hold ``store.lock`` around a
whole API call so each call sees and leaves a consistent database, as XAPI's
own database lock does. Every mutating call ends with :meth:`Store.commit`,
which rewrites ``db.json`` atomically (a temporary file renamed over the old
one), so a crash at any point leaves either the old or the new state.

Tasks and sessions live in memory only: XAPI does not persist them across
a restart either, and an import makes and ends one task per PUT, so
writing the database for each of those would put a file rewrite on every
upload's path.

Every change is numbered, as XAPI's database numbers them with its
generation count (``ocaml/database/db_cache_types.ml``, ``Stat``: each row
keeps the generation it was created and last modified in, and a deleted
row the one it went in). ``event.from`` reads these numbers and waits on
:attr:`Store.changed` for the next one.
"""

import collections

import json
import logging
import os
import threading

from dom0.simulator import errors
from dom0.simulator import model
from dom0.simulator import private

LOG = logging.getLogger(__name__)

DB_FILE = "db.json"
# Classes whose records are never written to db.json (XAPI's non-persistent
# tables); changing only these leaves the file alone.
TRANSIENT = frozenset({"task", "session"})
# How many deletions event.from can still report; XAPI's garbage collector
# forgets deleted rows too.
KEPT_DELETIONS = 10000


class Store:
    """Tables of records, keyed by class name then opaque ref."""

    def __init__(self, state_dir):
        self.path = os.path.join(state_dir, DB_FILE)
        self.lock = threading.RLock()
        self.tables = {name: {} for name in model.CLASSES}
        self.dirty = False
        # Change numbers (see the module's docstring).
        self.generation = 0
        self.stats = {name: {} for name in model.CLASSES}  # ref -> [created, modified]
        self.deletions = collections.deque(maxlen=KEPT_DELETIONS)  # (cls, ref, created, deleted)
        self.changed = threading.Condition(self.lock)

    # -- persistence --------------------------------------------------------

    def load(self):
        """Read ``db.json`` if it exists; returns True when state was loaded."""
        if not os.path.exists(self.path):
            return False
        with open(self.path) as f:
            saved = json.load(f)
        for name in model.CLASSES:
            if name not in TRANSIENT:
                self.tables[name] = saved.get(name, {})
        with self.lock:
            generation = self._next_generation()
            for name, table in self.tables.items():
                self.stats[name] = {ref: [generation, generation] for ref in table}
        return True

    def commit(self):
        """Write the database if anything changed since the last commit."""
        with self.lock:
            if not self.dirty:
                return
            persistent = {name: table for name, table in self.tables.items()
                          if name not in TRANSIENT}
            # 0600: it describes every VM and disk of the host.
            private.replace_text(self.path, json.dumps(persistent, separators=(",", ":")))
            self.dirty = False

    # -- records ------------------------------------------------------------

    def table(self, cls):
        return self.tables[cls]

    def get(self, cls, ref):
        """The record behind ``ref``; HANDLE_INVALID when there is none."""
        if not isinstance(ref, str):
            raise errors.XapiError(errors.FIELD_TYPE_ERROR, "self")
        try:
            return self.tables[cls][ref]
        except KeyError:
            raise errors.XapiError(errors.HANDLE_INVALID, cls, ref) from None

    def exists(self, cls, ref):
        return isinstance(ref, str) and ref in self.tables[cls]

    def add(self, cls, record, ref=None):
        ref = ref or model.new_ref()
        with self.lock:
            self.tables[cls][ref] = record
            generation = self._next_generation()
            self.stats[cls][ref] = [generation, generation]
            self._changed(cls)
        return ref

    def remove(self, cls, ref):
        with self.lock:
            if self.tables[cls].pop(ref, None) is None:
                return
            created = self.stats[cls].pop(ref, [0, 0])[0]
            self.deletions.append((cls, ref, created, self._next_generation()))
            self._changed(cls)

    def update(self, cls, ref, **fields):
        with self.lock:
            self.get(cls, ref).update(fields)
            self.modified(cls, ref)

    def modified(self, cls, ref):
        """Number a change made to the record of ``ref`` in place."""
        with self.lock:
            stat = self.stats[cls].get(ref)
            if stat is not None:
                stat[1] = self._next_generation()
            self._changed(cls)

    def _next_generation(self):
        # Called with the lock held; wakes every event.from waiting.
        self.generation += 1
        self.changed.notify_all()
        return self.generation

    def _changed(self, cls):
        if cls not in TRANSIENT:
            self.dirty = True

    def touch(self, cls=None, ref=None):
        """Mark the database changed after an in-place edit of a record
        (of ``ref``, numbered as a change of it, when given)."""
        if cls is not None:
            self.modified(cls, ref)
        self.dirty = True

    def find(self, cls, **match):
        """Refs of ``cls`` whose fields equal every value in ``match``."""
        return [ref for ref, rec in self.tables[cls].items()
                if all(rec.get(k) == v for k, v in match.items())]

    def by_uuid(self, cls, uuid):
        if isinstance(uuid, str):
            for ref, rec in self.tables[cls].items():
                if rec["uuid"] == uuid:
                    return ref
        raise errors.XapiError(errors.UUID_INVALID, cls, uuid)
