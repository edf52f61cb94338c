"""A thin XAPI session helper shared by the driver and the agent.

It wraps the official ``XenAPI`` SDK: login with a bounded timeout, every
``XenAPI.Failure`` turned into :class:`rpc.exceptions.XapiFailure` carrying
XAPI's error description, plugin calls whose string result is JSON, and waits
on tasks. It never logs the password or the session reference.
"""

import http.client
import json
import logging
import threading
import time
import urllib.parse
import xml.parsers.expat
import xmlrpc.client

import XenAPI

from rpc import exceptions

LOG = logging.getLogger(__name__)

ORIGINATOR = "nova-xen-split"
# One event.from waits at most this long, so a task deleted or a XAPI gone
# silent is noticed; the socket gives the answer a margin beyond it.
_EVENT_WAIT_SECONDS = 30.0
_EVENT_SOCKET_MARGIN_SECONDS = 15.0

def to_int(value):
    """XAPI sends int64 fields as strings; accept both."""
    return int(value)


class _TimeoutMixin:
    """Gives the SDK's XML-RPC connections a socket timeout."""

    def __init__(self, timeout):
        super().__init__()
        self._timeout = timeout

    def make_connection(self, host):
        conn = super().make_connection(host)
        conn.timeout = self._timeout
        if conn.sock is not None:  # a kept-alive connection: the timeout may have changed
            conn.sock.settimeout(self._timeout)
        return conn


class _TimeoutTransport(_TimeoutMixin, xmlrpc.client.Transport):
    pass


class _TimeoutSafeTransport(_TimeoutMixin, xmlrpc.client.SafeTransport):
    pass


class XapiSession:
    """One logged-in XAPI session.

    ``call("VDI.get_record", ref)`` runs ``session.xenapi.VDI.get_record(ref)``
    (one call at a time, whatever the thread) and raises :class:`XapiFailure`
    with XAPI's error description on failure, or with
    ``["CONNECTION_FAILED", url, reason]`` when XAPI cannot be reached.
    """

    def __init__(self, url, username, password, timeout=None, call_timeout=None):
        self.url = redacted_url(url.rstrip("/"))
        if self.url != url.rstrip("/"):
            # The password would end up in errors and logs with the URL.
            raise exceptions.XapiFailure(details=[
                "CONNECTION_FAILED", self.url, "the URL must not carry credentials: "
                "set connection_username and connection_password instead"])
        self.username = username
        self._password = password
        self._timeout = timeout              # the login's
        self._call_timeout = call_timeout    # every call's after it (None: timeout's)
        self._session = None
        self.host_ref = None
        # The SDK sends every call over one kept-alive connection, which two
        # threads must not use at once (an upload finishes one PUT while
        # starting the next).
        self._call_lock = threading.Lock()
        # Each thread's connection for event.from (see wait_for_task).
        self._waiters = threading.local()

    # -- connection -------------------------------------------------------

    def login(self):
        """Log in; returns self. Raises XapiFailure (credentials, network)."""
        transport = None
        if self._timeout or self._call_timeout:
            scheme = urllib.parse.urlsplit(self.url).scheme
            cls = _TimeoutSafeTransport if scheme == "https" else _TimeoutTransport
            transport = cls(self._timeout)
        try:
            session = XenAPI.Session(self.url, transport=transport)
            session.xenapi.login_with_password(
                self.username, self._password or "", "1.0", ORIGINATOR)
        except XenAPI.Failure as e:
            raise exceptions.XapiFailure(details=[str(d) for d in e.details]) from None
        except _NOT_XAPI + (ValueError,) as e:  # ValueError: a URL urllib cannot parse
            raise exceptions.XapiFailure(
                details=["CONNECTION_FAILED", self.url, _reason(e)]) from None
        if self._call_timeout:
            # A call may legitimately outlast the login's timeout (a guest's
            # clean shutdown, a VM start), and cutting it off would leave
            # its outcome unknown.
            transport._timeout = self._call_timeout
        self._session = session
        self.host_ref = self.call("session.get_this_host", session._session)
        return self

    def logout(self):
        if self._session is None:
            return
        try:
            self._session.xenapi.session.logout()
        except Exception:  # logging out of a dead session is not an error
            LOG.debug("XAPI logout failed", exc_info=True)
        self._session = None

    def __enter__(self):
        return self.login() if self._session is None else self

    def __exit__(self, *exc):
        self.logout()

    @property
    def handle(self):
        """The session reference, for XAPI's HTTP handlers. Never log it."""
        return self._session._session

    # -- calls --------------------------------------------------------------

    def call(self, method, *args):
        """Call ``Class.method`` (or ``Async.Class.method``) with ``args``."""
        if self._session is None:
            raise exceptions.XapiFailure(details=["SESSION_INVALID", "not logged in"])
        target = self._session.xenapi
        for part in method.split("."):
            target = getattr(target, part)
        try:
            with self._call_lock:
                return target(*args)
        except XenAPI.Failure as e:
            raise exceptions.XapiFailure(details=[str(d) for d in e.details]) from None
        except _NOT_XAPI as e:
            raise exceptions.XapiFailure(
                details=["CONNECTION_FAILED", self.url, _reason(e)]) from None

    def call_plugin(self, plugin, fn, args):
        """Run a dom0 plugin function; args are str→str, result is a string."""
        str_args = {str(k): str(v) for k, v in args.items()}
        return self.call("host.call_plugin", self.host_ref, plugin, fn, str_args)

    def call_plugin_json(self, plugin, fn, args):
        """Run a dom0 plugin function whose string result is JSON."""
        result = self.call_plugin(plugin, fn, args)
        try:
            return json.loads(result) if result else None
        except ValueError:
            raise exceptions.XapiFailure(
                details=["XENAPI_PLUGIN_FAILURE", fn, "ValueError",
                         "result is not JSON: %r" % result[:200]]) from None

    def call_async(self, method, *args, timeout=None):
        """Run ``Async.<method>`` and wait for its task (see
        :meth:`wait_for_task`); returns the message's value (a ref, a
        string, or "" for a message that returns nothing). ``timeout``
        (None: the session's call timeout) bounds the wait for the task."""
        task_ref = self.call("Async." + method, *args)
        result = self.wait_for_task(
            task_ref, timeout=self._call_timeout if timeout is None else timeout)
        return task_result_value(result)

    def wait_for_task(self, task_ref, timeout=None):
        """Wait for a task to end; return its result, raise XapiFailure if it failed.

        The wait is XAPI's ``event.from`` on the task (no polling): one
        ``task.get_record`` checks the task exists and may find it ended,
        then each ``event.from`` returns as soon as the task changes, with
        its record. They go over a connection of their own per thread, so
        other calls on this session (from other threads) are not held up.
        A task deleted meanwhile is ``HANDLE_INVALID``; past ``timeout``
        seconds, ``TASK_TIMEOUT``. The task is destroyed afterwards
        whatever its outcome.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            record = self.call("task.get_record", task_ref)
            token = ""
            relogins = 0
            while record["status"] == "pending":
                wait_seconds = _EVENT_WAIT_SECONDS
                if deadline is not None:
                    wait_seconds = min(wait_seconds, deadline - time.monotonic())
                    if wait_seconds <= 0:
                        raise exceptions.XapiFailure(
                            details=["TASK_TIMEOUT", str(task_ref), str(timeout)])
                try:
                    batch = self._event_from(["task/%s" % task_ref], token, wait_seconds)
                except exceptions.XapiFailure as e:
                    relogins += 1
                    if e.code != "SESSION_INVALID" or relogins > 3:
                        raise
                    # Logged in again meanwhile (XAPI restarted, or the
                    # session expired): this call logs in if needed and
                    # says whether the task survived.
                    record = self.call("task.get_record", task_ref)
                    token = ""
                    continue
                token = batch["token"]
                for event in batch["events"]:
                    if event.get("ref") != task_ref:
                        continue
                    if event.get("operation") == "del":
                        raise exceptions.XapiFailure(
                            details=["HANDLE_INVALID", "task", str(task_ref)])
                    record = event["snapshot"]
            status = record["status"]
            if status == "success":
                return record["result"]
            raise exceptions.XapiFailure(
                details=[str(d) for d in record["error_info"]] or ["TASK_FAILED", status])
        finally:
            try:
                self.call("task.destroy", task_ref)
            except exceptions.XapiFailure:
                LOG.debug("could not destroy task", exc_info=True)

    def _event_from(self, classes, token, wait_seconds):
        """One ``event.from`` on this thread's waiting connection."""
        if self._session is None:
            raise exceptions.XapiFailure(details=["SESSION_INVALID", "not logged in"])
        waiter = getattr(self._waiters, "proxy", None)
        if waiter is None:
            scheme = urllib.parse.urlsplit(self.url).scheme
            cls = _TimeoutSafeTransport if scheme == "https" else _TimeoutTransport
            transport = cls(None)
            waiter = xmlrpc.client.ServerProxy(self.url, transport=transport,
                                               allow_none=True)
            self._waiters.proxy, self._waiters.transport = waiter, transport
        # The answer may take the whole wait: the socket waits a little longer.
        self._waiters.transport._timeout = wait_seconds + _EVENT_SOCKET_MARGIN_SECONDS
        try:
            answer = getattr(waiter, "event.from")(
                self.handle, classes, token, float(wait_seconds))
        except _NOT_XAPI as e:
            self._waiters.proxy = None  # a broken connection is not reused
            raise exceptions.XapiFailure(
                details=["CONNECTION_FAILED", self.url, _reason(e)]) from None
        if not isinstance(answer, dict) or "Status" not in answer:
            raise exceptions.XapiFailure(
                details=["CONNECTION_FAILED", self.url, "not a XAPI answer"])
        if answer["Status"] != "Success":
            raise exceptions.XapiFailure(
                details=[str(d) for d in answer.get("ErrorDescription") or ["UNKNOWN"]])
        return answer["Value"]

    def http_url(self, path, **query):
        """URL of one of XAPI's HTTP handlers on this session's host."""
        query = dict(query, session_id=self.handle)
        return "%s%s?%s" % (self.url, path, urllib.parse.urlencode(query))


# What a call raises when the far end is not (or no longer) a working XAPI:
# unreachable, cut off mid-reply, answering with something that is not
# XML-RPC, or named by a URL the client cannot use.
_NOT_XAPI = (OSError, xmlrpc.client.ProtocolError, xmlrpc.client.Fault,
             http.client.HTTPException, xml.parsers.expat.ExpatError)


def task_result_value(text):
    """The value in a task's ``result``: XAPI writes it as XML-RPC
    ``<value>`` text (``<value>OpaqueRef:…</value>``, ``<value></value>``
    for a message that returns nothing, "" when a task carries none)."""
    if not text:
        return ""
    try:
        (value,), _ = xmlrpc.client.loads(
            "<methodResponse><params><param>%s</param></params></methodResponse>" % text)
    except (xml.parsers.expat.ExpatError, ValueError) as e:
        raise exceptions.XapiFailure(
            details=["TASK_RESULT_UNREADABLE", _reason(e)]) from None
    return value


def redacted_url(url):
    """``url`` without a ``user:password@`` part, fit for messages."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _reason(exc):
    text = str(exc) or type(exc).__name__
    return text


def session_from_conf(conf, call_timeout=None):
    """A logged-in session from the ``[xenserver]`` options of ``conf``:
    ``login_timeout`` for the login, ``call_timeout`` seconds for each call
    after it (None: ``login_timeout`` too)."""
    xs = conf.xenserver
    return XapiSession(
        xs.connection_url, xs.connection_username, xs.connection_password,
        timeout=xs.login_timeout, call_timeout=call_timeout).login()
