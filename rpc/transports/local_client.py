"""The driver's end of the local Unix socket.

Each call borrows an idle connection (or opens one), writes its request,
reads its reply on the calling thread and gives the connection back. No
reader thread sits between the socket and the caller: a round trip costs
two syscalls each way and no thread hand-off. Concurrent callers simply use
separate connections. A connection that timed out or broke mid-call is
closed, never reused, so a late reply cannot be taken for another call's.
"""

import errno
import itertools
import os
import socket
import threading
import time

from rpc import exceptions
from rpc.transports import framing

# While the agent is not up yet, retry connecting at this interval.
_CONNECT_RETRY_SECONDS = 0.05


class LocalClient:
    """Calls an agent listening on the Unix socket at ``path``."""

    def __init__(self, path, host):
        self.path = path
        self.host = host
        self._idle = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def call(self, method, version, args, timeout, monitor=None):
        """Send one request; return the reply envelope.

        Raises ``AgentUnavailable`` when nothing answers within ``timeout``
        (including when no agent listens yet and none appears in time), or
        at once when the connection breaks mid-call (an agent that dies is
        noticed by its socket, so ``monitor`` is not needed here);
        ``AccessDenied`` when the socket refuses this process.
        """
        deadline = time.monotonic() + timeout
        request_id = next(self._ids)
        try:
            frame = framing.pack({"id": request_id, "method": method, "version": version,
                                  "args": args})
        except (framing.FrameError, TypeError, ValueError, OverflowError) as e:
            # The request, not the agent: nothing was sent.
            raise exceptions.InvalidRequest(method=method, field="args",
                                            reason="cannot be sent: %s" % e) from None
        conn = self._checkout(method, timeout, deadline)
        try:
            conn.settimeout(max(deadline - time.monotonic(), 0.001))
            conn.sendall(frame)
            reply = framing.read_frame(conn)
        except (socket.timeout, TimeoutError):
            conn.close()
            raise exceptions.AgentUnavailable(host=self.host, method=method,
                                              timeout=timeout) from None
        except (OSError, framing.FrameError) as e:
            conn.close()
            raise exceptions.AgentUnavailable(
                "Lost the connection to the agent for host %s during %s: %s"
                % (self.host, method, e), host=self.host, method=method,
                timeout=timeout) from None
        if reply.get("id") == 0 and "error" in reply:
            conn.close()
            return reply
        if reply.get("id") != request_id:
            conn.close()
            raise exceptions.AgentUnavailable(
                "Agent for host %s answered %s with a reply to another call"
                % (self.host, method), host=self.host, method=method, timeout=timeout)
        self._checkin(conn)
        return reply

    def close(self):
        """Close every idle connection; later calls open new ones."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _checkout(self, method, timeout, deadline):
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                break
            if _still_open(conn):
                return conn
            conn.close()  # the agent restarted or dropped it while idle
        while True:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.connect(self.path)
                return conn
            except PermissionError:
                conn.close()
                raise exceptions.AccessDenied(uid=os.geteuid(), path=self.path) from None
            except OSError as e:
                conn.close()
                if e.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN):
                    raise exceptions.AgentUnavailable(
                        "Cannot connect to the agent for host %s at %s: %s"
                        % (self.host, self.path, e), host=self.host, method=method,
                        timeout=timeout) from None
            # No agent (yet): it may be starting; retry until the deadline.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise exceptions.AgentUnavailable(host=self.host, method=method,
                                                  timeout=timeout)
            time.sleep(min(_CONNECT_RETRY_SECONDS, remaining))

    def _checkin(self, conn):
        with self._lock:
            self._idle.append(conn)


def _still_open(conn):
    # An idle connection has nothing to read; if it is readable, the agent
    # closed it (EOF) or sent something unasked: either way it is unusable.
    return not framing.readable_now(conn)
