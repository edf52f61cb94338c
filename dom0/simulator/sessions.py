"""Sessions as XAPI keeps them: in memory, expiring, a bounded number each.

* Not persisted: the session class is ``~persist:PersistNothing``
  (ocaml/idl/datamodel.ml, session), so a restarted XAPI knows none of the
  sessions it had; their calls get ``SESSION_INVALID`` and their HTTP
  requests 401 (xapi_http.ml, assert_credentials_ok).
* Idle ones expire: db_gc_util.ml, timeout_sessions_common destroys a
  session last active longer ago than ``inactive_session_timeout`` (24 h,
  xapi_globs.ml), unless it still has a task running (is_session_unused).
  XAPI does it in its periodic garbage collection; here a session is found
  expired when it is next used, which its user cannot tell apart.
* At most 500 per originator (xapi_globs.ml, max_sessions_per_originator;
  400 for sessions without one, max_sessions): past that, the least
  recently active disposable ones go (timeout_sessions_common, ``unlucky``).
  Checked at each login.

The exact time of last use is kept in memory; the record's ``last_active``
is refreshed at most every 10 minutes, as session_check.ml does
(``threshold_last_active``).
"""

import time

from dom0.simulator import model

DEFAULT_IDLE_SECONDS = 24 * 3600.0
MAX_PER_ORIGINATOR = 500
MAX_WITHOUT_ORIGINATOR = 400
_LAST_ACTIVE_REFRESH_SECONDS = 600.0


class Sessions:
    def __init__(self, store, idle_seconds=DEFAULT_IDLE_SECONDS):
        self.store = store
        self.idle_seconds = idle_seconds
        self._last_used = {}     # ref -> time.monotonic() of its last call
        self._last_written = {}  # ref -> when its record's last_active was set

    def login(self, host_ref, originator):
        """A new session's ref; the oldest sessions past the limit go."""
        now = time.monotonic()
        with self.store.lock:
            record = model.SESSION.new_record(
                this_host=host_ref, last_active=model.now_text(),
                validation_time=model.now_text(), originator=originator)
            ref = self.store.add("session", record)
            self._last_used[ref] = self._last_written[ref] = now
            self._enforce_limit(originator)
        return ref

    def valid(self, ref):
        """Whether ``ref`` is a live session; using it counts as activity."""
        now = time.monotonic()
        with self.store.lock:
            if not self.store.exists("session", ref):
                return False
            if now - self._last_used.get(ref, now) > self.idle_seconds and self._unused(ref):
                self.destroy(ref)
                return False
            self._last_used[ref] = now
            if now - self._last_written.get(ref, 0.0) > _LAST_ACTIVE_REFRESH_SECONDS:
                self.store.get("session", ref)["last_active"] = model.now_text()
                self._last_written[ref] = now
            return True

    def destroy(self, ref):
        """Forget a session and its finished tasks (session.logout, the GC)."""
        with self.store.lock:
            record = self.store.table("session").get(ref)
            if record is None:
                return
            for task_ref in record["tasks"]:
                task = self.store.table("task").get(task_ref)
                if task is not None and task["status"] != "pending":
                    self.store.remove("task", task_ref)
            self.store.remove("session", ref)
            self._last_used.pop(ref, None)
            self._last_written.pop(ref, None)

    def _unused(self, ref):
        tasks = self.store.table("task")
        return all(tasks.get(task_ref, {}).get("status", "success") != "pending"
                   for task_ref in self.store.get("session", ref)["tasks"])

    def _enforce_limit(self, originator):
        limit = MAX_PER_ORIGINATOR if originator else MAX_WITHOUT_ORIGINATOR
        group = [ref for ref, record in self.store.table("session").items()
                 if record["originator"] == originator and self._unused(ref)]
        if len(group) <= limit:
            return
        group.sort(key=lambda ref: self._last_used.get(ref, 0.0), reverse=True)
        for ref in group[limit:]:
            self.destroy(ref)
