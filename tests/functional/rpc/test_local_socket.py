"""What only the local Unix socket transport has to guarantee: access
control, resistance to garbage, stale socket files, several calls in flight
on one connection."""

import errno
import os
import socket
import stat
import struct
import time

import msgpack
import pytest

from rpc import exceptions
from rpc.transports import framing, local_client
from tests.conftest import need
from tests.functional.rpc.conftest import Pair, unique_host
from tests.functional.rpc.endpoint import VALID_ARGS, VDI

NOBODY = 65534


def need_root():
    need(os.geteuid() == 0, "connecting as another uid needs root")


@pytest.fixture
def unix(socket_dir):
    pair = Pair("unix", socket_dir)
    yield pair
    pair.cleanup()


def _as_user(uid, gid, action):
    """Fork, drop to ``uid``/``gid``, run ``action()`` (→ bytes); return its bytes.

    A real second user is the only honest way to exercise the kernel's
    permission check and SO_PEERCRED. The child only touches a socket and
    objects created after the fork.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            outcome = action()
        except BaseException as e:  # report, never return into pytest
            outcome = b"ERROR:" + repr(e).encode()
        os.write(write_fd, outcome)
        os._exit(0)
    os.close(write_fd)
    chunks = []
    while True:
        chunk = os.read(read_fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    return b"".join(chunks)


def _send_raw(path, request):
    def action():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        try:
            sock.connect(path)
        except PermissionError:
            return b"EACCES"
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)  # one request; the server then closes
        reply = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"REPLY:" + reply
            reply += chunk
    return action


def _call_with_client(path):
    def action():
        try:
            reply = local_client.LocalClient(path, "h").call("describe", "1.0", {}, 5)
            error = exceptions.from_wire(reply["error"]) if "error" in reply else None
        except exceptions.NovaXenSplitError as e:
            error = e
        return ("%s: %s" % (type(error).__name__, error)).encode()
    return action


def _describe_frame(request_id=1):
    return framing.pack({"id": request_id, "method": "describe", "version": "1.0", "args": {}})


def _decode_reply(outcome):
    assert outcome.startswith(b"REPLY:"), outcome
    body = outcome[len(b"REPLY:"):]
    (size,) = struct.unpack("!I", body[:4])
    return msgpack.unpackb(body[4:4 + size], raw=False)


def test_socket_is_created_owner_only(unix):
    srv, _ = unix.agent(unique_host())
    mode = os.stat(srv._transport.path).st_mode

    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_socket_group_gets_mode_0660_and_that_group(unix):
    srv, _ = unix.agent(unique_host(), socket_group="nogroup")
    info = os.stat(srv._transport.path)

    assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == NOBODY


def test_unknown_socket_group_is_refused_at_construction(unix):
    with pytest.raises(ValueError, match="socket_group 'no-such-group-xyz'"):
        unix.agent(unique_host(), socket_group="no-such-group-xyz")


def test_other_user_is_refused_by_the_socket_permissions(unix):
    need_root()
    srv, endpoint = unix.agent(unique_host())

    outcome = _as_user(NOBODY, NOBODY, _send_raw(srv._transport.path, _describe_frame()))

    assert outcome == b"EACCES"
    assert endpoint.calls == []


def test_other_user_is_refused_by_peer_credentials_even_with_loose_permissions(unix):
    need_root()
    host = unique_host()
    srv, endpoint = unix.agent(host)
    os.chmod(srv._transport.path, 0o666)  # an operator's mistake

    outcome = _as_user(NOBODY, NOBODY, _send_raw(srv._transport.path, _describe_frame()))
    reply = _decode_reply(outcome)

    assert reply["id"] == 0 and reply["error"]["type"] == "AccessDenied"
    assert reply["error"]["kwargs"]["uid"] == NOBODY
    assert endpoint.calls == []
    assert unix.api(host).describe()["host"] == host  # and it keeps serving


def test_member_of_the_socket_group_is_served(unix):
    need_root()
    host = unique_host()
    srv, endpoint = unix.agent(host, socket_group="nogroup")

    outcome = _as_user(NOBODY, NOBODY, _send_raw(srv._transport.path, _describe_frame(7)))
    reply = _decode_reply(outcome)

    assert reply["id"] == 7 and reply["result"]["host"] == host
    assert endpoint.names_called() == ["describe"]


def test_client_reports_either_refusal_as_access_denied(unix):
    need_root()
    srv, _ = unix.agent(unique_host())
    path = srv._transport.path

    by_mode = _as_user(NOBODY, NOBODY, _call_with_client(path))
    os.chmod(path, 0o666)
    by_peer_check = _as_user(NOBODY, NOBODY, _call_with_client(path))

    expected = ("AccessDenied: Process uid %d may not use the agent socket %s"
                % (NOBODY, path)).encode()
    assert by_mode == expected
    assert by_peer_check == expected


GARBAGE = [
    ("oversized length", struct.pack("!I", framing.MAX_FRAME_BYTES + 1) + b"x" * 64),
    ("not msgpack", struct.pack("!I", 4) + b"\xc1\xc1\xc1\xc1"),
    ("msgpack but not a request", framing.pack([1, 2, 3])),
    ("request without an id", framing.pack({"method": "describe", "args": {}})),
    ("truncated frame", struct.pack("!I", 100) + b"abc"),
    # The first byte makes the length header oversized: a smaller length
    # would have the server wait for the rest of a frame that never comes.
    ("random bytes", b"\xff" + os.urandom(2999)),
]


@pytest.mark.parametrize("garbage", [g for _, g in GARBAGE], ids=[n for n, _ in GARBAGE])
def test_garbage_gets_a_last_word_and_a_close_and_the_server_keeps_serving(unix, garbage):
    host = unique_host()
    srv, endpoint = unix.agent(host)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(srv._transport.path)

    sock.sendall(garbage)
    truncated = garbage.endswith(b"abc")
    if truncated:
        sock.shutdown(socket.SHUT_WR)
    received = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    except ConnectionResetError:  # closed with our garbage still unread
        pass
    sock.close()

    # The server closed the connection (the loop above ended) and, unless
    # the peer hung up mid-frame, said why first: an id-0 InvalidRequest.
    if truncated:
        assert received == b""
    else:
        (size,) = struct.unpack("!I", received[:4])
        reply = msgpack.unpackb(received[4:4 + size], raw=False)
        assert len(received) == 4 + size and reply["id"] == 0
        error = exceptions.from_wire(reply["error"])
        assert isinstance(error, exceptions.InvalidRequest)
        assert error.kwargs["field"] in ("frame", "request")
    assert unix.api(host).describe()["host"] == host
    assert endpoint.names_called() == ["describe"]


def test_replies_on_one_connection_are_matched_by_request_id(unix):
    host = unique_host()
    srv, endpoint = unix.agent(host)
    endpoint.delay["generate_disk"] = 30
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(srv._transport.path)

    sock.sendall(framing.pack({"id": 1, "method": "generate_disk", "version": "1.0",
                               "args": VALID_ARGS["generate_disk"]}))
    sock.sendall(framing.pack({"id": 2, "method": "destroy_vdis", "version": "1.0",
                               "args": {"vdi_uuids": [VDI]}}))
    first = framing.read_frame(sock)
    endpoint.release.set()
    second = framing.read_frame(sock)
    sock.close()

    assert first == {"id": 2, "result": {"destroyed": 1}}
    assert second["id"] == 1 and second["result"]["size_bytes"] == 1024 << 20


def test_stale_socket_file_is_replaced_at_start(unix):
    host = unique_host()
    conf = unix.conf(host)
    path = conf.transport_url[len("unix://"):]
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # bound, never listening: what a killed agent leaves
    stale.close()

    unix.agent(host)

    assert unix.api(host).describe()["host"] == host


def test_second_agent_on_a_live_socket_refuses_to_start_and_leaves_it(unix):
    host = unique_host()
    srv, _ = unix.agent(host)
    inode = os.stat(srv._transport.path).st_ino

    with pytest.raises(OSError) as raised:
        unix.agent(host)

    assert raised.value.errno == errno.EADDRINUSE
    assert os.stat(srv._transport.path).st_ino == inode
    assert unix.api(host).describe()["host"] == host


def test_path_that_is_not_a_socket_is_left_alone(unix):
    host = unique_host()
    path = unix.conf(host).transport_url[len("unix://"):]
    with open(path, "w") as f:
        f.write("precious")

    with pytest.raises(OSError):
        unix.agent(host)

    with open(path) as f:
        assert f.read() == "precious"


def test_no_agent_listening_raises_agent_unavailable_after_the_timeout(unix):
    api = unix.api(unique_host(), rpc_timeout=0.3)

    started = time.monotonic()
    with pytest.raises(exceptions.AgentUnavailable):
        api.describe()

    assert 0.3 <= time.monotonic() - started < 0.8


@pytest.mark.parametrize("version", [{}, {"version": None}, {"version": "\u0661.\u0660"},
                                     {"version": 1.0}])
def test_a_request_without_a_well_formed_version_is_refused_and_not_run(unix, version):
    host = unique_host()
    srv, endpoint = unix.agent(host)
    request = {"id": 7, "method": "destroy_vdis", "args": {"vdi_uuids": [VDI]}}
    request.update(version)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(srv._transport.path)
    sock.sendall(framing.pack(request))
    reply = framing.read_frame(sock)
    sock.close()

    assert reply["id"] == 7
    error = exceptions.from_wire(reply["error"])
    assert isinstance(error, exceptions.InvalidRequest)
    assert error.kwargs["field"] == "version"
    assert endpoint.names_called() == []


def test_a_request_too_big_for_one_frame_is_an_invalid_request_not_a_dead_agent(unix):
    host = unique_host()
    _, endpoint = unix.agent(host)
    api = unix.api(host)
    files = [["/f%d" % n, bytes(1 << 20)] for n in range(20)]   # each within the schema

    with pytest.raises(exceptions.InvalidRequest) as by_schema:
        api.generate_configdrive(**dict(VALID_ARGS["generate_configdrive"], files=files))
    assert by_schema.value.kwargs["field"] == "files"  # 20 MiB together: refused first
    with pytest.raises(exceptions.InvalidRequest) as caught:
        api._call("generate_configdrive", "1.0", dict(
            VALID_ARGS["generate_configdrive"], files=files), check=False)

    assert caught.value.kwargs["field"] == "args"
    assert "exceeds the %d byte limit" % framing.MAX_FRAME_BYTES in str(caught.value)
    assert endpoint.names_called() == []
    assert api.describe()["host"] == host       # the connection is fine

