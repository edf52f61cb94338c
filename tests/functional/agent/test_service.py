"""The real console script: startup refusals, modes, and a SIGKILL mid-fetch."""

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from oslo_config import cfg

from nova_xen_split.cmd import demo_env
from nova_xen_split.xenhost import conf as nxs_conf
from nova_xen_split.xenhost import marks
from rpc import client as rpc_client
from rpc import methods, transports

AGENT = os.path.join(os.path.dirname(sys.executable), "nova-xen-split-agent")
MiB = 1 << 20


def write_config(tmp_path, sim, mode, image_server=None, name="agent.conf", **options):
    """An agent config file; ``options`` are ``section__key=value``."""
    sections = {
        "DEFAULT": {"host": "svc-%s" % uuid.uuid4().hex[:8],
                    "state_path": str(tmp_path),
                    "transport_url": "unix://%s" % (tmp_path / "agent.sock")},
        "xenserver": {"connection_url": sim.url,
                      "connection_password": sim.password,
                      "xenstore_read_command": "false",
                      "vm_uuid_file": str(tmp_path / "no-uuid-here"),
                      "cache_images": "none"},
        "agent": {"privsep_start_method": "fork", "rpc_timeout": "30"},
    }
    if mode == "in_guest":
        vm_uuid = sim.compute_vm_uuid
        sections["xenserver"].update(
            vm_uuid_file=os.path.join(sim.state_dir, "vms", vm_uuid, "sys", "hypervisor",
                                      "uuid"),
            device_dir=sim.vm_dev_dir(vm_uuid))
    if image_server is not None:
        sections["glance"] = {"api_servers": image_server.url}
    for key, value in options.items():
        section, option = key.split("__")
        sections.setdefault(section, {})[option] = value
    path = tmp_path / name
    with open(path, "w") as f:
        for section, values in sections.items():
            f.write("[%s]\n" % section)
            for key, value in values.items():
                f.write("%s = %s\n" % (key, value))
    return path, sections["DEFAULT"]["host"]


def refusal(config_path):
    # Python's warnings are silenced: importing oslo.messaging prints
    # eventlet's deprecation notice, which is the library's, not a line of ours.
    proc = subprocess.run([AGENT, "--config-file", str(config_path)],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    return proc.returncode, proc.stderr, proc.stdout


@pytest.mark.parametrize("options,option_named", [
    ({"xenserver__check_host": "true"}, "[xenserver] check_host"),
    ({"DEFAULT__flat_injected": "true"}, "[DEFAULT] flat_injected"),
    ({"xenserver__independent_compute": "false"}, "[xenserver] independent_compute"),
    ({"xenserver__connection_password": "Wr0ng-Passw0rd"}, "connection_password"),
    ({"xenserver__connection_url": "http://127.0.0.1:9"}, "[xenserver] connection_url"),
    ({"xenserver__connection_url": "ftp://127.0.0.1:9"}, "[xenserver] connection_url"),
    ({"xenserver__connection_url": "http://127.0.0.1:port"}, "[xenserver] connection_url"),
    ({"xenserver__connection_url": "http://root:S3cretPW@127.0.0.1:9"},
     "[xenserver] connection_url"),
    # Beyond what the dom0 plugins accept: every spawn would fail later.
    ({"agent__partition_wait_timeout": "1000"}, "partition_wait_timeout"),
    ({"xenserver__block_device_creation_timeout": "7200"}, "block_device_creation_timeout"),
    # The transport cannot be served: refused once the rest has checked out.
    ({"agent__socket_group": "no-such-group-xyz"}, "socket_group"),
    ({"DEFAULT__transport_url": "bogus://somewhere/"}, "transport_url"),
    # Brokers that are not there, or refuse: one line within the bound, not
    # oslo.messaging's reconnection for ever nor its tracebacks.
    ({"DEFAULT__transport_url": "rabbit://guest:Wr0ng-Passw0rd@127.0.0.1:1/"},
     "transport_url"),
    ({"DEFAULT__transport_url": "127.0.0.1:5672"}, "transport_url"),
])
def test_refusals_print_one_line_naming_the_option_and_exit_non_zero(
        xapi_sim, tmp_path, options, option_named):
    config, _host = write_config(tmp_path, xapi_sim, "independent", **options)

    started = time.monotonic()
    status, stderr, stdout = refusal(config)

    assert time.monotonic() - started < 60
    assert status != 0
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert option_named in lines[0]
    assert "Traceback" not in stderr + stdout
    assert "Wr0ng-Passw0rd" not in stderr + stdout
    assert "S3cretPW" not in stderr + stdout
    assert xapi_sim.password not in stderr + stdout


def test_a_broker_refusing_the_login_is_one_line_naming_the_url_not_the_password(
        xapi_sim, tmp_path, rabbit_url):
    config, _host = write_config(
        tmp_path, xapi_sim, "independent",
        DEFAULT__transport_url="rabbit://guest:Wr0ng-Passw0rd@127.0.0.1:5672/")

    started = time.monotonic()
    status, stderr, stdout = refusal(config)

    assert time.monotonic() - started < 60 and status != 0
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "[DEFAULT] transport_url" in lines[0], stderr
    assert "guest:***@127.0.0.1:5672" in lines[0]
    assert "Wr0ng-Passw0rd" not in stderr + stdout and "Traceback" not in stderr + stdout


class RunningAgent:
    def __init__(self, config, host, tmp_path):
        self.config = config
        self.host = host
        self.log_path = tmp_path / ("agent-%s.log" % uuid.uuid4().hex[:6])
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen([AGENT, "--config-file", str(config)],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        conf = cfg.ConfigOpts()
        nxs_conf.register_opts(conf)
        transports.register_opts(conf)
        conf(["--config-file", str(config)])
        self.api = rpc_client.AgentAPI(conf, host=host)

    def wait_serving(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                return self.api.describe()
            except Exception:
                time.sleep(0.2)
        raise AssertionError("agent did not serve: %s" % self.output())

    def output(self):
        return self.log_path.read_text()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.api.close()
        self.log.close()
        return self.proc.returncode


@pytest.mark.parametrize("compute_vm,mode", [(True, "in_guest"), (False, "independent")])
def test_auto_detection_chooses_the_mode_logs_it_and_sigterm_exits_zero(
        make_sim, loop_devices, tmp_path, compute_vm, mode):
    sim = make_sim(compute_vm=compute_vm)
    config, host = write_config(tmp_path, sim, mode)
    agent = RunningAgent(config, host, tmp_path)
    try:
        described = agent.wait_serving()
    finally:
        status = agent.stop()

    assert described["mode"] == mode
    assert status == 0
    log = agent.output()
    assert "in %s mode: VM %s" % (mode, sim.compute_vm_uuid or "none") in log
    assert "Serving interface %s" % methods.VERSION in log


@pytest.mark.parametrize("when", ["while it detects its mode", "as it starts serving"])
def test_sigterm_during_startup_stops_the_agent_cleanly(make_sim, tmp_path, when):
    """The handler is there from the agent's first step: a SIGTERM while it
    logs in, detects or starts serving ends it with status 0, no traceback
    and nothing left (before this, the window until it served killed it
    outright, exit -15)."""
    sim = make_sim(compute_vm=False)
    config, host = write_config(tmp_path, sim, "independent")
    agent = RunningAgent(config, host, tmp_path)
    marker = "independent mode" if when.startswith("while") else "Startup cleanup"
    deadline = time.monotonic() + 60
    while marker not in agent.output() and time.monotonic() < deadline:
        assert agent.proc.poll() is None, agent.output()
        time.sleep(0.005)
    agent.proc.send_signal(signal.SIGTERM)
    try:
        status = agent.proc.wait(60)
    finally:
        agent.stop()

    assert status == 0, agent.output()
    assert "Traceback" not in agent.output()
    assert _tagged(sim.session(), host) == ([], [])


def _tagged(session, host):
    vbds = [rec for rec in session.xenapi.VBD.get_all_records().values()
            if marks.vbd_agent(rec["other_config"]) == host]
    in_progress = []
    for rec in session.xenapi.VDI.get_all_records().values():
        mark = marks.read_vdi(rec["other_config"])
        if mark and mark.agent == host and mark.state == marks.IN_PROGRESS:
            in_progress.append(rec)
    return vbds, in_progress


@pytest.mark.parametrize("compute_vm,mode", [(True, "in_guest"), (False, "independent")])
def test_sigkill_during_an_image_fetch_then_restart_leaves_no_vbd_and_no_half_made_vdi(
        make_sim, loop_devices, image_server, tmp_path, compute_vm, mode):
    sim = make_sim(compute_vm=compute_vm)
    image = tmp_path / "slow.raw"
    with open(image, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(MiB))
    image_id = image_server.add(image)
    image_server.delay = 0.1  # 64 MiB take about 6 s
    config, host = write_config(tmp_path, sim, mode, image_server)
    session = sim.session()
    agent = RunningAgent(config, host, tmp_path)
    agent.wait_serving()
    fetch, errors = _fetch_in_background(agent, image_id, "raw")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        vbds, in_progress = _tagged(session, host)
        if in_progress and (vbds or mode == "independent"):
            break
        time.sleep(0.1)
    assert in_progress, agent.output()
    assert vbds or mode == "independent", "no VBD plugged mid-fetch"

    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(30)
    fetch.join(60)
    agent.stop()
    restarted = RunningAgent(config, host, tmp_path)
    try:
        restarted.wait_serving()
        vbds, in_progress = _tagged(session, host)
    finally:
        restarted.stop()

    assert errors and errors[0] is not None  # the caller saw the fetch fail
    assert vbds == []
    assert in_progress == []


def _fetch_in_background(agent, image_id, disk_format):
    """A fetch_image call on a thread: ``(thread, errors)``; ``errors`` gets
    the call's exception (None if it succeeded) once the thread ends."""
    errors = []
    fetch = threading.Thread(target=lambda: errors.append(_try(
        agent.api.fetch_image, instance_uuid=str(uuid.uuid4()), image_id=image_id,
        disk_format=disk_format, auth_token=None)))
    fetch.start()
    return fetch, errors


def _try(fn, **kwargs):
    try:
        fn(**kwargs)
    except Exception as e:
        return e
    return None


def _sr_pending(session):
    """{entry key: value} of the pending-chain entries in every SR."""
    pending = {}
    for rec in session.xenapi.SR.get_all_records().values():
        pending.update({chain.key: rec["other_config"][chain.key]
                        for chain in marks.pending_chains(rec["other_config"])})
    return pending


def test_sigkill_during_a_vhd_fetch_then_restart_destroys_the_chain_dom0_landed(
        make_sim, loop_devices, image_server, tmp_path):
    """XAPI keeps a plugin running when its caller dies: the chain lands, with
    no tag. The agent recorded the leaf's uuid in the SR first, so the
    restarted agent finds it and destroys it."""
    sim = make_sim(compute_vm=False)
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as f:
        f.write(os.urandom(8 * MiB))
    tarball = tmp_path / "image.tar"
    demo_env.make_vhd_tarball(str(raw), str(tarball))
    image_id = image_server.add(tarball)
    image_server.delay = 0.5  # about 4 s for the 8 MiB
    config, host = write_config(tmp_path, sim, "independent", image_server)
    session = sim.session()
    before = set(session.xenapi.VDI.get_all())
    agent = RunningAgent(config, host, tmp_path)
    agent.wait_serving()
    fetch, errors = _fetch_in_background(agent, image_id, "vhd")
    deadline = time.monotonic() + 30
    while not image_server.downloads and time.monotonic() < deadline:
        time.sleep(0.05)
    (key,) = _sr_pending(session)  # recorded before the plugin ran
    leaf_uuid = marks.read_pending_chain(key, _sr_pending(session)[key]).leaf_uuid

    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(30)
    fetch.join(60)
    agent.stop()
    sr_dir = os.path.join(sim.state_dir, "sr")
    landed = [os.path.join(sr_dir, sr, leaf_uuid + ".vhd") for sr in os.listdir(sr_dir)]
    deadline = time.monotonic() + 60
    while not any(os.path.exists(p) for p in landed) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any(os.path.exists(p) for p in landed), "the plugin did not land the chain"
    session.xenapi.SR.scan(session.xenapi.pool.get_default_SR(
        session.xenapi.pool.get_all()[0]))
    assert session.xenapi.VDI.get_by_uuid(leaf_uuid)  # there, untagged: a leak until now

    restarted = RunningAgent(config, host, tmp_path)
    try:
        restarted.wait_serving()
        left = set(session.xenapi.VDI.get_all()) - before
        pending = _sr_pending(session)
    finally:
        restarted.stop()

    assert errors and errors[0] is not None
    assert left == set()
    assert pending == {}
