"""What XAPI's dispatcher says when a call's parameters do not unmarshal.

The dispatcher xen-api generates converts each wire value with the
``*_of_rpc`` functions of rpclib (ocaml-rpc ``src/lib/rpc.ml``) before it
looks at the session. Their failures are OCaml exceptions, which reach the
caller as ``INTERNAL_ERROR [Printexc.to_string exn]`` (xen-api
``ocaml/xapi/exnHelper.ml``, ``error_of_exn``, last case), so their text is
OCaml's printing of the exception: ``Failure("...")``,
``Server_helpers.Dispatcher_FieldNotFound("name")``.
"""

import xmlrpc.client

from dom0.simulator import errors
from dom0.simulator import model


def _ocaml_string(text):
    """``text`` as OCaml's ``%S`` prints it (Printexc quotes string arguments)."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char == "\r":
            out.append("\\r")
        elif char == "\b":
            out.append("\\b")
        elif 0x20 <= byte < 0x7f:
            out.append(char)
        else:
            out.append("\\%03d" % byte)
    return '"%s"' % "".join(out)


def exception_text(name, *args):
    """Printexc.to_string of an exception whose arguments are all strings."""
    return "%s(%s)" % (name, ", ".join(_ocaml_string(a) for a in args))


def rpc_text(value):
    """A wire value as rpclib's ``Rpc.to_string`` shows it in its errors."""
    if value is None:
        return "N"
    if isinstance(value, bool):
        return "B(%s)" % ("true" if value else "false")
    if isinstance(value, int):
        return "I(%d)" % value
    if isinstance(value, float):
        return "F(%g)" % value
    if isinstance(value, str):
        return "S(%s)" % value
    if isinstance(value, xmlrpc.client.DateTime):
        return "D(%s)" % value.value
    if isinstance(value, (list, tuple)):
        return "[%s]" % ";".join(rpc_text(v) for v in value)
    if isinstance(value, dict):
        return "{%s}" % ";".join("%s:%s" % (k, rpc_text(v)) for k, v in value.items())
    return "S(%s)" % value  # base64 and the like: not an rpclib value


def failure(message):
    """INTERNAL_ERROR for an OCaml ``Failure message``."""
    return errors.XapiError(errors.INTERNAL_ERROR, exception_text("Failure", message))


def check_string(value):
    """rpc.ml, string_of_rpc."""
    if not isinstance(value, str):
        raise failure("Expected string, got '%s'" % rpc_text(value))


def check_string_map(value):
    """A (string → string) map: ppx_deriving_rpc's Dict case, string_of_rpc inside."""
    if not isinstance(value, dict):
        raise failure("Expecting Rpc.Dict, but found '%s'" % rpc_text(value))
    for item in value.values():
        check_string(item)


def constructor(cls):
    """The unmarshal check of ``<cls>.create``: ``[session, record]``.

    gen_server.ml, operation (from_ctor_record): the record must be a
    struct ("bad __structure"), and every field without a default must be
    in it, looked up in declaration order (server_helpers.ml, my_assoc).
    """
    required = model.CLASSES[cls].ctor_required

    def check(params):
        record = params[1]
        if not isinstance(record, dict):
            raise failure("bad __structure")
        for field in required:
            if field not in record:
                raise errors.XapiError(errors.INTERNAL_ERROR, exception_text(
                    "Server_helpers.Dispatcher_FieldNotFound", field))
    return check
