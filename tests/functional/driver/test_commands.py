"""The console scripts as an operator runs them: ``nova-xen-split demo``, ``-status``."""

import glob
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from rpc import methods, server, transports
from tests.functional.driver.conftest import RAW_IMAGE_ID
from tests.functional.rpc.conftest import make_conf
from tests.functional.rpc.endpoint import RecordingEndpoint

BIN = os.path.dirname(sys.executable)


def _run(args, timeout):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def _demo_dirs():
    return set(glob.glob("/tmp/nxs-demo-*"))


def test_demo_boots_and_tears_down_an_instance_in_both_modes(loop_devices):
    before = _demo_dirs()
    proc = _run([os.path.join(BIN, "nova-xen-split"), "demo"], timeout=240)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "== independent mode ==" in out and "== in_guest mode ==" in out
    assert "mode independent, interface %s" % methods.VERSION in out
    assert "mode in_guest, interface %s" % methods.VERSION in out
    for step in ("fetch_image", "auto_configure_disk", "generate_disk", "generate_configdrive",
                 "VM.start", "destroy"):
        assert step in out
    assert "fetch_image (raw)" in out and "fetch_image (vhd)" in out
    assert out.count("destroyed, nothing left behind") == 2
    assert out.count("ok: booted, snapshotted (image ") == 2
    assert _demo_dirs() == before  # its temporary directory is gone


def test_demo_runs_over_rabbitmq(loop_devices, rabbit_url):
    proc = _run([os.path.join(BIN, "nova-xen-split"), "demo", "--mode", "independent",
                 "--transport-url", rabbit_url], timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "transport %s" % transports.redacted_url(rabbit_url) in proc.stdout
    assert "guest:guest" not in proc.stdout + proc.stderr  # the password stays hidden
    assert "destroyed, nothing left behind" in proc.stdout


def test_demo_boots_an_image_of_an_existing_glance_and_snapshots_into_it(
        loop_devices, glance_images):
    proc = _run([os.path.join(BIN, "nova-xen-split"), "demo", "--glance-url",
                 glance_images.url, "--image-id", RAW_IMAGE_ID], timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "Image %s from the Glance at %s: raw" % (RAW_IMAGE_ID, glance_images.url) in out
    snapshots = re.findall(r"snapshotted \(image ([0-9a-f-]{36})\)", out)
    assert len(snapshots) == 2
    for image_id in snapshots:
        record = glance_images.image(image_id)
        assert (record["status"], record["disk_format"], record["container_format"]) == (
            "active", "vhd", "ovf")
        glance_images.delete(image_id)


def test_demo_takes_glance_url_and_image_id_together():
    proc = _run([os.path.join(BIN, "nova-xen-split"), "demo", "--glance-url",
                 "http://127.0.0.1:9"], timeout=60)
    assert proc.returncode == 2 and "--glance-url and --image-id go together" in proc.stderr


def _alive(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            return "\nState:\tZ" not in f.read()  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_demo_stopped_by_a_signal_stops_what_it_started_and_says_so(loop_devices, signum):
    before = _demo_dirs()
    demo = subprocess.Popen([os.path.join(BIN, "nova-xen-split"), "demo", "--mode",
                             "independent"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    agent_pid = None
    try:
        for line in demo.stdout:
            found = re.search(r"agent pid (\d+)", line)
            if found:
                agent_pid = int(found.group(1))
                break
        assert agent_pid is not None, demo.stderr.read()
        demo.send_signal(signum)
        out, err = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()

    assert demo.returncode == 130
    assert [line for line in err.splitlines() if line.strip()] == [
        "nova-xen-split demo: interrupted; everything it started is stopped"], err
    assert not _alive(agent_pid)
    assert _demo_dirs() == before
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert "nxs-demo-" not in loops


def test_demo_with_an_unreachable_broker_fails_in_one_line_within_a_minute(loop_devices):
    started = time.monotonic()
    proc = _run([os.path.join(BIN, "nova-xen-split"), "demo", "--mode", "independent",
                 "--transport-url", "rabbit://guest:S3cret@127.0.0.1:1/"], timeout=120)

    assert time.monotonic() - started < 60
    assert proc.returncode != 0
    failed = [line for line in proc.stdout.splitlines() if "] FAILED: " in line]
    assert len(failed) == 1 and "[DEFAULT] transport_url" in failed[0], proc.stdout
    assert "S3cret" not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def _status(config_file):
    return _run([os.path.join(BIN, "nova-xen-split-status"), "upgrade", "check",
                 "--config-file", config_file], timeout=120)


def test_status_check_passes_for_a_working_pair(xapi_sim, make_pair):
    pair = make_pair(xapi_sim)
    proc = _status(pair.config_file)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "independent" in proc.stdout and "answers" in proc.stdout


def test_status_check_fails_for_an_option_the_mode_cannot_serve(xapi_sim, make_pair, tmp_path):
    pair = make_pair(xapi_sim)
    config = tmp_path / "check_host.conf"
    with open(pair.config_file) as f:
        text = f.read()
    config.write_text(text.replace("[xenserver]\n", "[xenserver]\ncheck_host = true\n"))
    proc = _status(str(config))
    assert proc.returncode == 2, proc.stdout
    assert "check_host" in proc.stdout


def test_status_check_warns_of_an_agent_older_than_the_driver(tmp_path):
    # An agent still at interface 1.0 (a test endpoint announcing 1.0 behind
    # a server speaking 1.0), as after upgrading the driver first.
    socket_path = tmp_path / "old.sock"
    agent = server.AgentServer(make_conf("unix://%s" % socket_path, "old-agent"),
                               RecordingEndpoint("old-agent", version="1.0"), version="1.0")
    agent.start()
    try:
        config = tmp_path / "old.conf"
        config.write_text("[DEFAULT]\nhost = old-agent\ntransport_url = unix://%s\n"
                          "[xenserver]\nconnection_url = http://127.0.0.1:9\n"
                          "[agent]\nrpc_timeout = 5\n" % socket_path)
        proc = _status(str(config))
    finally:
        agent.stop()
        agent.wait()
    assert proc.returncode == 2, proc.stdout  # XAPI is unreachable: a failure
    assert ("The agent for host old-agent answers, interface 1.0, older than this "
            "driver's %s: upgrade nova-xen-split-agent." % methods.VERSION) in \
        " ".join(proc.stdout.replace("|", " ").split())


def test_status_check_fails_when_xapi_and_the_agent_are_unreachable(tmp_path):
    config = tmp_path / "nothing.conf"
    config.write_text("[DEFAULT]\nhost = nowhere\ntransport_url = unix://%s\n"
                      "[xenserver]\nconnection_url = http://127.0.0.1:9\n"
                      "[agent]\nrpc_timeout = 1\n" % (tmp_path / "none.sock"))
    proc = _status(str(config))
    assert proc.returncode == 2
    assert "XAPI at http://127.0.0.1:9 refused or did not answer" in proc.stdout
    assert "did not answer" in proc.stdout


def test_status_with_a_missing_config_file_says_so_in_one_line(tmp_path):
    proc = _status(str(tmp_path / "nope.conf"))
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        "nova-xen-split-status: Failed to find some config files: %s"
        % (tmp_path / "nope.conf")], proc.stderr


def test_status_with_an_unreachable_broker_fails_within_a_minute(tmp_path, xapi_sim):
    config = tmp_path / "broker.conf"
    config.write_text("[DEFAULT]\nhost = nowhere\ntransport_url = rabbit://guest:S3cret@"
                      "127.0.0.1:1/\n[xenserver]\nconnection_url = %s\n"
                      "connection_password = %s\n" % (xapi_sim.url, xapi_sim.password))
    started = time.monotonic()
    proc = _status(str(config))

    assert time.monotonic() - started < 60
    assert proc.returncode == 2
    text = re.sub(r"[\s|]+", " ", proc.stdout)  # the table wraps its lines
    assert "[DEFAULT] transport_url" in text and "S3cret" not in text
    assert "Traceback" not in proc.stdout + proc.stderr


def test_demo_without_loop_devices_says_what_is_missing_and_runs_what_it_can(
        monkeypatch, tmp_path):
    # A machine without loop devices cannot be made here (we are root with
    # /dev/loop-control), so only the probe's answer is replaced; the
    # simulator, the agent and the driver run for real.
    from nova_xen_split.cmd import demo, demo_env
    monkeypatch.setattr(demo_env, "loop_devices_problem",
                        lambda: "/dev/loop-control is missing: load the loop module")
    lines = []
    code = demo.run(state_dir=str(tmp_path / "demo"), printer=demo.Printer(lines.append))
    out = "\n".join(lines)
    assert code == 0, out
    assert "Missing: /dev/loop-control is missing: load the loop module." in out
    assert "the in_guest mode is skipped" in out
    assert "== in_guest mode ==" not in out
    assert "destroyed, nothing left behind" in out
    assert "generate_configdrive" in out and "generate_disk" not in out


def test_missing_disk_tools_are_named_with_the_package_to_install(monkeypatch):
    from nova_xen_split.cmd import demo_env
    monkeypatch.setattr(demo_env.shutil, "which",
                        lambda tool, path=None: None if tool in ("sfdisk", "mkfs.ext4") else tool)
    missing = demo_env.missing_tools(demo_env.DISK_TOOLS)
    assert missing == [("sfdisk", "fdisk"), ("mkfs.ext4", "e2fsprogs")]
    assert demo_env.install_hint(missing) == "apt-get install e2fsprogs fdisk"
