"""Round trip and throughput of the driver/agent interface, beside its floors.

One run, one machine. An agent process (this script with ``--serve``)
serves a do-nothing endpoint over the local Unix socket and over RabbitMQ,
plus a bare oslo.messaging RPC server with the same do-nothing method.
From this process, sequential calls measure the round trip (p50/p90/p99)
of: our client over the local socket (``describe``, answered on the
connection's thread, and ``cleanup_attached_vdis``, which takes a worker;
and, for comparison, ``describe`` on a fresh connection each time);
our client over RabbitMQ; a bare oslo.messaging RPCClient (the floor of that
transport); an oslo.privsep daemon call (the floor of a local channel: a
privsep context started with the fork method as root, no-op entrypoint).
Then 16 threads call at once over each of our transports, and over bare
oslo.messaging for comparison (calls/s).

    .venv/bin/python -m bench.rpc_rtt [--calls 2000] [--rabbit-calls 1000]

Targets: local socket p50 <= 2x privsep p50; RabbitMQ p50 <= 1.2x bare.
"""

import argparse
import concurrent.futures
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import kombu
import oslo_messaging
from oslo_config import cfg
from oslo_privsep import priv_context

from nova_xen_split.xenhost import conf as nxs_conf
from rpc import client, methods, server, transports

RABBIT_URL = "rabbit://guest:guest@127.0.0.1:5672/"
DESCRIPTION = {"mode": "independent", "vm_uuid": None,
               "host_uuid": "00000000-0000-4000-8000-000000000000", "host": "bench",
               "version": methods.VERSION, "capabilities": {}}
NOTHING_CLEANED = {"unplugged": 0, "destroyed": 0}



def make_conf(transport_url, host, **agent):
    conf = cfg.ConfigOpts()
    nxs_conf.register_opts(conf)
    transports.register_opts(conf)
    conf(args=[], default_config_files=[], default_config_dirs=[])
    conf.set_override("transport_url", transport_url)
    conf.set_override("host", host)
    for name, value in agent.items():
        conf.set_override(name, value, group="agent")
    return conf


def delete_queues(names):
    with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//", connect_timeout=10) as conn:
        channel = conn.channel()
        for name in names:
            channel.queue_delete(name)


def reply_queue(oslo_transport):
    # oslo.messaging keeps a client's reply queue name on its driver.
    return getattr(getattr(oslo_transport, "_driver", None), "_reply_q", None)


# -- the agent side (run with --serve) --------------------------------------


class NoopEndpoint:
    """Every method of the table, doing nothing."""

    def describe(self):
        return DESCRIPTION

    def cleanup_attached_vdis(self):
        return NOTHING_CLEANED

    def __getattr__(self, name):
        if name in methods.METHODS:
            return lambda **kwargs: {}
        raise AttributeError(name)


class BareEndpoint:
    """What a plain oslo.messaging service would expose."""

    target = oslo_messaging.Target(version="1.0")

    def describe(self, ctxt):
        return DESCRIPTION


def serve(socket_path, host, bare_host):
    agents = [server.AgentServer(make_conf("unix://" + socket_path, host, rpc_workers=16),
                                 NoopEndpoint()),
              server.AgentServer(make_conf(RABBIT_URL, host, rpc_workers=16), NoopEndpoint())]
    bare_conf = make_conf(RABBIT_URL, bare_host)
    bare_transport = oslo_messaging.get_rpc_transport(bare_conf, url=RABBIT_URL)
    bare = oslo_messaging.get_rpc_server(
        bare_transport, oslo_messaging.Target(topic=transports.TOPIC, server=bare_host),
        [BareEndpoint()], executor="threading")
    for agent in agents:
        agent.start()
    bare.start(override_pool_size=2 * 16 + 4)  # the same pool our RabbitServer uses
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    for srv in agents + [bare]:
        srv.stop()
    for srv in agents + [bare]:
        srv.wait()
    bare_transport.cleanup()


# -- the privsep floor --------------------------------------------------------

noop_context = priv_context.PrivContext(
    __name__, cfg_section="nxs_bench_privsep", pypath=__name__ + ".noop_context",
    capabilities=[])


@noop_context.entrypoint
def privsep_noop():
    return DESCRIPTION


# -- measuring ------------------------------------------------------------------


def round_trips(call, count, warmup=200):
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    samples.sort()
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]  # noqa: E731
    return {"p50": statistics.median(samples), "p90": pick(0.90), "p99": pick(0.99),
            "n": count}


def throughput(call, threads, calls_each):
    barrier = threading.Barrier(threads + 1)

    def worker():
        barrier.wait()
        for _ in range(calls_each):
            call()

    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(worker) for _ in range(threads)]
        barrier.wait()
        started = time.perf_counter()
        for f in futures:
            f.result()
        elapsed = time.perf_counter() - started
    return threads * calls_each / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="local round trips per path")
    parser.add_argument("--rabbit-calls", type=int, default=1000,
                        help="RabbitMQ round trips per path")
    parser.add_argument("--serve", nargs=3, metavar=("SOCKET", "HOST", "BARE_HOST"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(*args.serve)
    if os.geteuid() != 0:
        raise SystemExit("run as root: the privsep floor forks a privileged daemon")

    run = uuid.uuid4().hex[:8]
    host, bare_host = "bench-rtt-%s" % run, "bench-rtt-bare-%s" % run
    workdir = tempfile.mkdtemp(prefix="nxs-bench-rtt-")
    socket_path = os.path.join(workdir, "agent.sock")
    agent = subprocess.Popen(
        [sys.executable, "-m", "bench.rpc_rtt", "--serve", socket_path, host, bare_host],
        stdout=subprocess.PIPE, text=True)
    apis, transports_made = [], []
    try:
        if agent.stdout.readline().strip() != "ready":
            raise SystemExit("agent process did not start")
        # Fork the privsep daemon before this process has any other thread.
        noop_context.set_client_mode(True)
        noop_context.start(method=priv_context.Method.FORK)
        local = client.AgentAPI(make_conf("unix://" + socket_path, host))
        rabbit = client.AgentAPI(make_conf(RABBIT_URL, host))
        apis = [local, rabbit]
        bare_transport = oslo_messaging.get_rpc_transport(make_conf(RABBIT_URL, bare_host),
                                                          url=RABBIT_URL)
        transports_made.append(bare_transport)
        bare = oslo_messaging.get_rpc_client(
            bare_transport, oslo_messaging.Target(topic=transports.TOPIC, server=bare_host)
        ).prepare(version="1.0", timeout=60)

        results = {
            "privsep daemon call (floor)": round_trips(privsep_noop, args.calls),
            "local socket, describe": round_trips(local.describe, args.calls),
            "local socket, cleanup_attached_vdis": round_trips(
                local.cleanup_attached_vdis, args.calls),
            "local socket, new connection per call": round_trips(
                lambda: (local.describe(), local.close()), args.calls // 4),
            "bare oslo.messaging (floor)": round_trips(
                lambda: bare.call({}, "describe"), args.rabbit_calls),
            "RabbitMQ, AgentAPI.describe": round_trips(rabbit.describe, args.rabbit_calls),
        }
        rates = {
            "local socket": throughput(local.cleanup_attached_vdis, 16, args.calls // 8),
            "RabbitMQ": throughput(rabbit.cleanup_attached_vdis, 16, args.rabbit_calls // 16),
            "bare oslo.messaging": throughput(lambda: bare.call({}, "describe"), 16,
                                              args.rabbit_calls // 16),
        }
        report(results, rates, args)
    finally:
        noop_context.stop()
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=60)
        queues = ["%s.%s" % (transports.TOPIC, h) for h in (host, bare_host)]
        for api in apis:
            queues.append(reply_queue(getattr(api._transport, "transport", None)))
            api.close()
        for oslo_transport in transports_made:
            queues.append(reply_queue(oslo_transport))
            oslo_transport.cleanup()
        delete_queues([q for q in queues if q])
        shutil.rmtree(workdir, ignore_errors=True)


def report(results, rates, args):
    import msgpack
    print("setup: %s, Python %s, %d CPUs, oslo.messaging %s, msgpack %s; agent in a "
          "separate process, RabbitMQ at 127.0.0.1:5672; no-op calls; %d local / %d "
          "RabbitMQ round trips after 200 warm-up calls"
          % (platform.platform(terse=True), platform.python_version(), os.cpu_count(),
             _version("oslo.messaging"), ".".join(map(str, msgpack.version)),
             args.calls, args.rabbit_calls))
    print("%-40s %9s %9s %9s" % ("round trip (microseconds)", "p50", "p90", "p99"))
    for name, r in results.items():
        print("%-40s %9.0f %9.0f %9.0f" % (name, r["p50"] * 1e6, r["p90"] * 1e6, r["p99"] * 1e6))
    for name, rate in rates.items():
        print("throughput, 16 concurrent callers, %-20s %7.0f calls/s" % (name, rate))
    floor_local = results["privsep daemon call (floor)"]["p50"]
    local = max(results["local socket, describe"]["p50"],
                results["local socket, cleanup_attached_vdis"]["p50"])
    floor_rabbit = results["bare oslo.messaging (floor)"]["p50"]
    ours_rabbit = results["RabbitMQ, AgentAPI.describe"]["p50"]
    for what, ratio, limit in (("local socket p50 <= 2x privsep p50", local / floor_local, 2.0),
                               ("RabbitMQ p50 <= 1.2x bare oslo.messaging p50",
                                ours_rabbit / floor_rabbit, 1.2)):
        print("target %-46s ratio %.2f: %s" % (what, ratio, "met" if ratio <= limit else "MISSED"))


def _version(dist):
    from importlib import metadata
    return metadata.version(dist)


if __name__ == "__main__":
    main()
