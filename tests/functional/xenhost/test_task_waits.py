"""XapiSession waits for XAPI tasks with event.from, against the simulator."""

import signal
import threading
import time

import pytest

from nova_xen_split.xenhost import xapi
from rpc import exceptions
from tests.conftest import SIM_PASSWORD
from tests.functional.simulator.conftest import TEST_PLUGIN, write_plugin

MiB = 1 << 20


@pytest.fixture
def sim(make_sim, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    write_plugin(plugins, "test_plugin.py", TEST_PLUGIN)
    return make_sim(extra_args=["--plugin-dir", str(plugins), "--no-loop-devices"])


@pytest.fixture
def session(sim):
    with xapi.XapiSession(sim.url, "root", SIM_PASSWORD, timeout=10) as s:
        yield s


def _slow_plugin_task(session, seconds):
    return session.call("Async.host.call_plugin", session.host_ref, "test_plugin.py",
                        "sleep", {"seconds": str(seconds)})


def test_a_task_is_seen_ending_at_once_and_its_result_returned(session):
    task = _slow_plugin_task(session, 0.6)
    started = time.monotonic()

    result = session.wait_for_task(task, timeout=20)

    waited = time.monotonic() - started
    assert xapi.task_result_value(result) == "slept"
    assert 0.5 < waited < 1.5
    with pytest.raises(exceptions.XapiFailure) as gone:
        session.call("task.get_status", task)
    assert gone.value.code == "HANDLE_INVALID"  # destroyed after the wait


def test_other_calls_on_the_session_go_on_while_a_thread_waits(session):
    task = _slow_plugin_task(session, 2.0)
    waiter = threading.Thread(target=session.wait_for_task, args=(task, 20))
    waiter.start()
    time.sleep(0.3)

    started = time.monotonic()
    session.call("VM.get_all")
    quick = time.monotonic() - started

    waiter.join(20)
    assert quick < 0.5


def test_a_failed_task_raises_its_error_info(session):
    task = session.call("Async.host.call_plugin", session.host_ref, "test_plugin.py",
                        "boom", {"what": "x"})
    with pytest.raises(exceptions.XapiFailure) as failed:
        session.wait_for_task(task, timeout=20)
    assert failed.value.code == "XENAPI_PLUGIN_FAILURE"


def test_a_task_destroyed_by_someone_else_is_handle_invalid(session, sim):
    task = _slow_plugin_task(session, 5.0)
    other = sim.session()
    threading.Timer(0.3, other.xenapi.task.destroy, args=(task,)).start()
    started = time.monotonic()

    with pytest.raises(exceptions.XapiFailure) as gone:
        session.wait_for_task(task, timeout=20)

    assert gone.value.details == ["HANDLE_INVALID", "task", task]
    assert time.monotonic() - started < 2.0


def test_a_task_still_running_past_the_timeout_is_task_timeout(session):
    task = _slow_plugin_task(session, 3.0)
    started = time.monotonic()
    with pytest.raises(exceptions.XapiFailure) as late:
        session.wait_for_task(task, timeout=0.5)
    assert late.value.code == "TASK_TIMEOUT"
    assert time.monotonic() - started < 1.5


def test_call_async_returns_the_messages_value(session):
    sr = session.call("pool.get_default_SR", session.call("pool.get_all")[0])
    vdi = session.call_async("VDI.create", {
        "name_label": "async", "SR": sr, "virtual_size": str(4 * MiB), "type": "user",
        "sharable": False, "read_only": False, "other_config": {}}, timeout=20)
    assert vdi.startswith("OpaqueRef:")
    assert session.call_async("VDI.destroy", vdi, timeout=20) == ""


def test_a_wait_cut_by_a_xapi_restart_is_connection_failed_at_once(session, sim):
    task = _slow_plugin_task(session, 5.0)
    stop = threading.Timer(0.5, sim.proc.send_signal, args=(signal.SIGTERM,))
    stop.start()
    started = time.monotonic()
    with pytest.raises(exceptions.XapiFailure) as cut:
        session.wait_for_task(task, timeout=60)
    stop.join()
    assert cut.value.code == "CONNECTION_FAILED"
    assert time.monotonic() - started < 5
