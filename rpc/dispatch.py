"""Server-side dispatch shared by both transports.

A transport hands over ``(method, version, args)`` as it came off the wire
and sends back the envelope this module returns: ``{"result": dict}`` or
``{"error": {"type", "message", "kwargs"}}``. Everything between the wire
and the endpoint happens here, in this order: version check, method
allow-list, argument validation, a worker slot (unless the method is a
control call), the endpoint call, the result check, error reduction.
"""

import contextvars
import logging
import threading

from oslo_log import log as oslo_logging

from rpc import exceptions
from rpc import methods

LOG = oslo_logging.getLogger(__name__)


# The running call's ``caller_gone`` (see Dispatcher.run), for the endpoint's
# code to ask before it hands a result over.
_CALLER_GONE = contextvars.ContextVar("nxs_caller_gone", default=None)


def caller_gone():
    """Why the caller of the call running on this thread has given up, or
    None (also outside a call, or when its transport cannot tell)."""
    check = _CALLER_GONE.get()
    return check() if check is not None else None


def caller_gone_check():
    """The running call's ``caller_gone`` callable itself (or None), for work
    the call hands to other threads, where :func:`caller_gone` cannot see
    the call."""
    return _CALLER_GONE.get()


class Dispatcher:
    """Validates calls and runs them on ``endpoint``, at most ``workers`` at once.

    Control methods (``describe``) do not take a worker slot, so they are
    answered even while every slot is busy with long work.
    """

    def __init__(self, endpoint, workers, host, version=methods.VERSION):
        self.endpoint = endpoint
        self.host = host
        self.version = version
        self._slots = threading.BoundedSemaphore(workers)

    def check_target(self, method_name, version):
        """The declared method a call names at ``version``, by this server's
        one strict version parser (both transports use it).

        Raises ``VersionTooOld`` when this server's interface cannot serve
        the pinned version (checked first: an older server does not know a
        newer method), else ``InvalidRequest`` (a malformed version, an
        undeclared or private name).
        """
        if version is not None:
            try:
                serves = methods.version_serves(self.version, version)
            except ValueError as e:
                raise exceptions.InvalidRequest(method=str(method_name)[:64],
                                                field="version", reason=str(e)) from None
            if not serves:
                raise exceptions.VersionTooOld(host=self.host, method=str(method_name)[:64],
                                               have=self.version, need=version)
        return methods.lookup(method_name)

    def check(self, method_name, version, args):
        """Validate a call; return ``(Method, checked_args)``; raises as
        :meth:`check_target`, or ``InvalidRequest`` for its arguments."""
        method = self.check_target(method_name, version)
        return method, methods.validate(method.name, args, self.version)

    def refusal(self, error):
        """The envelope of a refused call, logged as one WARNING line (no
        traceback: any client may send one, and must not flood the log)."""
        LOG.warning("Refused call: %s", error)
        return {"error": error.to_wire()}

    def handle(self, method_name, version, args, caller_gone=None):
        """Check and run one call; return its envelope (never raises)."""
        try:
            method, checked = self.check(method_name, version, args)
        except exceptions.NovaXenSplitError as e:
            return self.refusal(e)
        return self.run(method, checked, caller_gone)

    def run(self, method, checked, caller_gone=None):
        """Call the endpoint with validated arguments; return the envelope.

        ``caller_gone``, if given, is asked once the call has a worker slot:
        a reason (text) when its caller has given up meanwhile, else None.
        Such a call is not run (``CallExpired``): nobody takes its result,
        and a disk it made would appear after the driver's undo had swept
        the instance. While the call runs, :func:`caller_gone` asks it too.
        """
        if LOG.isEnabledFor(logging.DEBUG):  # spare the masking work otherwise
            LOG.debug("Calling %s(%s)", method.name, methods.loggable(method.name, checked))
        try:
            if method.control:
                result = getattr(self.endpoint, method.name)(**checked)
            else:
                with self._slots:
                    why = caller_gone() if caller_gone is not None else None
                    if why:
                        raise exceptions.CallExpired(
                            method=method.name, why=why,
                            outcome="it was not run (it was waiting for a worker)")
                    token = _CALLER_GONE.set(caller_gone)
                    try:
                        result = getattr(self.endpoint, method.name)(**checked)
                    finally:
                        _CALLER_GONE.reset(token)
        except exceptions.CallExpired as e:
            LOG.warning("%s", e)
            return {"error": _wire_error(e)}
        except exceptions.NovaXenSplitError as e:
            LOG.info("%s failed: %s", method.name, e)
            return {"error": _wire_error(e)}
        except Exception as e:
            # The operator gets the traceback here; the caller only the
            # type and message (to_wire), never the agent's internals.
            LOG.exception("%s failed unexpectedly", method.name)
            return {"error": _wire_error(e)}
        problem = methods.check_result(method.name, result)
        if problem:
            LOG.error("Endpoint broke the interface: %s", problem)
            return {"error": exceptions.RemoteError(exc_type="InvalidResult",
                                                    value=problem).to_wire()}
        return {"result": result}


def _plain(value):
    if value is None or isinstance(value, (str, bool, int, float, bytes)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return str(value)


def _wire_error(exc):
    # An error's facts must survive msgpack and JSON; anything exotic an
    # endpoint put into its kwargs travels as text.
    payload = exceptions.to_wire(exc)
    payload["message"] = str(payload.get("message"))
    payload["kwargs"] = _plain(payload.get("kwargs") or {})
    return payload
