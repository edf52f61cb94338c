"""XAPI's VHD export of a snapshot, read as the independent backend reads it.

The simulator answers ``GET /export_raw_vdi?format=vhd`` over real HTTP
with ``Connection: close``, as XAPI does; the VHD goes into a socket pair
standing for Glance's connection, spliced where the platform can.
"""

import os
import socket
import threading

import pytest

from agent import snapshot
from nova_xen_split.xenhost import xapi

MiB = 1 << 20


@pytest.fixture
def session(xapi_sim):
    s = xapi.XapiSession(xapi_sim.url, "root", xapi_sim.password, timeout=60).login()
    yield s
    s.logout()


def _snapshot_with_data(session, xapi_sim, size):
    pool = session.call("pool.get_all")[0]
    sr = session.call("pool.get_default_SR", pool)
    root = session.call("VDI.create", {
        "name_label": "root", "name_description": "", "SR": sr,
        "virtual_size": str(size), "type": "user", "sharable": False, "read_only": False,
        "other_config": {}, "xenstore_data": {}, "sm_config": {}, "tags": []})
    path = os.path.join(xapi_sim.state_dir, "sr", session.call("SR.get_uuid", sr),
                        session.call("VDI.get_uuid", root) + ".raw")
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(MiB))
    snap = session.call("VDI.snapshot", root, {})
    session.call("VDI.destroy", root)
    return snap


def _fds():
    return set(os.listdir("/proc/self/fd"))


def test_an_export_is_spliced_whole_and_leaves_no_descriptor(session, xapi_sim):
    snap = _snapshot_with_data(session, xapi_sim, 16 * MiB)
    ours, theirs = socket.socketpair()
    received = []

    def drain():
        while True:
            data = theirs.recv(MiB)
            if not data:
                return
            received.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    before = _fds()
    export = snapshot.VdiExport(session, snap).open()
    try:
        pieces = list(export.pieces())
        sent = sum(snapshot.send_piece(ours, piece) for piece in pieces)
        export.finish()
    finally:
        export.close()
    after = _fds()
    ours.shutdown(socket.SHUT_WR)
    reader.join(30)
    ours.close()
    theirs.close()

    if hasattr(os, "splice"):
        assert [type(p).__name__ for p in pieces] == ["_SplicedBody"]
    vhd = b"".join(received)
    assert sent == export.length == len(vhd)
    assert vhd[-512:].startswith(b"conectix")          # the VHD footer ends it
    assert after - before == set()                      # socket and pipe closed
