"""``--password-file``: the root password without putting it on the command line.

Not XAPI behaviour (a real host checks passwords with PAM); a password
given with ``--password`` shows in ``ps`` to every local user.
"""

import os
import signal
import subprocess
import sys

import pytest
import XenAPI

from dom0.simulator import server
from tests.conftest import LISTEN_RE

SECRET = "s3cret-from-a-file"


def start(state_dir, *args):
    """A simulator started with ``args``; returns (process, url, output lines)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dom0.simulator.server", "--state-dir", str(state_dir),
         "--port", "0", "--no-compute-vm", "--no-loop-devices", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        match = LISTEN_RE.search(line)
        if match:
            return proc, match.group(1), lines
    proc.wait(30)
    raise AssertionError("xapi-sim did not start: %s" % "".join(lines))


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.stdout.close()


def test_password_from_a_file_logs_in_and_stays_out_of_ps(tmp_path):
    secret = tmp_path / "password"
    secret.write_text(SECRET + "\n")
    os.chmod(secret, 0o600)
    proc, url, _ = start(tmp_path / "state", "--password-file", str(secret))
    try:
        with open("/proc/%d/cmdline" % proc.pid, "rb") as f:
            assert SECRET.encode() not in f.read()
        ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True,
                            check=True, timeout=30).stdout
        assert SECRET not in ps
        session = XenAPI.Session(url)
        session.xenapi.login_with_password("root", SECRET, "1.0", "tests")
        session.xenapi.session.logout()
        with pytest.raises(XenAPI.Failure):
            XenAPI.Session(url).xenapi.login_with_password("root", "xapi-sim", "1.0", "t")
    finally:
        stop(proc)


def test_a_password_file_others_can_read_is_warned_about(tmp_path):
    secret = tmp_path / "password"
    secret.write_text(SECRET)
    os.chmod(secret, 0o644)
    proc, _, lines = start(tmp_path / "state", "--password-file", str(secret))
    stop(proc)
    assert any("can be read by users other than its owner" in line for line in lines)


def test_password_options(tmp_path):
    state = ["--state-dir", str(tmp_path)]
    assert server.parse_args(state).password == server.DEFAULT_PASSWORD
    assert server.parse_args(state + ["--password", "given"]).password == "given"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for bad in (["--password", "a", "--password-file", str(empty)],
                ["--password-file", str(empty)],
                ["--password-file", str(tmp_path / "missing")]):
        with pytest.raises(SystemExit):
            server.parse_args(state + bad)
