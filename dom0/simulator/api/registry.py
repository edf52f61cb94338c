"""The table of XAPI messages the simulator implements.

Each message is a plain function ``fn(host, session_ref, *params)`` registered
with :func:`message`. Dispatch checks, in XAPI's order: the message exists
(MESSAGE_METHOD_UNKNOWN), the number of parameters (MESSAGE_PARAMETER_COUNT_
MISMATCH, counting the session), then the session (SESSION_INVALID).
"""

import inspect

MESSAGES = {}


class Message:
    def __init__(self, name, fn, locked, async_ok, needs_session):
        self.name = name
        self.fn = fn
        self.locked = locked
        self.async_ok = async_ok
        self.needs_session = needs_session
        params = list(inspect.signature(fn).parameters.values())
        # fn(host, *xapi_params); the session, when there is one, is the
        # first XAPI parameter and counts as one, as XAPI counts it.
        self.arity = len(params) - 1
        self.optional = sum(1 for p in params if p.default is not inspect.Parameter.empty)


def message(name, locked=True, async_ok=False, needs_session=True):
    """Register ``fn`` as XAPI message ``name`` (``Class.verb``).

    ``locked``: run with the store lock held for the whole call (short calls);
    long calls (copies, plugins, scans) take the lock themselves.
    ``async_ok``: XAPI offers ``Async.<name>`` for it.
    """
    def register(fn):
        MESSAGES[name] = Message(name, fn, locked, async_ok, needs_session)
        return fn
    return register
