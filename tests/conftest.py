"""Fixtures shared by every test: real collaborators and the rules for them.

Tests that need RabbitMQ, loop devices or root skip where those are missing,
except under ``NXS_REQUIRE_REAL=1`` (set by ``.ci/run``), where such a skip is
a failure: CI must exercise the real thing.
"""

import contextlib
import glob
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

# Nova's functional tests (tests/functional/nova) run Nova 34 in its native
# threading mode. Nova enforces that mode by forbidding eventlet, and refuses
# to start if eventlet was imported before (oslo.messaging's futurist imports
# it whenever it is installed). So the mode is chosen here, before any test
# module is imported, for the whole run. The agent and the simulator run as
# child processes and are not concerned; tests that need eventlet run it in
# a child process.
os.environ.setdefault("OS_NOVA_DISABLE_EVENTLET_PATCHING", "1")
if importlib.util.find_spec("nova") is not None and "eventlet" not in sys.modules:
    import nova.monkey_patch

    nova.monkey_patch.patch()

import pytest  # noqa: E402

REQUIRE_REAL = os.environ.get("NXS_REQUIRE_REAL") == "1"
RABBIT_HOST, RABBIT_PORT = "127.0.0.1", 5672
RABBIT_URL = "rabbit://guest:guest@127.0.0.1:5672/"
SIM_PASSWORD = "xapi-sim"
LISTEN_RE = re.compile(r"xapi-sim listening on (http://127\.0\.0\.1:\d+)")


def need(available, what):
    """Skip unless ``available``; under NXS_REQUIRE_REAL=1 fail instead."""
    if available:
        return
    if REQUIRE_REAL:
        pytest.fail("NXS_REQUIRE_REAL=1 but %s" % what, pytrace=False)
    pytest.skip(what)


@contextlib.contextmanager
def small_tmpfs(mountpoint, size="1m"):
    """A tmpfs of ``size`` mounted on ``mountpoint`` (an existing directory)
    while the block runs: a place that runs out of space. Needs root."""
    need(os.geteuid() == 0, "mounting a tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", mountpoint],
                   check=True, capture_output=True, timeout=30)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", mountpoint], check=True, capture_output=True, timeout=30)


_loop_ok = None


def loop_devices_usable():
    """Root, /dev/loop-control and a loop device that really attaches."""
    global _loop_ok
    if _loop_ok is None:
        _loop_ok = False
        if os.geteuid() == 0 and os.path.exists("/dev/loop-control"):
            probe = "/tmp/nxs-loop-probe-%d" % os.getpid()
            with open(probe, "wb") as f:
                f.truncate(1 << 20)
            try:
                out = subprocess.run(
                    ["losetup", "-f", "--show", probe], capture_output=True,
                    text=True, timeout=20)
                if out.returncode == 0:
                    subprocess.run(["losetup", "-d", out.stdout.strip()], timeout=20)
                    _loop_ok = True
            except (OSError, subprocess.TimeoutExpired):
                pass
            finally:
                os.unlink(probe)
    return _loop_ok


def rabbit_available():
    try:
        with socket.create_connection((RABBIT_HOST, RABBIT_PORT), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def loop_devices():
    need(loop_devices_usable(), "loop devices are not usable (needs root and /dev/loop-control)")


@pytest.fixture(scope="session")
def glance(tmp_path_factory):
    """A real Glance on a free loopback port for the whole run
    (nova_xen_split/cmd/glance_server.py)."""
    from nova_xen_split.cmd import glance_server
    need(glance_server.available(), "Glance is not installed (.ci/install --tests)")
    server = glance_server.GlanceProcess(tmp_path_factory.mktemp("glance")).start()
    yield server
    server.stop()


@pytest.fixture
def rabbit_url():
    need(rabbit_available(), "RabbitMQ does not answer on %s:%d" % (RABBIT_HOST, RABBIT_PORT))
    return RABBIT_URL


def _loops_backed_under(path):
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if path in line]


@pytest.fixture(scope="session", autouse=True)
def no_leaked_loop_devices(tmp_path_factory):
    """Fail the run if a test left a loop device on a file it created."""
    base = str(tmp_path_factory.getbasetemp())
    yield
    if os.geteuid() != 0:
        return
    leaked = _loops_backed_under(base)
    for line in leaked:  # detach so the next run is not starved
        subprocess.run(["losetup", "-d", line.split(":", 1)[0]])
    assert not leaked, "tests leaked loop devices: %s" % leaked


def _broker_queue_names():
    try:
        out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return {line.strip() for line in out.stdout.splitlines()[1:] if line.strip()}


@pytest.fixture(scope="session", autouse=True)
def no_leftover_broker_queues():
    """Delete the queues this run left on the broker.

    oslo.messaging leaves reply and fanout queues behind when a client or
    server goes away (they would only expire after 30 minutes); per-host
    server queues are removed by the tests that make them. Queues that
    existed before the run, or that still have consumers, are not touched.
    """
    before = _broker_queue_names() if rabbit_available() else None
    yield
    if before is None:
        return
    after = _broker_queue_names() or set()
    ours = sorted(name for name in after - before
                  if name.startswith(("reply_", "nova-xen-split-agent")))
    if not ours:
        return
    import kombu
    with kombu.Connection(RABBIT_URL.replace("rabbit://", "amqp://")) as conn:
        channel = conn.channel()
        for name in ours:
            try:
                channel.queue_delete(name, if_unused=True)
            except Exception:  # in use or gone: a channel error closes it
                channel = conn.channel()


class SimProcess:
    """One ``xapi-sim`` child process on a state directory.

    It keeps its port across :meth:`restart`, as XAPI does across a
    toolstack restart, so clients find it again at the same URL.
    """

    def __init__(self, state_dir, compute_vm=False, password=SIM_PASSWORD, extra_args=()):
        self.state_dir = str(state_dir)
        self.compute_vm = compute_vm
        self.password = password
        self.extra_args = list(extra_args)
        self.proc = None
        self.url = None
        self.port = 0
        self.output = []

    def start(self, timeout=30):
        cmd = [sys.executable, "-m", "dom0.simulator.server",
               "--state-dir", self.state_dir, "--port", str(self.port),
               "--password", self.password,
               "--compute-vm" if self.compute_vm else "--no-compute-vm"]
        cmd += self.extra_args
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            m = LISTEN_RE.search(line)
            if m:
                self.url = m.group(1)
                self.port = int(self.url.rpartition(":")[2])
                return self
        self.stop()
        raise RuntimeError("xapi-sim did not start: %s" % "".join(self.output))

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.output.append(self.proc.stdout.read() or "")
            self.proc.stdout.close()
        self.proc = None

    def restart(self):
        self.stop()
        return self.start()

    @property
    def compute_vm_uuid(self):
        """Uuid of the compute VM the simulator presents (None without one)."""
        files = glob.glob(os.path.join(self.state_dir, "vms", "*", "sys", "hypervisor", "uuid"))
        if not files:
            return None
        with open(files[0]) as f:
            return f.read().strip()

    def vm_dev_dir(self, vm_uuid):
        return os.path.join(self.state_dir, "vms", vm_uuid, "dev")

    def session(self):
        """A logged-in session of the official XenAPI SDK."""
        import XenAPI
        s = XenAPI.Session(self.url)
        s.xenapi.login_with_password("root", self.password, "1.0", "tests")
        return s


@pytest.fixture
def make_sim(tmp_path):
    """Factory: ``make_sim(compute_vm=False, extra_args=())`` → started SimProcess."""
    sims = []

    def factory(compute_vm=False, state_dir=None, **kwargs):
        state = state_dir or tmp_path / ("sim-%d" % len(sims))
        sim = SimProcess(state, compute_vm=compute_vm, **kwargs).start()
        sims.append(sim)
        return sim

    yield factory
    for sim in sims:
        sim.stop()


@contextlib.contextmanager
def xfs_reflink_mount(mountpoint, backing_file, size_bytes=8 << 30):
    """An XFS with ``reflink=1`` on a sparse loop-mounted file, mounted on
    ``mountpoint`` (made if missing) while the block runs: a file system on
    which ``copy_file_range`` shares blocks instead of copying them, as a
    VHD clone shares its parent's. Needs root, loop devices and mkfs.xfs."""
    need(loop_devices_usable(), "loop devices are not usable (needs root)")
    need(shutil.which("mkfs.xfs", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"),
         "mkfs.xfs is missing (Debian package xfsprogs)")
    with open(backing_file, "wb") as f:
        f.truncate(size_bytes)
    os.makedirs(mountpoint, exist_ok=True)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(backing_file)], check=True,
                   capture_output=True, timeout=120)
    subprocess.run(["mount", "-o", "loop", str(backing_file), str(mountpoint)], check=True,
                   capture_output=True, timeout=60)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True, capture_output=True,
                       timeout=60)
        os.unlink(backing_file)


@pytest.fixture
def make_xfs_sim(loop_devices, tmp_path):
    """Factory: ``make_xfs_sim(compute_vm=False)`` → a started SimProcess
    whose SR directory is an XFS with reflink (:func:`xfs_reflink_mount`),
    so ``VDI.clone`` shares its parent's blocks. Stopped and unmounted
    afterwards, in that order."""
    with contextlib.ExitStack() as stack:
        count = [0]

        def factory(compute_vm=False, **kwargs):
            count[0] += 1
            state = tmp_path / ("xfs-sim-%d" % count[0])
            stack.enter_context(xfs_reflink_mount(state / "sr", tmp_path / (
                "xfs-sr-%d.img" % count[0])))
            sim = SimProcess(state, compute_vm=compute_vm, **kwargs).start()
            stack.callback(sim.stop)
            return sim

        yield factory


@pytest.fixture
def xapi_sim(loop_devices, make_sim):
    """A simulator with no compute VM (agent in independent mode)."""
    return make_sim(compute_vm=False)


@pytest.fixture
def xapi_sim_compute(loop_devices, make_sim):
    """A simulator presenting a compute VM (agent in in_guest mode)."""
    return make_sim(compute_vm=True)


@pytest.fixture
def rabbit_cleanup():
    """Names of RabbitMQ queues/exchanges a test made, deleted afterwards.

    Tests give their agents unique topics or host names; append the names
    here and they are removed with ``rabbitmqctl`` when the test ends.
    """
    names = []
    yield names
    for name in names:
        subprocess.run(["rabbitmqctl", "-q", "delete_queue", name],
                       capture_output=True, timeout=60)
