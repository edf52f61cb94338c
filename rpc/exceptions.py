"""Typed errors that cross the driver/agent wire.

An exception raised by the agent for a reason the caller can act on is one of
these. The server sends ``(type name, message, kwargs)``; the client raises the
same class again from :data:`REGISTRY`. Anything else reaches the client as
:class:`RemoteError` with the original type name and message only, never a
traceback of the agent's internals.
"""


class NovaXenSplitError(Exception):
    """Base of every error of the project.

    Subclasses keep their constructor keyword arguments in ``self.kwargs`` so
    the error can be rebuilt on the other side of the wire with the same facts.
    """

    msg_fmt = "An unknown error occurred."

    def __init__(self, message=None, **kwargs):
        self.kwargs = kwargs
        if message is None:
            try:
                message = self.msg_fmt % kwargs
            except (KeyError, TypeError):
                message = self.msg_fmt
        self.message = message
        super().__init__(message)

    def to_wire(self):
        """What the server sends: type name, message, keyword facts."""
        return {"type": type(self).__name__, "message": self.message, "kwargs": self.kwargs}


class InvalidRequest(NovaXenSplitError):
    """A request broke the interface: unknown method, bad or missing argument."""

    msg_fmt = "Invalid request for %(method)s: %(field)s: %(reason)s"


class UnsupportedInIndependentMode(NovaXenSplitError):
    """The agent runs independently of any local VM and cannot do this."""

    msg_fmt = (
        "%(feature)s is not supported when the agent runs in independent mode "
        "(%(option)s)"
    )


class NotSupportedWithOption(NovaXenSplitError):
    """A configuration option cannot be served by the chosen mode."""

    msg_fmt = (
        "%(operation)s is not supported in conjunction with the current "
        "%(option)s setting"
    )


class XapiFailure(NovaXenSplitError):
    """XAPI refused a call; ``details`` is XAPI's error description list."""

    msg_fmt = "XAPI failure: %(details)s"

    @property
    def details(self):
        return list(self.kwargs.get("details") or [])

    @property
    def code(self):
        details = self.details
        return details[0] if details else None


class AgentUnavailable(NovaXenSplitError):
    """No answer from the agent in time (or it cannot be reached)."""

    msg_fmt = "Agent for host %(host)s did not answer %(method)s within %(timeout)ss"


class VersionTooOld(NovaXenSplitError):
    """The agent speaks an older interface than the call needs."""

    msg_fmt = (
        "Agent for host %(host)s speaks interface %(have)s; %(method)s needs "
        "%(need)s"
    )


class AccessDenied(NovaXenSplitError):
    """The agent's local socket refused this process (permissions, peer uid)."""

    msg_fmt = "Process uid %(uid)s may not use the agent socket %(path)s"


class ImageFetchFailed(NovaXenSplitError):
    """The image could not be fetched from the image service."""

    msg_fmt = "Image %(image_id)s could not be fetched: %(reason)s"


class ImageUploadFailed(NovaXenSplitError):
    """A snapshot could not be uploaded to the image service; the image
    record was deleted unless it had become active."""

    msg_fmt = "Image %(image_id)s could not be uploaded: %(reason)s"


class DiskOperationFailed(NovaXenSplitError):
    """A disk tool or a disk operation failed."""

    msg_fmt = "%(operation)s failed on %(target)s: %(reason)s"


class CallExpired(NovaXenSplitError):
    """The caller gave up (its call timed out) before the agent could hand
    over a result: the call was not run, or what it made was removed."""

    msg_fmt = "%(method)s: its caller gave up (%(why)s), so %(outcome)s"


class TransportUnusable(AgentUnavailable):
    """The configured transport cannot be used: a URL oslo.messaging cannot
    load, or a broker that refuses or does not answer. The agent cannot be
    reached either, so it is an AgentUnavailable (a caller that waits for
    the agent keeps waiting, within its bound)."""

    msg_fmt = "%(option)s: %(reason)s"


class ConsoleLogUnavailable(NovaXenSplitError):
    """An instance's console log cannot be read (not running, no log)."""

    msg_fmt = "No console log of instance %(instance_uuid)s: %(reason)s"


class RemoteError(NovaXenSplitError):
    """An unexpected exception in the agent, reduced to its type and message."""

    msg_fmt = "Remote error %(exc_type)s: %(value)s"


REGISTRY = {
    cls.__name__: cls
    for cls in (
        NovaXenSplitError,
        InvalidRequest,
        UnsupportedInIndependentMode,
        NotSupportedWithOption,
        XapiFailure,
        AgentUnavailable,
        VersionTooOld,
        AccessDenied,
        ImageFetchFailed,
        ImageUploadFailed,
        DiskOperationFailed,
        CallExpired,
        TransportUnusable,
        ConsoleLogUnavailable,
        RemoteError,
    )
}


def to_wire(exc):
    """Reduce any exception to the dict the server sends back."""
    if isinstance(exc, NovaXenSplitError) and type(exc).__name__ in REGISTRY:
        return exc.to_wire()
    return {
        "type": "RemoteError",
        "message": "Remote error %s: %s" % (type(exc).__name__, exc),
        "kwargs": {"exc_type": type(exc).__name__, "value": str(exc)},
    }


def from_wire(payload):
    """Rebuild the typed exception from what :func:`to_wire` produced."""
    cls = REGISTRY.get(payload.get("type"), RemoteError)
    kwargs = payload.get("kwargs") or {}
    if cls is RemoteError and payload.get("type") != "RemoteError":
        kwargs = {"exc_type": payload.get("type"), "value": payload.get("message")}
    exc = cls(payload.get("message"), **kwargs)
    return exc
