"""The table of XAPI messages the simulator implements.

Each message is a plain function ``fn(host, session_ref, *params)`` registered
with :func:`message`. Dispatch checks, in the order of the server that
xen-api generates (``ocaml/idl/ocaml_backend/gen_server.ml``, ``operation``):
the message exists (MESSAGE_METHOD_UNKNOWN), the number of parameters
(MESSAGE_PARAMETER_COUNT_MISMATCH, the session not counted), the parameters
unmarshal (INTERNAL_ERROR), then the session (SESSION_INVALID), then whether
an ``Async.`` call has an asynchronous mode.
"""

import inspect

MESSAGES = {}


class Message:
    def __init__(self, name, fn, locked, async_ok, needs_session, unmarshal=None):
        self.name = name
        self.fn = fn
        self.locked = locked
        self.async_ok = async_ok
        self.needs_session = needs_session
        # unmarshal(params): raises what XAPI's unmarshalling of the wire
        # values raises (a constructor's missing field, a non-string in a
        # string map); runs before the session check, as in XAPI.
        self.unmarshal = unmarshal
        params = list(inspect.signature(fn).parameters.values())
        # fn(host, *xapi_params); the session, when there is one, is the
        # first XAPI parameter.
        self.arity = len(params) - 1
        self.optional = sum(1 for p in params if p.default is not inspect.Parameter.empty)
        # What MESSAGE_PARAMETER_COUNT_MISMATCH counts: the parameters
        # without a default value, the session left out
        # (gen_server.ml, operation: msg_params_without_default_values).
        self.required = self.arity - self.optional - (1 if needs_session else 0)


def message(name, locked=True, async_ok=False, needs_session=True, unmarshal=None):
    """Register ``fn`` as XAPI message ``name`` (``Class.verb``).

    ``locked``: run with the store lock held for the whole call (short calls);
    long calls (copies, plugins, scans) take the lock themselves.
    ``async_ok``: XAPI offers ``Async.<name>`` for it (gen_client.ml,
    ``has_async``: constructors, destructors and custom messages declared
    async; never field accessors).
    ``unmarshal``: see :class:`Message`.
    """
    def register(fn):
        MESSAGES[name] = Message(name, fn, locked, async_ok, needs_session, unmarshal)
        return fn
    return register
