"""The agent's end of the local Unix socket.

One thread accepts; one thread per connection reads frames. A request is
validated on the reading thread; control calls (``describe``) are answered
right there, every other call goes to a pool of ``rpc_workers`` threads and
its reply is written, under the connection's write lock, when it is done.
Replies carry the request id, so one connection may carry concurrent calls
and replies may come back out of order.

Access: the socket file is mode 0600 (0660 with ``[agent] socket_group``),
and in addition the peer's credentials (``SO_PEERCRED``) must be this
process's uid, root, or a member of the group: loosened file permissions
alone do not let a stranger in.
"""

import concurrent.futures
import contextlib
import errno
import grp
import os
import socket
import stat
import struct
import threading

from oslo_log import log as logging

from rpc import exceptions
from rpc.transports import framing

LOG = logging.getLogger(__name__)
_NO_VERSION = "(missing)"  # refused by the version check, like any malformed one

_UCRED = struct.Struct("3i")  # pid, uid, gid


def peer_credentials(sock):
    """``(pid, uid, gid)`` of the process at the other end of ``sock``."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return _UCRED.unpack(raw)


def _supplementary_groups(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


class LocalServer:
    """Serves a :class:`rpc.dispatch.Dispatcher` on a Unix socket at ``path``."""

    def __init__(self, path, dispatcher, workers, group=None):
        self.path = path
        self.dispatcher = dispatcher
        self.workers = workers
        try:
            self.gid = grp.getgrnam(group).gr_gid if group else None
        except KeyError:
            raise ValueError("[agent] socket_group %r is not a group on this machine"
                             % group) from None
        self._listener = None
        self._inode = None
        self._pool = None
        self._accept_thread = None
        self._threads = []
        self._conns = set()
        self._lock = threading.Lock()
        self._stopping = False

    # -- lifecycle -------------------------------------------------------

    def start(self):
        """Create the socket (removing a stale one) and start serving."""
        if len(os.fsencode(self.path)) > 100:
            raise ValueError("socket path %s is too long for AF_UNIX" % self.path)
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o755, exist_ok=True)
        self._remove_stale()
        # Bind under a private name, fix mode and group, then rename into
        # place: the socket is never reachable with looser permissions.
        staging = "%s.%d.new" % (self.path, os.getpid())
        if os.path.lexists(staging):
            os.unlink(staging)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(staging)
            if self.gid is not None:
                os.chown(staging, -1, self.gid)
            os.chmod(staging, 0o660 if self.gid is not None else 0o600)
            listener.listen(64)
            os.rename(staging, self.path)
        except BaseException:
            listener.close()
            if os.path.lexists(staging):
                os.unlink(staging)
            raise
        self._inode = os.stat(self.path).st_ino
        self._listener = listener
        self._stopping = False
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="nxs-rpc-worker")
        self._accept_thread = self._spawn(self._accept_loop, "nxs-rpc-accept")
        LOG.info("Agent listening on unix socket %s", self.path)

    def stop(self):
        """Stop accepting and reading requests; running calls still answer."""
        with self._lock:
            self._stopping = True
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                # Reading stops (the reader sees EOF); writing does not, so
                # calls in progress still deliver their replies.
                conn.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        try:
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)  # only our own socket, not a successor's
        except FileNotFoundError:
            pass

    def wait(self):
        """Wait until every thread of the server has finished."""
        if self._accept_thread is not None:
            self._accept_thread.join()  # no connection thread starts after this
        for thread in list(self._threads):
            thread.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _remove_stale(self):
        if not os.path.lexists(self.path):
            return
        if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
            raise OSError(errno.EEXIST, "%s exists and is not a socket; not removing it"
                          % self.path)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.path)
        except (ConnectionRefusedError, FileNotFoundError):
            LOG.info("Removing stale agent socket %s", self.path)
            os.unlink(self.path)
            return
        finally:
            probe.close()
        raise OSError(errno.EADDRINUSE, "another agent is listening on %s" % self.path)

    def _spawn(self, target, name, *args):
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return thread

    # -- connections -----------------------------------------------------

    def _accept_loop(self):
        listener = self._listener
        while not self._stopping:
            try:
                conn, _ = listener.accept()
            except OSError:
                if self._stopping:
                    return
                LOG.exception("accept() failed on %s", self.path)
                continue
            self._spawn(self._serve_connection, "nxs-rpc-conn", conn)

    def _allowed(self, conn):
        pid, uid, gid = peer_credentials(conn)
        if uid in (0, os.geteuid()):
            return True
        if self.gid is not None and (gid == self.gid or self.gid in _supplementary_groups(pid)):
            return True
        LOG.warning("Refused connection from pid %d uid %d on %s", pid, uid, self.path)
        _last_word(conn, exceptions.AccessDenied(uid=uid, path=self.path))
        return False

    def _serve_connection(self, conn):
        write_lock = threading.Lock()
        in_flight = set()
        # Set when the caller hangs up (its call timed out: the client then
        # closes the connection). A call still waiting for a worker is then
        # not run: nobody would take its result, and a disk it made would
        # only appear after the driver's undo had looked for it.
        caller_gone = threading.Event()
        with self._lock:
            self._conns.add(conn)
            stopping = self._stopping  # stop() has already half-closed the others
        try:
            if stopping or not self._allowed(conn):
                return
            while not self._stopping:
                try:
                    request = framing.read_frame(conn)
                except framing.ConnectionClosed:
                    if not self._stopping:  # stop() ends reading, the caller stays
                        caller_gone.set()
                    return
                except framing.FrameError as e:
                    LOG.warning("Dropping connection on %s: %s", self.path, e)
                    _last_word(conn, _malformed("frame", str(e)), write_lock)
                    return
                except OSError as e:
                    LOG.warning("Dropping connection on %s: %s", self.path, e)
                    return
                if not self._handle(conn, write_lock, request, in_flight, caller_gone):
                    LOG.warning("Dropping connection on %s: malformed request", self.path)
                    _last_word(conn, _malformed(
                        "request", "not a map with a positive integer id"), write_lock)
                    return
        finally:
            # Calls already accepted on this connection answer before it closes.
            concurrent.futures.wait(list(in_flight))
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _handle(self, conn, write_lock, request, in_flight, caller_gone):
        """Start serving one request; False if it is not a request at all."""
        if not (isinstance(request, dict) and isinstance(request.get("id"), int)
                and not isinstance(request.get("id"), bool) and request["id"] > 0):
            return False
        request_id = request["id"]
        try:
            # Every request pins a version here (oslo.messaging checks its own).
            version = request.get("version")
            method, args = self.dispatcher.check(
                request.get("method"), version if version is not None else _NO_VERSION,
                request.get("args"))
        except exceptions.NovaXenSplitError as e:
            LOG.warning("Refused call: %s", e)
            self._reply(conn, write_lock, request_id, {"error": e.to_wire()})
            return True
        if method.control:
            self._reply(conn, write_lock, request_id, self.dispatcher.run(method, args))
        else:
            future = self._pool.submit(self._run, conn, write_lock, request_id, method, args,
                                       caller_gone)
            in_flight.add(future)
            future.add_done_callback(in_flight.discard)
        return True

    def _run(self, conn, write_lock, request_id, method, args, caller_gone):
        def gone():
            # The reader thread may not have seen the hang-up yet (a busy
            # machine): the socket itself says so, but not while stop()
            # has ended reading.
            if caller_gone.is_set() or (not self._stopping and _hung_up(conn)):
                return "it closed its connection"
            return None

        envelope = self.dispatcher.run(method, args, gone)
        if not caller_gone.is_set():
            self._reply(conn, write_lock, request_id, envelope)

    def _reply(self, conn, write_lock, request_id, envelope):
        envelope["id"] = request_id
        try:
            frame = framing.pack(envelope)
        except (framing.FrameError, TypeError, ValueError) as e:
            error = exceptions.RemoteError(exc_type="InvalidResult", value=str(e))
            frame = framing.pack({"id": request_id, "error": error.to_wire()})
        try:
            with write_lock:
                conn.sendall(frame)
        except OSError as e:
            # The caller is gone (timed out or died); the work is done anyway.
            LOG.info("Could not deliver reply %d on %s: %s", request_id, self.path, e)


def _malformed(field, reason):
    return exceptions.InvalidRequest(method="(unknown)", field=field, reason=reason)


def _last_word(conn, error, write_lock=None):
    """Send ``error`` as the connection's last frame (id 0: it answers no
    request in particular), then close gently."""
    try:
        with write_lock or contextlib.nullcontext():
            conn.sendall(framing.pack({"id": 0, "error": error.to_wire()}))
            # Closing with the peer's request unread would reset the
            # connection and could destroy the answer before it is read:
            # half-close, then discard input (bounded) until the peer closes.
            conn.shutdown(socket.SHUT_WR)
        conn.settimeout(2)
        for _ in range(64):
            if not conn.recv(65536):
                break
    except OSError:
        pass


def _hung_up(conn):
    """True if the peer has closed ``conn`` (EOF waiting), without reading."""
    if not framing.readable_now(conn):
        return False        # open, nothing to read
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False        # open, nothing to read
    except OSError:
        return True         # reset or otherwise broken
