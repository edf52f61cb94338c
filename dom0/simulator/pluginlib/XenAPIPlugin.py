"""XAPI's plugin dispatch contract, as dom0 ships it.

XAPI runs a plugin as ``/etc/xapi.d/plugins/<name> <methodCall-xml>``: one
argument, an XML-RPC ``methodCall`` named after the function with params
``[session_ref, {args}]``. The plugin prints an XML-RPC response whose single
value is ``{'Status': 'Success', 'Value': <string>}`` or
``{'Status': 'Failure', 'ErrorDescription': [code, params...]}``.

This is our own implementation of that documented contract, so a plugin runs
unchanged on a real dom0 (which ships its own ``XenAPIPlugin``) and under the
simulator. Python 3.6 compatible, standard library only.
"""

import sys
import xmlrpc.client


class Failure(Exception):
    """Raised by a plugin to return a specific XAPI error code."""

    def __init__(self, code, params):
        Exception.__init__(self)
        self.code = code
        self.params = [str(p) for p in params]

    def __str__(self):
        return "%s %s" % (self.code, self.params)


class PluginSession(object):
    """What a plugin function receives as its session.

    On dom0 this is a local XAPI session; plugins of this project only need
    the session reference, which the caller's session lends them.
    """

    def __init__(self, session_ref):
        self.handle = session_ref


def success_message(result):
    return xmlrpc.client.dumps(({"Status": "Success", "Value": result},), "", True)


def failure_message(code, params):
    description = [code] + [str(p) for p in params]
    return xmlrpc.client.dumps(
        ({"Status": "Failure", "ErrorDescription": description},), "", True)


def dispatch(fn_table):
    """Parse ``argv[1]``, run the named function and print its response."""
    if len(sys.argv) != 2:
        sys.stderr.write("usage: %s <xml-rpc methodCall>\n" % sys.argv[0])
        sys.exit(2)
    params, methodname = xmlrpc.client.loads(sys.argv[1])
    session_ref = params[0] if params else ""
    args = params[1] if len(params) > 1 else {}
    if methodname not in fn_table:
        print(failure_message("UNKNOWN_XENAPI_PLUGIN_FUNCTION", [methodname]))
        return
    try:
        result = fn_table[methodname](PluginSession(session_ref), args)
    except SystemExit:
        raise
    except Failure as e:
        print(failure_message(e.code, e.params))
        return
    except Exception as e:  # XAPI reports any plugin exception this way
        print(failure_message(
            "XENAPI_PLUGIN_FAILURE", [methodname, e.__class__.__name__, str(e)]))
        return
    if not isinstance(result, str):
        # XAPI requires a string result; anything else is the plugin's bug.
        print(failure_message(
            "XENAPI_PLUGIN_FAILURE",
            [methodname, "TypeError",
             "plugin returned %s, not a string" % type(result).__name__]))
        return
    print(success_message(result))
