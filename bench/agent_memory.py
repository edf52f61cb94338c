"""The agent's memory under the largest requests the interface allows.

One ``xapi-sim`` without a compute VM (independent mode), the agent as its
own process (``nova-xen-split-agent``) on the chosen transport, and four
``generate_configdrive`` calls at once, each as large as the method table
lets a request be: 64 injected files holding 1 MiB together, 64 KiB of
user data, and metadata, network data and vendor data of about 1 MiB of
JSON each. The agent's resident memory is sampled every 10 ms.

Prints the agent's RSS when idle, its peak (the kernel's VmHWM), its RSS
after the calls, and the target: peak < 150 MiB.

Run as root (the simulator plugs loop devices):
    .venv/bin/python bench/agent_memory.py [--transport unix|rabbit] [--concurrent 4]
"""

import argparse
import concurrent.futures
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from oslo_config import cfg  # noqa: E402

from nova_xen_split.cmd import demo_env  # noqa: E402
from nova_xen_split.xenhost import conf as nxs_conf  # noqa: E402
from rpc import client as rpc_client  # noqa: E402
from rpc import methods, transports  # noqa: E402

MiB = 1 << 20
RABBIT_URL = "rabbit://guest:guest@127.0.0.1:5672/"
TARGET_MIB = 150


def _json_of_about(size_bytes, seed):
    """A JSON-able dict whose JSON text is just under ``size_bytes``."""
    value = os.urandom(size_bytes // 2 - 4096).hex()
    return {"blob-%s" % seed: value}


def largest_request(instance_uuid):
    """The largest generate_configdrive request the method table accepts."""
    files = [["/var/lib/bench/file-%02d" % n, os.urandom(MiB // 64)] for n in range(64)]
    metadata = dict(_json_of_about(MiB, "meta"), uuid=instance_uuid, name="bench")
    request = dict(instance_uuid=instance_uuid, metadata=metadata,
                   user_data=os.urandom(65536), network_data=_json_of_about(MiB, "net"),
                   vendor_data=_json_of_about(MiB, "vendor"), files=files,
                   admin_password=None)
    methods.validate("generate_configdrive", request)  # allowed, not one byte more
    return request


def _rss_kib(pid, field="VmRSS"):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", choices=("unix", "rabbit"), default="unix")
    parser.add_argument("--concurrent", type=int, default=4)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="nxs-bench-memory-")
    sim = demo_env.Simulator(os.path.join(work, "sim"), compute_vm=False)
    agent = api = None
    try:
        sim.start()
        host = "nxs-bench-memory-%s" % uuid.uuid4().hex[:6]
        config = demo_env.write_config(
            os.path.join(work, "nova-xen-split.conf"), sim, host, "http://127.0.0.1:9",
            work, transport_url=RABBIT_URL if args.transport == "rabbit" else None)
        agent = demo_env.Agent(config, os.path.join(work, "agent.log")).start()
        conf = cfg.ConfigOpts()
        nxs_conf.register_opts(conf)
        transports.register_opts(conf)
        conf(["--config-file", config])
        conf.set_override("long_rpc_timeout", 600, group="agent")
        api = rpc_client.AgentAPI(conf, host=host)
        deadline = time.monotonic() + 60
        while True:
            try:
                api.describe()
                break
            except Exception:
                if time.monotonic() > deadline or agent.exited():
                    raise SystemExit("the agent did not answer:\n" + agent.output_tail()) from None
                time.sleep(0.2)
        pid = agent.proc.pid
        requests = [largest_request(str(uuid.uuid4())) for _ in range(args.concurrent)]
        request_bytes = len(json.dumps(requests[0], default=lambda b: "x" * len(b)))
        time.sleep(1)
        idle = _rss_kib(pid)

        samples, done = [], threading.Event()

        def sample():
            while not done.is_set():
                samples.append(_rss_kib(pid))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(args.concurrent) as pool:
            made = list(pool.map(lambda r: api.generate_configdrive(**r), requests))
        seconds = time.monotonic() - started
        done.set()
        sampler.join()
        time.sleep(1)
        after, peak = _rss_kib(pid), _rss_kib(pid, "VmHWM")
        api.destroy_vdis(vdi_uuids=[m["uuid"] for m in made])

        print("setup: agent (independent mode) on %s, %d generate_configdrive calls at once, "
              "each the largest allowed (%.1f MiB of arguments); %d CPUs"
              % ("RabbitMQ" if args.transport == "rabbit" else "the local socket",
                 args.concurrent, request_bytes / MiB, os.cpu_count()))
        print("agent RSS idle            %7.1f MiB" % (idle / 1024))
        print("agent RSS peak (VmHWM)    %7.1f MiB   (sampled max %.1f MiB)"
              % (peak / 1024, max(samples or [0]) / 1024))
        print("agent RSS after           %7.1f MiB" % (after / 1024))
        print("calls took                %7.2f s" % seconds)
        print("target peak < %d MiB: %s" % (TARGET_MIB,
                                           "met" if peak / 1024 < TARGET_MIB else "MISSED"))
    finally:
        if api is not None:
            api.close()
        if agent is not None:
            agent.stop()
        sim.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
