"""Agents that come late, die and come back, and share a broker."""

import concurrent.futures
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from rpc import client, exceptions, transports
from tests.conftest import RABBIT_HOST, RABBIT_PORT
from tests.functional.rpc.conftest import Pair, client_queues, rabbit_queues, unique_host
from tests.functional.rpc.endpoint import INSTANCE, VALID_ARGS, VDI

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


class ChildAgent:
    """An agent process (tests/functional/rpc/agent_child.py)."""

    def __init__(self, transport_url, host, *delays):
        self.incarnation = str(uuid.uuid4())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.functional.rpc.agent_child", transport_url, host,
             self.incarnation, *delays],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.kill()
            raise RuntimeError("child agent did not start: %r" % line)

    def kill(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self.proc.stdout.close()


@pytest.fixture
def children():
    started = []
    yield started
    for child in started:
        child.kill()


def test_client_started_before_its_agent_gets_its_answer_once_the_agent_is_up(transport):
    host = unique_host()
    api = transport.api(host, rpc_timeout=15)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(api.destroy_vdis, vdi_uuids=[VDI, INSTANCE])
        time.sleep(1.0)
        assert not pending.done()
        _, endpoint = transport.agent(host)

        assert pending.result(timeout=20) == {"destroyed": 2}
    assert endpoint.names_called().count("destroy_vdis") == 1


def test_agent_stopping_answers_the_calls_it_has_accepted(transport):
    host = unique_host()
    srv, endpoint = transport.agent(host)
    api = transport.api(host)
    api.describe()
    endpoint.delay["generate_disk"] = 0.5

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(api.generate_disk, **VALID_ARGS["generate_disk"])
        while "generate_disk" not in endpoint.names_called():
            time.sleep(0.01)
        srv.stop()
        srv.wait()

        assert pending.result(timeout=10)["size_bytes"] == 1024 << 20


def test_agent_killed_and_restarted_serves_the_next_call(transport, children):
    host = unique_host()
    url = transport.conf(host).transport_url
    api = transport.api(host, rpc_timeout=15)
    first = ChildAgent(url, host)
    children.append(first)
    assert api.describe()["vm_uuid"] == first.incarnation

    first.kill(signal.SIGKILL)  # a crash: no clean-up, a stale socket file
    second = ChildAgent(url, host)
    children.append(second)

    assert api.describe()["vm_uuid"] == second.incarnation
    assert api.destroy_vdis(vdi_uuids=[VDI]) == {"destroyed": 1}


def test_agent_stopped_cleanly_and_restarted_serves_the_next_call(transport, children):
    host = unique_host()
    url = transport.conf(host).transport_url
    api = transport.api(host, rpc_timeout=15)
    first = ChildAgent(url, host)
    children.append(first)
    assert api.describe()["vm_uuid"] == first.incarnation

    first.kill(signal.SIGTERM)
    second = ChildAgent(url, host)
    children.append(second)

    assert api.describe()["vm_uuid"] == second.incarnation


def test_two_agents_on_one_broker_each_receive_only_their_own_calls(rabbit_url, socket_dir):
    pair = Pair("rabbit", socket_dir)
    try:
        host_a, host_b = unique_host("hv-a"), unique_host("hv-b")
        _, endpoint_a = pair.agent(host_a)
        _, endpoint_b = pair.agent(host_b)
        api_a, api_b = pair.api(host_a), pair.api(host_b)

        for n in range(5):
            vdi_uuids = ["%s%04d" % (VDI[:-4], i) for i in range(n + 1)]  # distinct
            assert api_a.destroy_vdis(vdi_uuids=vdi_uuids) == {"destroyed": n + 1}
            assert api_b.describe()["host"] == host_b

        assert [n for n in endpoint_a.names_called() if n != "describe"] == ["destroy_vdis"] * 5
        assert set(endpoint_b.names_called()) == {"describe"}
        assert api_a.describe()["host"] == host_a
        queues = rabbit_queues(transports.TOPIC + ".")
        assert {transports.TOPIC + "." + host_a, transports.TOPIC + "." + host_b} <= set(queues)
    finally:
        pair.cleanup()


def test_agent_dying_mid_call_fails_the_call_long_before_its_timeout(transport, children):
    host = unique_host()
    url = transport.conf(host).transport_url
    api = transport.api(host, rpc_timeout=2, long_rpc_timeout=60)
    agent = ChildAgent(url, host, "generate_disk=120")
    children.append(agent)
    api.describe()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(api.generate_disk, **VALID_ARGS["generate_disk"])
        time.sleep(1.0)  # the call is running in the agent
        killed = time.monotonic()
        agent.kill(signal.SIGKILL)

        with pytest.raises(exceptions.AgentUnavailable) as raised:
            pending.result(timeout=90)
    assert time.monotonic() - killed < 10
    assert raised.value.kwargs["method"] == "generate_disk"
    noticed_by = {"unix": "Lost the connection", "rabbit": "went silent"}[transport.kind]
    assert noticed_by in str(raised.value)  # the socket broke / the heartbeats stopped


def test_long_call_outlasting_the_short_timeout_is_kept_alive(transport, children):
    host = unique_host()
    url = transport.conf(host).transport_url
    api = transport.api(host, rpc_timeout=2, long_rpc_timeout=60)
    children.append(ChildAgent(url, host, "generate_disk=4"))

    assert api.generate_disk(**VALID_ARGS["generate_disk"])["size_bytes"] == 1024 << 20


class BrokerProxy:
    """A TCP relay to RabbitMQ that can be cut: the broker going away, as the
    client sees it, without stopping the broker the other tests share."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # cut
            broker = socket.create_connection((RABBIT_HOST, RABBIT_PORT))
            with self.lock:
                self.sockets += [client, broker]
            for a, b in ((client, broker), (broker, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source, sink):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self):
        """Refuse new connections and break the open ones."""
        self.listener.close()
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


def test_calls_fail_with_agent_unavailable_soon_after_the_broker_goes_away(
        rabbit_url, socket_dir):
    # oslo.messaging retries a publish for ever unless told otherwise; the
    # client must give up and say the broker is unreachable instead.
    pair = Pair("rabbit", socket_dir)
    proxy = BrokerProxy()
    try:
        host = unique_host()
        pair.agent(host)        # the agent's own connection is direct
        conf = pair.conf(host, rpc_timeout=2.0, long_rpc_timeout=10.0)
        conf.set_override("transport_url", "rabbit://guest:guest@127.0.0.1:%d/" % proxy.port)
        api = client.AgentAPI(conf)
        pair.closers.append(lambda: (pair.queues.extend(client_queues(api)), api.close()))
        assert api.describe()["host"] == host

        proxy.cut()
        outcomes = {}

        def call(name, **args):
            try:
                outcomes[name] = getattr(api, name)(**args)
            except Exception as e:
                outcomes[name] = e

        # Daemon threads: were the calls to hang, the test fails instead.
        callers = [threading.Thread(target=call, args=("describe",), daemon=True),
                   threading.Thread(target=call, args=("destroy_vdis",),
                                    kwargs={"vdi_uuids": [VDI]}, daemon=True)]
        started = time.monotonic()
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(max(started + 90 - time.monotonic(), 0))
        elapsed = time.monotonic() - started
        assert len(outcomes) == 2, "calls still blocked %.0fs after the broker went away" \
            % elapsed
        # Either the publish gave up ("... through the message broker ...")
        # or the answer's time ran out first.
        assert all(isinstance(o, exceptions.AgentUnavailable) for o in outcomes.values()), \
            outcomes
        print("broker gone: both calls failed after %.1fs" % elapsed)
    finally:
        proxy.cut()
        pair.cleanup()
