"""Sessions as XAPI keeps them: not persisted, expiring when idle, a bounded
number per originator (ocaml/idl/datamodel.ml, session: PersistNothing;
ocaml/xapi/db_gc_util.ml, timeout_sessions and timeout_sessions_common;
ocaml/xapi/xapi_globs.ml, inactive_session_timeout and
max_sessions_per_originator; ocaml/xapi/xapi_http.ml, assert_credentials_ok)."""

import http.client
import json
import os
import time
import urllib.parse
import xmlrpc.client

import XenAPI

from tests.functional.simulator.simhelpers import new_vdi

MiB = 1 << 20


def _answer(sim, method, *params):
    """One XML-RPC call with no SDK in between (no automatic re-login)."""
    return getattr(xmlrpc.client.ServerProxy(sim.url, allow_none=True), method)(*params)


def _login(sim, originator):
    answer = _answer(sim, "session.login_with_password", "root", sim.password, "1.0",
                     originator)
    return answer["Value"]


def _valid(sim, session_ref):
    return _answer(sim, "pool.get_all", session_ref)["Status"] == "Success"


def _put_status(sim, session_ref, vdi_ref, body=b"\0" * 512):
    parts = urllib.parse.urlsplit(sim.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    query = urllib.parse.urlencode({"session_id": session_ref, "vdi": vdi_ref,
                                    "format": "raw"})
    try:
        conn.request("PUT", "/import_raw_vdi?" + query, body=body,
                     headers={"Content-Length": str(len(body))})
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_restart_forgets_every_session_calls_and_data_paths_refuse_them(make_sim):
    sim = make_sim(extra_args=["--no-loop-devices"])
    xs = sim.session()
    old = xs._session
    sr = xs.xenapi.pool.get_default_SR(xs.xenapi.pool.get_all()[0])
    vdi = new_vdi(xs.xenapi, sr, 4 * MiB)

    sim.restart()

    assert _answer(sim, "VDI.get_all", old)["ErrorDescription"] == ["SESSION_INVALID", old]
    assert _put_status(sim, old, vdi) == 401
    with open(os.path.join(sim.state_dir, "db.json")) as f:
        assert json.load(f).get("session", {}) == {}


def test_the_sdk_logs_in_again_after_a_restart(make_sim):
    # XenAPI.py, xenapi_request: SESSION_INVALID makes it log in again.
    sim = make_sim(extra_args=["--no-loop-devices"])
    xs = sim.session()
    before = xs._session
    sim.restart()
    assert xs.xenapi.pool.get_all()
    assert xs._session != before


def test_a_session_idle_past_the_timeout_expires(make_sim):
    sim = make_sim(extra_args=["--no-loop-devices", "--session-idle-seconds", "1"])
    idle = _login(sim, "idle")
    busy = _login(sim, "busy")
    for _ in range(6):  # 1.5 s of use, never 1 s apart
        time.sleep(0.25)
        assert _valid(sim, busy)

    assert _answer(sim, "pool.get_all", idle)["ErrorDescription"] == ["SESSION_INVALID", idle]
    assert _put_status(sim, busy, "OpaqueRef:none") != 401


def test_a_session_with_a_task_running_does_not_expire(make_sim):
    # timeout_sessions_common: only sessions whose tasks are all completed go.
    sim = make_sim(extra_args=["--no-loop-devices", "--session-idle-seconds", "1"])
    waiting = _login(sim, "waiting")
    _answer(sim, "task.create", waiting, "long", "")
    time.sleep(1.5)
    assert _valid(sim, waiting)


def test_past_500_sessions_of_one_originator_the_least_recently_used_go(make_sim):
    sim = make_sim(extra_args=["--no-loop-devices"])
    other = _login(sim, "someone else")
    first, second = _login(sim, "crowd"), _login(sim, "crowd")
    assert _valid(sim, first)  # now more recent than second
    rest = [_login(sim, "crowd") for _ in range(499)]

    assert _valid(sim, first)
    assert not _valid(sim, second)
    assert all(_valid(sim, ref) for ref in rest[-5:])
    assert _valid(sim, other)


def test_a_session_idle_timeout_that_is_not_positive_is_refused(tmp_path):
    import subprocess
    import sys
    out = subprocess.run(
        [sys.executable, "-m", "dom0.simulator.server", "--state-dir", str(tmp_path),
         "--session-idle-seconds", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--session-idle-seconds must be positive" in out.stderr


def test_the_sdk_without_a_login_to_repeat_cannot_recover(make_sim):
    sim = make_sim(extra_args=["--no-loop-devices"])
    s = XenAPI.Session(sim.url)
    s._session = sim.session()._session
    sim.restart()
    try:
        s.xenapi.pool.get_all()
    except xmlrpc.client.Fault as e:
        assert e.faultCode == 401
    else:
        raise AssertionError("a forgotten session was accepted")
