"""The simulator's object store: every XAPI object, persisted to ``db.json``.

One re-entrant lock guards all tables; callers hold ``store.lock`` around a
whole API call so each call sees and leaves a consistent database, as XAPI's
own database lock does. Every mutating call ends with :meth:`Store.commit`,
which rewrites ``db.json`` atomically (a temporary file renamed over the old
one), so a crash at any point leaves either the old or the new state.

Tasks live in memory only: XAPI does not persist them across a restart
either, and an import makes and ends one per PUT, so writing the database
for each of those would put a file rewrite on every upload's path.
"""

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
TRANSIENT = frozenset({"task"})


class Store:
    """Tables of records, keyed by class name then opaque ref."""

    def __init__(self, state_dir):
        self.path = os.path.join(state_dir, DB_FILE)
        self.lock = threading.RLock()
        self.tables = {name: {} for name in model.CLASSES}
        self.dirty = False

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
        for session in self.tables["session"].values():
            session["tasks"] = []  # no task outlives a restart
        return True

    def commit(self):
        """Write the database if anything changed since the last commit."""
        with self.lock:
            if not self.dirty:
                return
            persistent = {name: table for name, table in self.tables.items()
                          if name not in TRANSIENT}
            # 0600: the sessions in it are live logins as root.
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
        self.tables[cls][ref] = record
        self._changed(cls)
        return ref

    def remove(self, cls, ref):
        self.tables[cls].pop(ref, None)
        self._changed(cls)

    def update(self, cls, ref, **fields):
        self.get(cls, ref).update(fields)
        self._changed(cls)

    def _changed(self, cls):
        if cls not in TRANSIENT:
            self.dirty = True

    def touch(self):
        """Mark the database changed after an in-place edit of a record."""
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
