"""The interface over oslo.messaging RPC (``rabbit://…``).

Target: exchange ``openstack`` (named, never left to ``control_exchange``:
see :data:`rpc.transports.EXCHANGE`), topic ``nova-xen-split-agent``,
server = the hypervisor's host name, so one broker serves any number of
driver/agent pairs and each driver reaches only its own agent. Reconnection and heartbeats are
oslo.messaging's, configured by its own options.

Each declared method is an endpoint method of the same name, so the
messages look like any OpenStack service's. The endpoint never raises:
it returns the dispatcher's envelope (``{"result"}`` or ``{"error"}``), so
typed errors cross as our own ``(type, message, kwargs)`` and no traceback
of the agent's reaches the driver. oslo.messaging encodes messages as JSON,
so :class:`BytesSerializer` tags ``bytes`` as base64 on the way out.
"""

import base64
import contextvars
import time

import oslo_messaging
from oslo_messaging.rpc import server as rpc_server
from oslo_log import log as logging

from rpc import exceptions
from rpc import methods
from rpc.transports import EXCHANGE, TOPIC, redacted_url

LOG = logging.getLogger(__name__)

_BYTES = "__nxs_bytes__"
_ESCAPED = "__nxs_dict__"
# Until the agent has answered once, probe with describe at this interval:
# a call published before the agent declared its queue would be dropped by
# the broker, so the real call waits until a probe is answered.
_PROBE_SECONDS = (0.2, 0.5, 1.0)
# Reconnections tried when a call cannot be published. oslo.messaging's
# default is to retry for ever, which would hang the driver for as long as
# the broker is away, whatever the call's timeout; with three, a broker that
# is gone is reported after a few seconds (oslo.messaging's
# rabbit_retry_interval and rabbit_retry_backoff space the attempts).
SEND_RETRIES = 3
# How long a client or a server waits for the broker to take a connection and
# a login before it says the broker cannot be used: oslo.messaging alone
# would retry for ever, and a command would hang with nothing said.
BROKER_CONNECT_SECONDS = 10.0
OPTION = "[DEFAULT] transport_url"


def _transport(conf, url):
    """oslo.messaging's RPC transport for ``url``; a URL it cannot load is
    :class:`TransportUnusable` naming the option (never the password)."""
    try:
        return oslo_messaging.get_rpc_transport(conf, url=url)
    except (oslo_messaging.InvalidTransportURL, oslo_messaging.DriverLoadFailure) as e:
        raise exceptions.TransportUnusable(
            option=OPTION, reason="%s cannot be used: %s" % (
                redacted_url(url), (str(e).splitlines() or [type(e).__name__])[0])) from None


def check_broker(conf, url, timeout=BROKER_CONNECT_SECONDS):
    """Raise :class:`TransportUnusable` unless a broker of ``url`` takes a
    connection and a login within ``timeout`` seconds."""
    import kombu

    parsed = oslo_messaging.TransportURL.parse(conf, url)
    problems = []
    for host in parsed.hosts or []:
        connection = kombu.Connection(
            hostname=host.hostname or "localhost", port=host.port or 5672,
            userid=host.username or "guest", password=host.password or "guest",
            virtual_host=parsed.virtual_host or "/", connect_timeout=timeout,
            ssl=conf.oslo_messaging_rabbit.ssl or False)
        try:
            connection.ensure_connection(max_retries=1, timeout=timeout)
            return
        except Exception as e:  # noqa: BLE001 -- every way of failing means the same here
            problems.append("%s:%s %s" % (host.hostname, host.port or 5672,
                                          (str(e).splitlines() or [type(e).__name__])[0]))
        finally:
            connection.release()
    raise exceptions.TransportUnusable(
        option=OPTION, reason="no broker of %s took a connection and login within %.0f s (%s)"
        % (redacted_url(url), timeout, "; ".join(problems) or "no host in the URL"))


class BytesSerializer(oslo_messaging.NoOpSerializer):
    """Carries ``bytes`` through JSON as ``{"__nxs_bytes__": base64}``.

    A dict that happens to use one of the tag keys is wrapped as
    ``{"__nxs_dict__": {...}}``, so no payload can be mistaken for a tag.
    """

    def serialize_entity(self, ctxt, entity):
        return _encode(entity)

    def deserialize_entity(self, ctxt, entity):
        return _decode(entity)


def _encode(value):
    if isinstance(value, (bytes, bytearray)):
        return {_BYTES: base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        encoded = {key: _encode(item) for key, item in value.items()}
        if _BYTES in value or _ESCAPED in value:
            return {_ESCAPED: encoded}
        return encoded
    if isinstance(value, (list, tuple)):
        return [_encode(item) for item in value]
    return value


class MalformedTag:
    """What a hand-made message's broken tag decodes to: not an error here
    (oslo.messaging would send it back as an untyped remote error), but a
    value no argument kind accepts, so the schema refuses the argument with
    ``InvalidRequest`` naming it."""

    def __init__(self, tag):
        self.tag = tag

    def __repr__(self):
        return "MalformedTag(%s)" % self.tag


def _decode(value):
    if isinstance(value, dict):
        if len(value) == 1:
            if _BYTES in value:
                try:
                    return base64.b64decode(value[_BYTES], validate=True)
                except (TypeError, ValueError):  # binascii.Error is a ValueError
                    return MalformedTag(_BYTES)
            if _ESCAPED in value:
                if not isinstance(value[_ESCAPED], dict):
                    return MalformedTag(_ESCAPED)
                return {key: _decode(item) for key, item in value[_ESCAPED].items()}
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


# The client's wall-clock deadline travels in the call's context; a call
# still waiting for a worker slot this long after it is not run. The margin
# covers clock skew between the driver's and the agent's machines (Nova's
# own service heartbeats assume clocks within a minute).
DEADLINE_KEY = "nxs_deadline"
DEADLINE_MARGIN_SECONDS = 60.0


class _Heartbeats:
    """When a monitored call's last call-monitor heartbeat went out.

    The caller of a call with a monitor timeout gives up when no heartbeat
    has reached it for that many seconds: oslo.messaging sends one every
    half of it, and stops at the first that fails (the broker went away).
    A call whose last heartbeat went out longer ago than the monitor
    timeout has lost its caller, whatever its own deadline says.
    """

    def __init__(self, incoming):
        try:
            self.monitor = int(incoming.client_timeout or 0)
        except (TypeError, ValueError):
            self.monitor = 0
        self.last = time.monotonic()
        send = incoming.heartbeat

        def heartbeat():
            send()
            self.last = time.monotonic()

        if self.monitor:
            incoming.heartbeat = heartbeat

    def silent_for(self):
        """Seconds since the last heartbeat (or the call's start) when that
        is longer than the monitor timeout, else None."""
        silent = time.monotonic() - self.last
        return silent if self.monitor and silent > self.monitor else None


# The running call's _Heartbeats, from _StrictDispatcher.dispatch to the
# endpoint method it calls on the same thread.
_CALL_HEARTBEATS = contextvars.ContextVar("nxs_call_heartbeats", default=None)


def _caller_gone(ctxt, heartbeats=None):
    """For the dispatcher: why the caller of a call with this context has
    given up, or None (also when the context carries no deadline and the
    call no monitor)."""
    deadline = ctxt.get(DEADLINE_KEY) if isinstance(ctxt, dict) else None
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
        deadline = None
    if deadline is None and heartbeats is None:
        return None

    def gone():
        silent = heartbeats.silent_for() if heartbeats is not None else None
        if silent is not None:
            return ("no call-monitor heartbeat reached the broker for %.0fs, and it "
                    "waits %ds for one" % (silent, heartbeats.monitor))
        late = time.time() - deadline if deadline is not None else 0
        if late > DEADLINE_MARGIN_SECONDS:
            return "its timeout passed %.0fs ago" % late
        return None
    return gone


def _endpoint_method(dispatcher, name):
    def call(ctxt, **kwargs):
        # _StrictDispatcher has already checked the pinned version and the
        # name; the dispatcher does the rest.
        return dispatcher.handle(name, None, kwargs,
                                 _caller_gone(ctxt, _CALL_HEARTBEATS.get()))
    call.__name__ = name
    return call


class _Endpoint:
    """One attribute per declared method, all handed to the dispatcher.

    Any other public name also resolves to the dispatcher, which refuses it
    with ``InvalidRequest`` exactly as over the local socket (rather than
    oslo.messaging's ``NoSuchMethod``, logged with a traceback). Names that
    oslo.messaging reserves for itself (``oslo_*``) are left alone.
    """

    def __init__(self, dispatcher):
        self.target = oslo_messaging.Target(version=dispatcher.version)
        self._dispatcher = dispatcher
        for name in methods.METHODS:
            setattr(self, name, _endpoint_method(dispatcher, name))

    def __getattr__(self, name):
        if name.startswith(("_", "oslo_")) or name == "target":
            raise AttributeError(name)
        return _endpoint_method(self._dispatcher, name)


class _AccessPolicy(oslo_messaging.DefaultRPCAccessPolicy):
    """oslo.messaging's default (no ``_`` names), and not ``target``: that
    attribute describes the endpoint to oslo.messaging and is no method, so
    a message naming it gets ``NoSuchMethod`` instead of an untyped error."""

    def is_allowed(self, endpoint, method):
        return method != "target" and super().is_allowed(endpoint, method)


class _StrictDispatcher(oslo_messaging.RPCDispatcher):
    """oslo.messaging's dispatcher, with the pinned version and the method
    name checked by our dispatcher first, as over the local socket.

    oslo.messaging's own version check reads ``int()`` of each part, which
    takes ``'١.١'`` or ``'1.1\n'``, and it logs every refusal (an
    unsupported version, a private name) as an ERROR with a traceback, so
    any client of the broker could flood the log. Here a refused call is
    answered with our typed error and one WARNING line.
    """

    def __init__(self, dispatcher, endpoints, serializer, access_policy):
        super().__init__(endpoints, serializer, access_policy)
        self._ours = dispatcher

    @staticmethod
    def _is_compatible(target, version):
        return True  # checked strictly in dispatch(), before this is asked

    def dispatch(self, incoming):
        message = incoming.message if isinstance(incoming.message, dict) else {}
        try:
            self._ours.check_target(message.get("method"), message.get("version", "1.0"))
        except exceptions.NovaXenSplitError as e:
            return self.serializer.serialize_entity(incoming.ctxt, self._ours.refusal(e))
        token = _CALL_HEARTBEATS.set(_Heartbeats(incoming) if incoming.client_timeout
                                     else None)
        try:
            return super().dispatch(incoming)
        finally:
            _CALL_HEARTBEATS.reset(token)


class RabbitServer:
    """Serves a dispatcher as RPC server ``host`` on topic ``nova-xen-split-agent``."""

    def __init__(self, conf, url, host, dispatcher, workers):
        self.host = host
        self._conf, self._url = conf, url
        self.transport = _transport(conf, url)
        target = oslo_messaging.Target(exchange=EXCHANGE, topic=TOPIC, server=host,
                                       version=dispatcher.version)
        self._server = rpc_server.RPCServer(
            self.transport, target,
            _StrictDispatcher(dispatcher, [_Endpoint(dispatcher)], BytesSerializer(),
                              _AccessPolicy),
            executor="threading")
        # Calls beyond rpc_workers wait for a worker slot on a transport
        # thread (Dispatcher); the extra threads keep describe answerable
        # while that many calls wait.
        self._threads = 2 * workers + 4

    def start(self):
        """Declare the queues and start consuming; raises TransportUnusable
        when no broker takes a connection in time."""
        check_broker(self._conf, self._url)
        self._server.start(override_pool_size=self._threads)
        LOG.info("Agent listening on topic %s, server %s", TOPIC, self.host)

    def stop(self):
        """Stop consuming; calls in progress finish."""
        self._server.stop()

    def wait(self):
        """Wait for calls in progress, then release the broker connection."""
        self._server.wait()
        self.transport.cleanup()


class RabbitClient:
    """Calls the agent RPC server ``host``."""

    def __init__(self, conf, url, host):
        self.host = host
        self._conf, self._url = conf, url
        self.transport = _transport(conf, url)
        target = oslo_messaging.Target(exchange=EXCHANGE, topic=TOPIC, server=host)
        self._client = oslo_messaging.get_rpc_client(self.transport, target,
                                                     serializer=BytesSerializer())
        self._prepared = {}
        self._reached = False

    def call(self, method, version, args, timeout, monitor=None):
        """Send one request; return the reply envelope.

        Raises ``AgentUnavailable`` when no reply arrives within ``timeout``,
        or, with ``monitor``, when the agent sends no heartbeat for that many
        seconds while the call runs (oslo.messaging's call monitor: a dead
        agent is noticed without waiting out a long timeout);
        ``VersionTooOld`` when oslo.messaging's dispatcher refuses the version.
        """
        started = time.monotonic()
        remaining = timeout
        if not self._reached:
            self._wait_for_agent(method, timeout, started + timeout)
            remaining = max(started + timeout - time.monotonic(), 0.001)
        try:
            return self._prepare(version, remaining, monitor).call(
                {DEADLINE_KEY: time.time() + remaining}, method, **args)
        except oslo_messaging.MessagingTimeout:
            self._reached = False  # unknown state: probe again before the next call
            if monitor and time.monotonic() < started + timeout - 0.1:
                raise exceptions.AgentUnavailable(
                    "Agent for host %s went silent during %s: no heartbeat for %ss"
                    % (self.host, method, monitor), host=self.host, method=method,
                    timeout=monitor) from None
            raise exceptions.AgentUnavailable(host=self.host, method=method,
                                              timeout=timeout) from None
        except oslo_messaging.RemoteError as e:
            raise _from_oslo_remote(e, self.host, method, version) from None
        except oslo_messaging.MessagingException as e:
            self._reached = False
            raise _broker_unreachable(e, self.host, method) from None

    def close(self):
        """Release the broker connection."""
        self.transport.cleanup()

    def _prepare(self, version, timeout, monitor):
        key = (version, timeout, monitor)
        cctxt = self._prepared.get(key)
        if cctxt is None:
            cctxt = self._client.prepare(version=version, timeout=timeout,
                                         call_monitor_timeout=monitor,
                                         retry=SEND_RETRIES)
            if len(self._prepared) < 64:  # configured timeouts: a handful of keys
                self._prepared[key] = cctxt
        return cctxt

    def _wait_for_agent(self, method, timeout, deadline):
        # A broker that is away would hold the first call in oslo.messaging's
        # reconnection for ever: ask it first, within the call's time.
        check_broker(self._conf, self._url,
                     min(BROKER_CONNECT_SECONDS, max(deadline - time.monotonic(), 0.1)))
        for attempt in range(1 << 30):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise exceptions.AgentUnavailable(host=self.host, method=method,
                                                  timeout=timeout)
            probe = min(_PROBE_SECONDS[min(attempt, len(_PROBE_SECONDS) - 1)], remaining)
            try:
                self._prepare(methods.METHODS["describe"].since, probe, None).call(
                    {}, "describe")
            except oslo_messaging.MessagingTimeout:
                continue
            except oslo_messaging.RemoteError:
                pass  # it answered, even if oddly: the queue exists
            except oslo_messaging.MessagingException as e:
                raise _broker_unreachable(e, self.host, method) from None
            self._reached = True
            return


def _broker_unreachable(error, host, method):
    """The call could not go out (or its answer come back) through the broker."""
    reason = (str(error).splitlines() or [""])[0]
    return exceptions.AgentUnavailable(
        "Cannot reach the agent for host %s through the message broker to call %s: "
        "%s: %s" % (host, method, type(error).__name__, reason),
        host=host, method=method, timeout=None)


def _from_oslo_remote(error, host, method, version):
    """Map oslo.messaging's own refusals to our typed errors."""
    if error.exc_type == "UnsupportedVersion":
        return exceptions.VersionTooOld(host=host, method=method,
                                        have="older than %s" % version, need=version)
    if error.exc_type == "NoSuchMethod":
        return exceptions.InvalidRequest(method=method, field="method",
                                         reason="not declared by the agent's interface")
    # Only the first line: oslo.messaging appends the remote traceback.
    value = (str(error.value or "").splitlines() or [""])[0]
    return exceptions.RemoteError(exc_type=error.exc_type, value=value)
