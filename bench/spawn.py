"""Wall time of a full spawn through the split, against the backend in-process.

One run, everything on this machine, one ``xapi-sim`` without a compute VM
(independent mode), the image served by the image service in a child process
of its own so that no configuration shares its CPU with it:

* the spawn: a 1 GiB raw image (msdos label, one ext4 partition, 20 % of the
  disk written with data), root grown to 2 GiB, 1 GiB ephemeral (ext4),
  512 MiB swap, a config drive; then a destroy (not timed);
* configurations, interleaved round by round so drift hits all alike:
  ``in-process`` — the driver calls the agent's endpoint object directly (the
  same backend, no RPC, no second process); ``local socket`` — the agent as
  its own process on the embedded Unix-socket transport; ``rabbitmq`` — the
  same over RabbitMQ at 127.0.0.1:5672;
* then 8 spawns at once against one agent (local socket): 8 drivers, as 8
  compute workers, each with its own XAPI session;
* then the image cache (``[xenserver] cache_images = all``; the runs above
  have it off, so each of them downloads the image): a second simulator
  whose SR is an XFS with reflink on a loop device (a clone shares its
  parent's blocks, as a VHD clone on XenServer costs no data), two spawns of
  the image, the first filling the cache VDI, the second cloning it.

Prints the median, the best and each run per configuration, the split's
overhead over in-process (target ≤ 5 %), the concurrent total, and the
first and second cached spawn with their image steps (target: the second's
at least 20 times faster).

Run as root (the simulator plugs loop devices; the XFS SR needs mkfs.xfs):
    .venv/bin/python bench/spawn.py [--rounds 3] [--concurrent 8] [--cache-only]
"""

import argparse
import concurrent.futures
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from oslo_config import cfg  # noqa: E402

from agent import detect  # noqa: E402
from agent import endpoint as agent_endpoint  # noqa: E402
from agent import service as agent_service  # noqa: E402
from agent.backends import make_backend  # noqa: E402
from nova_xen_split import driver as nxs_driver  # noqa: E402
from nova_xen_split import objects  # noqa: E402
from nova_xen_split.cmd import demo_env  # noqa: E402
from nova_xen_split.cmd.image_service import ImageService  # noqa: E402
from nova_xen_split.xenhost import conf as nxs_conf  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
RABBIT_URL = "rabbit://guest:guest@127.0.0.1:5672/"
IMAGE_ID = "b0000000-0000-4000-8000-000000000001"  # a 1 GiB image


def make_image(path, data_fraction=0.2):
    """1 GiB raw: msdos label, ext4 partition 1 holding ~20 % of the disk as a
    file and a grub config (bootable as HVM, and as PV with pygrub)."""
    work = tempfile.mkdtemp(dir=os.path.dirname(path))
    root = os.path.join(work, "root")
    os.makedirs(os.path.join(root, "boot", "grub"))
    with open(os.path.join(root, "boot", "grub", "grub.cfg"), "w") as f:
        f.write(demo_env.GRUB_CFG)
    data_bytes = int(GiB * data_fraction)
    with open(os.path.join(root, "data.bin"), "wb") as f:
        for _ in range(data_bytes // (4 * MiB)):
            f.write(os.urandom(4 * MiB))
    fs_path = os.path.join(work, "fs.img")
    with open(fs_path, "wb") as f:
        f.truncate(GiB - 2048 * 512)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "bench-root", "-d", root, fs_path],
                   check=True, timeout=300)
    with open(path, "wb") as f:
        f.truncate(GiB)
    subprocess.run(["sfdisk", "--quiet", path], input="label: dos\nstart=2048, type=83\n",
                   text=True, check=True, timeout=60)
    subprocess.run(["dd", "if=" + fs_path, "of=" + path, "bs=4M", "seek=1M",
                    "oflag=seek_bytes", "conv=notrunc,sparse", "status=none"],
                   check=True, timeout=300)
    shutil.rmtree(work)
    used = os.stat(path).st_blocks * 512
    return used


def load_conf(config_file):
    conf = cfg.ConfigOpts()
    nxs_conf.register_opts(conf)
    conf(args=["--config-file", config_file], project="nova-xen-split",
         default_config_files=[])
    return conf


class InProcessAgent:
    """The agent's endpoint called directly: the same backend, no RPC."""

    def __init__(self, conf):
        self.sessions = agent_service.WorkerSessions(conf)
        session = detect.login(conf)
        self.sessions.adopt(session)
        ctx = detect.detect(conf, session, self.sessions)
        self.endpoint = agent_endpoint.AgentEndpoint(make_backend(ctx))

    def check_version(self, need=None):
        return self.endpoint.describe()

    def close(self):
        self.sessions.close()

    def __getattr__(self, name):
        return getattr(self.endpoint, name)


def flavor():
    return objects.Flavor(name="bench", memory_mb=1024, vcpus=2, root_gb=2,
                          ephemeral_gb=1, swap=512)


def one_spawn(driver):
    instance = objects.Instance(hostname="bench", flavor=flavor(), image_ref=IMAGE_ID,
                                config_drive="True", project_id="bench")
    meta = objects.ImageMeta(id=IMAGE_ID, disk_format="raw", size=GiB)
    started = time.monotonic()
    driver.spawn(objects.RequestContext(auth_token="bench"), instance, meta,
                 [("/etc/bench", b"x")], None, {}, [])
    elapsed = time.monotonic() - started
    steps = list(driver.last_spawn_steps)
    driver.destroy(None, instance)
    return elapsed, steps


class Setup:
    """One configuration: a config file, maybe an agent process, a driver."""

    def __init__(self, name, sim, work, image_url, transport_url=None, in_process=False,
                 cache_images="none"):
        self.name = name
        self.host = "nxs-bench-%s-%s" % (name.replace(" ", "-"), uuid.uuid4().hex[:6])
        self.work = os.path.join(work, self.host)
        os.makedirs(self.work)
        self.config = demo_env.write_config(
            os.path.join(self.work, "nxs.conf"), sim, self.host, image_url, self.work,
            transport_url=transport_url, cache_images=cache_images)
        self.agent = None
        self.transport_url = transport_url
        if in_process:
            self.agent_api = InProcessAgent(load_conf(self.config))
        else:
            self.agent = demo_env.Agent(self.config, os.path.join(self.work, "agent.log"))
            self.agent.start()
            self.agent_api = None

    def driver(self):
        driver = nxs_driver.XenSplitDriver(load_conf(self.config), agent=self.agent_api)
        deadline = time.monotonic() + 60
        driver._conf.set_override("startup_timeout", 1.0, group="agent")
        while True:
            if self.agent is not None and self.agent.exited():
                raise RuntimeError("agent exited: %s" % self.agent.output_tail())
            try:
                driver.init_host(self.host)
                return driver
            except Exception:
                if time.monotonic() > deadline:
                    raise

    def close(self):
        if self.agent is not None:
            self.agent.stop()
        elif self.agent_api is not None:
            self.agent_api.close()
        if self.transport_url and shutil.which("rabbitmqctl"):
            subprocess.run(["rabbitmqctl", "-q", "delete_queue",
                            "nova-xen-split-agent.%s" % self.host],
                           capture_output=True, timeout=60, check=False)


def concurrent_spawns(setup, count):
    drivers = [setup.driver() for _ in range(count)]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        results = list(pool.map(lambda d: _try_spawn(d), drivers))
    total = time.monotonic() - started
    for d in drivers:
        d.cleanup_host(setup.host)
    return total, results


def _try_spawn(driver):
    try:
        return one_spawn(driver)[0], None
    except Exception as e:  # noqa: BLE001 -- reported, not hidden
        return None, "%s: %s" % (type(e).__name__, e)


def image_step(steps):
    return sum(st.seconds for st in steps if st.name == "fetch_image")


def cached_spawns(work, image_url):
    """The first and the second spawn of the image with the image cache on,
    on a simulator whose SR is an XFS with reflink; returns what to print."""
    state = os.path.join(work, "sim-cache")
    sr_dir = os.path.join(state, "sr")
    backing = os.path.join(work, "xfs-sr.img")
    os.makedirs(sr_dir)
    with open(backing, "wb") as f:
        f.truncate(16 * GiB)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", backing], check=True, timeout=120)
    subprocess.run(["mount", "-o", "loop", backing, sr_dir], check=True, timeout=60)
    sim = setup = None
    try:
        sim = demo_env.Simulator(state, compute_vm=False).start()
        setup = Setup("image cache", sim, work, image_url, cache_images="all")
        driver = setup.driver()
        first_total, first_steps = one_spawn(driver)
        second_total, second_steps = one_spawn(driver)
        driver.cleanup_host(None)
    finally:
        if setup is not None:
            setup.close()
        if sim is not None:
            sim.stop()
        subprocess.run(["umount", sr_dir], check=True, timeout=60)
    first, second = image_step(first_steps), image_step(second_steps)
    return ("image cache (local socket, SR on XFS with reflink): first spawn %.2f s "
            "(image step %.2f s: download into the cache VDI, then clone), second spawn "
            "%.2f s (image step %.3f s: clone); image step %.0fx faster"
            % (first_total, first, second_total, second, first / second))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--no-rabbit", action="store_true")
    parser.add_argument("--cache-only", action="store_true",
                        help="measure only the first and second cached spawn")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="nxs-bench-spawn-", dir=args.work_dir)
    sim = service = None
    setups = []
    try:
        image_path = os.path.join(work, "image.raw")
        used = make_image(image_path)
        # No checksum: the spawns are timed, not the check (agent_import.py times it).
        service = ImageService(send_md5=False)
        service.add(image_path, IMAGE_ID)
        image_url = service.start_process().url  # before any thread: it forks
        sim = demo_env.Simulator(os.path.join(work, "sim"), compute_vm=False).start()
        print("setup: xapi-sim (independent mode) at %s; image 1 GiB raw, %d MiB allocated "
              "(%.0f %%), served by a child process; spawn: root grow to 2 GiB, "
              "1 GiB ephemeral ext4, 512 MiB swap, config drive; %d rounds; %d cores"
              % (sim.url, used // MiB, 100.0 * used / GiB, args.rounds, os.cpu_count()))
        if args.cache_only:
            print("\n" + cached_spawns(work, image_url))
            return 0
        setups.append(Setup("in-process", sim, work, image_url, in_process=True))
        setups.append(Setup("local socket", sim, work, image_url))
        if not args.no_rabbit:
            setups.append(Setup("rabbitmq", sim, work, image_url, transport_url=RABBIT_URL))
        drivers = {s.name: s.driver() for s in setups}
        for d in drivers.values():  # warm-up: caches, connections, first privsep/plugin
            one_spawn(d)
        times = {s.name: [] for s in setups}
        last_steps = {}
        for _ in range(args.rounds):
            for s in setups:
                elapsed, last_steps[s.name] = one_spawn(drivers[s.name])
                times[s.name].append(elapsed)
        # The median is the headline; the best run is shown too, because on a
        # shared machine the slow runs measure the neighbours, not the split.
        base = statistics.median(times["in-process"])
        base_min = min(times["in-process"])
        print("\n%-14s %9s %9s %7s %9s   %s" % (
            "config", "median s", "overhead", "best s", "overhead", "runs (s)"))
        for s in setups:
            med, best = statistics.median(times[s.name]), min(times[s.name])
            print("%-14s %9.2f %8.1f%% %7.2f %8.1f%%   %s" % (
                s.name, med, 100.0 * (med - base) / base, best,
                100.0 * (best - base_min) / base_min,
                " ".join("%.2f" % t for t in times[s.name])))
        print("\nsteps of the last local-socket spawn: %s" % ", ".join(
            "%s %.2f s" % (st.name, st.seconds) for st in last_steps["local socket"]))
        for d in drivers.values():
            d.cleanup_host(None)
        total, results = concurrent_spawns(setups[1], args.concurrent)
        ok = [t for t, err in results if err is None]
        print("\n%d spawns at once on one agent (local socket): %d succeeded, total %.2f s, "
              "each %s s" % (args.concurrent, len(ok), total,
                             " ".join("%.1f" % t for t in ok)))
        for _t, err in results:
            if err:
                print("  failed: %s" % err)
        print("\n" + cached_spawns(work, image_url))
        return 0 if len(ok) == args.concurrent else 1
    finally:
        for s in setups:
            s.close()
        if sim is not None:
            sim.stop()
        if service is not None:
            service.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
