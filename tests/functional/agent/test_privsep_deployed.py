"""In-guest privsep as deployed: the agent unprivileged, its daemon by sudo.

The agent runs as a user of its own, made for the test, whose only root
right is one sudoers line: ``privsep-helper`` with the project's config
file and privsep context, and a socket path in a fresh temporary
directory (a sudo regular expression, sudo >= 1.9.10), nothing else. It
serves a fetch_image and an auto_configure_disk end to end over its Unix
socket, in_guest mode, against the simulator.
"""

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import uuid

import pytest
from oslo_config import cfg

from nova_xen_split.cmd import demo_env
from nova_xen_split.cmd.image_service import ImageService
from nova_xen_split.xenhost import conf as nxs_conf
from rpc import client
from tests.conftest import SimProcess, need
from tests.functional.agent import disktools

MiB = 1 << 20
VENV_BIN = os.path.dirname(sys.executable)
CONTEXT = "agent.privileged.agent_ctx"


def sudoers_line(user, config_file):
    """The one sudoers entry the agent needs: privsep-helper for the
    project's context and config file, a socket in a mkdtemp directory."""
    helper = os.path.join(VENV_BIN, "privsep-helper")
    args = ("--config-file %s --privsep_context %s --privsep_sock_path "
            "/tmp/tmp[a-z0-9_]+/privsep\\.sock" % (re.escape(config_file), re.escape(CONTEXT)))
    return "%s ALL=(root) NOPASSWD: %s ^%s$\n" % (user, helper, args)


def _closed_dirs_above(path):
    """Directories above ``path`` that other users cannot pass through."""
    closed = []
    path = os.path.dirname(os.path.realpath(path))
    while path not in ("/", ""):
        if not os.stat(path).st_mode & 0o001:
            closed.append(path)
        path = os.path.dirname(path)
    return closed


@pytest.fixture
def agent_user():
    """An unprivileged user of its own, removed afterwards with its sudoers
    drop-in. It may pass through the directories above this interpreter
    (an ACL entry for it alone, removed afterwards): a deployed agent's
    Python is the system's, readable by all."""
    need(os.geteuid() == 0, "making a user needs root")
    need(shutil.which("sudo") is not None, "sudo is not installed (apt-get install sudo)")
    closed = _closed_dirs_above(sys.executable)
    need(not closed or shutil.which("setfacl") is not None,
         "setfacl is not installed (apt-get install acl)")
    name = "nxsagent%s" % uuid.uuid4().hex[:6]
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True, timeout=60)
    dropin = "/etc/sudoers.d/%s" % name
    opened = []
    try:
        for path in closed:
            extended = subprocess.run(["getfacl", "-cs", path], capture_output=True,
                                      text=True, timeout=30).stdout.strip()
            subprocess.run(["setfacl", "-m", "u:%s:x" % name, path], check=True,
                           capture_output=True, timeout=30)
            opened.append((path, bool(extended)))
        yield pwd.getpwnam(name), dropin
    finally:
        for path, extended in opened:
            # Back as it was: without the entry, or with no ACL at all.
            subprocess.run(["setfacl", "-x", "u:%s" % name, path] if extended
                           else ["setfacl", "-b", path], capture_output=True, timeout=30)
        if os.path.exists(dropin):
            os.unlink(dropin)
        subprocess.run(["userdel", name], capture_output=True, timeout=60)


def _open_path_to(path):
    """Let other users through every directory above ``path`` (no listing)."""
    path = os.path.dirname(path)
    while path not in ("/", ""):
        os.chmod(path, os.stat(path).st_mode | 0o111)
        path = os.path.dirname(path)


def test_an_unprivileged_agent_with_one_sudoers_line_serves_in_guest_disk_work(
        loop_devices, agent_user):
    user, dropin = agent_user
    base = tempfile.mkdtemp(prefix="nxs-privsep-")
    sim = agent = None
    try:
        sim = SimProcess(os.path.join(base, "sim"), compute_vm=True).start()
        vm_uuid = sim.compute_vm_uuid
        uuid_file = os.path.join(sim.state_dir, "vms", vm_uuid, "sys", "hypervisor", "uuid")
        _open_path_to(uuid_file)
        os.chmod(uuid_file, 0o644)
        _open_path_to(os.path.join(sim.vm_dev_dir(vm_uuid), "xvda"))
        work = os.path.join(base, "agent")
        os.mkdir(work)
        os.chown(work, user.pw_uid, user.pw_gid)
        image_path = os.path.join(base, "image.raw")
        demo_env.make_disk_image(image_path, 64, message="through sudo\n")
        with ImageService() as images:
            images.start()
            image_id = images.add(image_path)
            config_file = demo_env.write_config(
                os.path.join(base, "nova-xen-split.conf"), sim, "nxs-privsep-test",
                images.url, work, vm_uuid=vm_uuid)
            with open(config_file) as f:
                text = f.read().replace("privsep_start_method = fork\n", "")
            text += ("privsep_start_method = helper\n\n[%s]\nhelper_command = sudo %s "
                     "--config-file %s\n" % (nxs_conf.PRIVSEP_SECTION,
                                             os.path.join(VENV_BIN, "privsep-helper"),
                                             config_file))
            with open(config_file, "w") as f:
                f.write(text)
            os.chmod(config_file, 0o644)
            with open(dropin, "w") as f:
                f.write(sudoers_line(user.pw_name, config_file))
            os.chmod(dropin, 0o440)
            subprocess.run(["visudo", "-cf", dropin], check=True, capture_output=True,
                           timeout=30)
            # The entry allows exactly that: not a shell, not another config.
            for other in (["/bin/sh", "-c", "id"],
                          [os.path.join(VENV_BIN, "privsep-helper"), "--config-file",
                           "/tmp/evil.conf", "--privsep_context", CONTEXT,
                           "--privsep_sock_path", "/tmp/tmpabc/privsep.sock"]):
                denied = subprocess.run(["sudo", "-n", "-u", "root", "-l"] + other,
                                        capture_output=True, timeout=30,
                                        user=user.pw_uid, group=user.pw_gid)
                assert denied.returncode != 0, other

            agent = subprocess.Popen(
                [os.path.join(VENV_BIN, "nova-xen-split-agent"), "--config-file", config_file],
                stdout=open(os.path.join(base, "agent.log"), "w"), stderr=subprocess.STDOUT,
                user=user.pw_uid, group=user.pw_gid, extra_groups=[], cwd=work,
                env=dict(os.environ, HOME=work, TMPDIR="/tmp"), start_new_session=True)
            conf = cfg.ConfigOpts()
            nxs_conf.register_opts(conf)
            conf(["--config-file", config_file], project="nova-xen-split",
                 default_config_files=[])
            api = client.AgentAPI(conf)
            described = api.describe()
            assert described["mode"] == "in_guest"
            instance = str(uuid.uuid4())

            root = api.fetch_image(instance_uuid=instance, image_id=image_id,
                                   disk_format="raw")["vdis"][0]
            grown = api.auto_configure_disk(vdi_uuid=root["uuid"], new_gb=1,
                                            instance_uuid=instance)

            assert grown["size_bytes"] == 1 << 30
            path = disktools.vdi_file(sim, root["uuid"])
            assert disktools.ext_read(path, 2048 * 512, "/etc/motd") == b"through sudo\n"
            clean, output = disktools.e2fsck_clean(path, 2048 * 512)
            assert clean, output
            helpers = subprocess.run(["pgrep", "-u", "root", "-f", "privsep-helper.*%s"
                                      % re.escape(config_file)],
                                     capture_output=True, text=True, timeout=30).stdout
            assert helpers.strip(), "no root privsep daemon"
            agent_uid = os.stat("/proc/%d" % agent.pid).st_uid
            assert agent_uid == user.pw_uid
            api.destroy_vdis(vdi_uuids=[root["uuid"]])
    finally:
        if agent is not None:
            agent.terminate()
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        if sim is not None:
            sim.stop()
        if agent is not None and agent.returncode not in (0, -15):
            with open(os.path.join(base, "agent.log")) as f:
                print(f.read()[-4000:])
        shutil.rmtree(base, ignore_errors=True)
