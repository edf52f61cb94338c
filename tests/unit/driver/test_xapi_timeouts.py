"""XapiSession's two timeouts: the login's, and each call's after it.

Against a minimal XML-RPC server in this process that answers like XAPI
(``{"Status": "Success", "Value": ...}``) and takes its time over one
message: what is tested is the client's socket handling, which the
simulator cannot slow down on purpose.
"""

import socketserver
import threading
import time
import xmlrpc.server

import pytest

from nova_xen_split import vm_utils
from nova_xen_split.xenhost import xapi
from rpc import exceptions

SLOW_SECONDS = 1.5


class _SlowXapi:
    def __init__(self):
        self.called = []

    def _dispatch(self, method, params):
        self.called.append(method)
        if method == "VM.clean_shutdown":
            time.sleep(SLOW_SECONDS)
        value = {"session.login_with_password": "OpaqueRef:session",
                 "session.get_this_host": "OpaqueRef:host"}.get(method, "")
        return {"Status": "Success", "Value": value}


class _KeepAlive(xmlrpc.server.SimpleXMLRPCRequestHandler):
    protocol_version = "HTTP/1.1"   # as XAPI: the SDK's connection is reused


class _Server(socketserver.ThreadingMixIn, xmlrpc.server.SimpleXMLRPCServer):
    daemon_threads = True   # a slow call does not hold up the next one, as on XAPI


@pytest.fixture
def slow_xapi():
    server = _Server(("127.0.0.1", 0), _KeepAlive, logRequests=False, allow_none=True)
    server.xapi = _SlowXapi()
    server.register_instance(server.xapi)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    server.url = "http://127.0.0.1:%d" % server.server_address[1]
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_a_call_may_outlast_the_login_timeout_when_given_its_own(slow_xapi):
    session = xapi.XapiSession(slow_xapi.url, "root", "pw", timeout=0.5,
                               call_timeout=SLOW_SECONDS * 4).login()
    assert session.call("VM.clean_shutdown", "OpaqueRef:vm") == ""


def test_without_a_call_timeout_the_login_timeout_bounds_every_call(slow_xapi):
    session = xapi.XapiSession(slow_xapi.url, "root", "pw", timeout=0.5).login()
    with pytest.raises(exceptions.XapiFailure) as caught:
        session.call("VM.clean_shutdown", "OpaqueRef:vm")
    assert caught.value.code == "CONNECTION_FAILED"


def test_a_clean_shutdown_cut_off_is_not_followed_by_a_hard_one(slow_xapi):
    # The guest may still be shutting down cleanly: pulling the plug then
    # would be the very thing a clean shutdown was asked to avoid.
    session = xapi.XapiSession(slow_xapi.url, "root", "pw", timeout=0.5).login()
    with pytest.raises(exceptions.XapiFailure) as caught:
        vm_utils.clean_shutdown(session, "OpaqueRef:vm")
    assert caught.value.code == "CONNECTION_FAILED"
    time.sleep(SLOW_SECONDS)
    assert "VM.clean_shutdown" in slow_xapi.xapi.called
    assert "VM.hard_shutdown" not in slow_xapi.xapi.called


def test_a_url_with_credentials_is_refused_without_showing_them():
    with pytest.raises(exceptions.XapiFailure) as caught:
        xapi.XapiSession("https://root:S3cret@xs.example:443/", "root", "pw")
    assert caught.value.details[1] == "https://xs.example:443"
    assert "S3cret" not in str(caught.value)
