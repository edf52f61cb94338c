"""Fixtures for the simulator's own tests: one simulator per test module.

Tests that do not interfere share a module-scoped ``xapi-sim`` (started as a
child process and driven with the official XenAPI SDK over HTTP); each module
checks at the end that the simulator left no loop device behind.
"""

import os
import stat
import subprocess
import textwrap

import pytest

from tests.conftest import SimProcess, loop_devices_usable, need, small_tmpfs

# A dom0 plugin for tests, written with the XenAPIPlugin contract.
TEST_PLUGIN = '''\
#!/usr/bin/env python3
import json
import os
import signal
import subprocess
import sys

import XenAPIPlugin


def echo(session, args):
    return json.dumps({"args": args, "session": session.handle,
                       "dev_dir": os.environ.get("NXS_DOM0_DEV_DIR")})


def boom(session, args):
    raise ValueError("bad input: %s" % args.get("what"))


def exit3(session, args):
    sys.stdout.write("partial output")
    sys.stderr.write("something broke")
    sys.exit(3)


def garbage(session, args):
    print("this is not XML-RPC")
    sys.exit(0)


def crash(session, args):
    os.kill(os.getpid(), signal.SIGKILL)


def fault(session, args):
    import xmlrpc.client
    print(xmlrpc.client.dumps(xmlrpc.client.Fault(42, "plugin fault"), methodresponse=True))
    sys.exit(0)


def not_a_string(session, args):
    import xmlrpc.client
    print(xmlrpc.client.dumps(({"Status": "Success", "Value": 7},), methodresponse=True))
    sys.exit(0)


def sleep(session, args):
    import time
    time.sleep(float(args["seconds"]))
    return "slept"


def partition(session, args):
    dev = os.path.join(os.environ["NXS_DOM0_DEV_DIR"], args["dev"])
    subprocess.run(["sfdisk", "-q", "--no-reread", dev], input="2048,;\\n", text=True,
                   check=True, capture_output=True, timeout=60)
    return dev


if __name__ == "__main__":
    XenAPIPlugin.dispatch({
        "echo": echo, "boom": boom, "exit3": exit3, "garbage": garbage, "crash": crash,
        "fault": fault, "not_a_string": not_a_string, "sleep": sleep,
        "partition": partition,
    })
'''


def write_plugin(plugin_dir, name, text):
    path = os.path.join(str(plugin_dir), name)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("plugins")
    write_plugin(path, "test_plugin.py", TEST_PLUGIN)
    return path


def loops_under(path):
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, timeout=30).stdout
    return [line for line in out.splitlines() if str(path) in line]


@pytest.fixture(scope="module")
def sim(tmp_path_factory, plugin_dir):
    """A module's simulator (no compute VM), with the test plugin installed."""
    need(loop_devices_usable(), "loop devices are not usable (needs root and /dev/loop-control)")
    state = tmp_path_factory.mktemp("xapi-sim")
    proc = SimProcess(state, extra_args=["--plugin-dir", str(plugin_dir),
                                         "--plugin-timeout", "20"]).start()
    yield proc
    proc.stop()
    assert loops_under(state) == [], "the simulator left loop devices attached"


@pytest.fixture(scope="module")
def session(sim):
    xs = sim.session()
    yield xs
    try:
        xs.xenapi.session.logout()
    except Exception:  # the simulator may already be gone
        pass


@pytest.fixture(scope="module")
def xapi(session):
    return session.xenapi


@pytest.fixture(scope="module")
def host_ref(session):
    return session.xenapi.session.get_this_host(session._session)


@pytest.fixture(scope="module")
def sr_ref(xapi):
    return xapi.pool.get_default_SR(xapi.pool.get_all()[0])


@pytest.fixture(scope="module")
def dom0_ref(xapi, host_ref):
    return xapi.host.get_control_domain(host_ref)


@pytest.fixture
def small_filesystem(tmp_path):
    """A 1 MiB tmpfs: the place where a VDI write runs out of space."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    with small_tmpfs(str(mountpoint)):
        yield mountpoint
