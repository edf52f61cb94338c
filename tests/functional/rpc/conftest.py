"""Fixtures of the rpc contract suite: a configuration per transport, an
agent serving a recording endpoint, and broker clean-up.

Every test that takes ``transport`` runs twice: over the local Unix socket
and over RabbitMQ (127.0.0.1:5672, skipped on a laptop without it, a
failure under NXS_REQUIRE_REAL=1).
"""

import os
import shutil
import subprocess
import tempfile
import uuid

import pytest
from oslo_config import cfg

from nova_xen_split.xenhost import conf as nxs_conf
from rpc import client, server, transports
from tests.conftest import RABBIT_URL, need, rabbit_available
from tests.functional.rpc.endpoint import RecordingEndpoint

RPC_TIMEOUT = 1.0
LONG_RPC_TIMEOUT = 10.0
WORKERS = 4


def make_conf(transport_url, host, **agent):
    """A private ConfigOpts for one side of one pair."""
    conf = cfg.ConfigOpts()
    nxs_conf.register_opts(conf)
    transports.register_opts(conf)
    conf(args=[], default_config_files=[], default_config_dirs=[])
    conf.set_override("transport_url", transport_url)
    conf.set_override("host", host)
    agent.setdefault("rpc_timeout", RPC_TIMEOUT)
    agent.setdefault("long_rpc_timeout", LONG_RPC_TIMEOUT)
    agent.setdefault("rpc_workers", WORKERS)
    for name, value in agent.items():
        conf.set_override(name, value, group="agent")
    return conf


def unique_host(prefix="rpc-test"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def delete_queues(names):
    """Delete broker queues (an AMQP queue.delete each: rabbitmqctl is slow)."""
    if not names:
        return
    import kombu
    with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//", connect_timeout=10) as conn:
        channel = conn.channel()
        for name in names:
            channel.queue_delete(name)


def rabbit_queues(prefix=""):
    """Names of the broker's queues starting with ``prefix``."""
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return [line.strip() for line in out.splitlines()[1:] if line.strip().startswith(prefix)]


def client_queues(api):
    """The reply queue oslo.messaging declared for ``api`` (if any)."""
    driver = getattr(getattr(api._transport, "transport", None), "_driver", None)
    reply_q = getattr(driver, "_reply_q", None)
    return [reply_q] if reply_q else []


def _socket_dir():
    # Other uids must be able to reach the socket, so that what is tested is
    # the socket's own mode and the peer check (pytest's tmp dirs are 0700).
    path = tempfile.mkdtemp(prefix="nxs-rpc-")
    os.chmod(path, 0o711)
    return path


@pytest.fixture
def socket_dir():
    """A fresh directory for sockets, reachable by other uids."""
    path = _socket_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Pair:
    """Configuration factory for one transport, with clean-up of what it made."""

    def __init__(self, kind, socket_dir):
        self.kind = kind
        self.socket_dir = socket_dir
        self.queues = []
        self.closers = []

    def conf(self, host, **agent):
        if self.kind == "unix":
            url = "unix://" + os.path.join(self.socket_dir, host + ".sock")
        else:
            url = RABBIT_URL
            self.queues.append("%s.%s" % (transports.TOPIC, host))
        return make_conf(url, host, **agent)

    def agent(self, host, endpoint=None, version=None, **agent):
        endpoint = endpoint or RecordingEndpoint(host)
        srv = server.AgentServer(self.conf(host, **agent), endpoint,
                                 **({"version": version} if version else {}))
        srv.start()
        self.closers.append(lambda: (endpoint.release.set(), srv.stop(), srv.wait()))
        return srv, endpoint

    def api(self, host, **agent):
        api = client.AgentAPI(self.conf(host, **agent))
        self.closers.append(lambda: (self.queues.extend(client_queues(api)), api.close()))
        return api

    def cleanup(self):
        for close in reversed(self.closers):
            close()
        delete_queues(self.queues)


@pytest.fixture(params=["unix", "rabbit"])
def transport(request, socket_dir):
    """``Pair`` factory for each transport in turn."""
    if request.param == "rabbit":
        request.getfixturevalue("rabbit_url")  # skips, or fails under NXS_REQUIRE_REAL=1
    pair = Pair(request.param, socket_dir)
    yield pair
    pair.cleanup()


@pytest.fixture(scope="module", params=["unix", "rabbit"])
def _shared_agent(request):
    if request.param == "rabbit":
        need(rabbit_available(), "RabbitMQ does not answer on 127.0.0.1:5672")
    directory = _socket_dir()
    pair = Pair(request.param, directory)
    host = unique_host()
    _, endpoint = pair.agent(host)
    api = pair.api(host)
    yield api, endpoint, host
    pair.cleanup()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def agent(_shared_agent):
    """``(api, endpoint, host)``: an agent serving a RecordingEndpoint, and its client.

    One pair per transport serves a whole module (starting and stopping an
    oslo.messaging server costs a second); each test gets the endpoint
    reset and the client connected: over RabbitMQ a client's first call,
    and its first after a timeout, probes with describe.
    """
    api, endpoint, host = _shared_agent
    endpoint.reset()
    api.describe()
    endpoint.reset()
    yield api, endpoint, host
    endpoint.release.set()
