"""The pieces ``nova-xen-split demo`` stands up: simulator and agent (the image
service is :mod:`nova_xen_split.cmd.image_service`).

Each piece is a small class with ``start()``/``stop()`` that owns exactly
what it made (a child process, a thread, files), so the demo can tear down
in reverse order whatever happened.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request

LISTEN_RE = re.compile(r"xapi-sim listening on (http://127\.0\.0\.1:\d+)")
SIM_PASSWORD = "xapi-sim"
MiB = 1024 * 1024

# Tool → Debian package, for the "what is missing and how to get it" lines.
TOOL_PACKAGES = {
    "sfdisk": "fdisk",
    "partx": "util-linux",
    "losetup": "mount",
    "blkid": "util-linux",
    "mkswap": "util-linux",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.ext3": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "resize2fs": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "qemu-img": "qemu-utils",
}
# What building the demo image needs (no root: mkfs -d fills a plain file).
IMAGE_TOOLS = ("sfdisk", "mkfs.ext4")
# The VHD variant of the image (booted in in_guest mode) needs qemu-img.
VHD_TOOLS = ("qemu-img",)
# What the disk steps need where they run (dom0 plugins or the in-guest backend).
DISK_TOOLS = ("sfdisk", "partx", "losetup", "blkid", "mkswap", "mkfs.ext4",
              "mkfs.ext3", "e2fsck", "resize2fs")


class DemoError(Exception):
    """The demo cannot go on; the message says why and what to do."""


def _run(cmd, timeout=60, input_text=None):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          input=input_text)
    if proc.returncode != 0:
        raise DemoError("%s failed (exit %d): %s" % (
            " ".join(cmd), proc.returncode, proc.stderr.strip()))
    return proc.stdout


def missing_tools(tools):
    """``[(tool, package)]`` of tools not on PATH (sbin included)."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [(t, TOOL_PACKAGES.get(t, t)) for t in tools if shutil.which(t, path=path) is None]


def install_hint(missing):
    packages = sorted({pkg for _tool, pkg in missing})
    return "apt-get install %s" % " ".join(packages)


def loop_devices_problem():
    """None when loop devices work here, else the reason and the fix."""
    if os.geteuid() != 0:
        return "not running as root (loop devices and disk tools need it): run as root"
    if not os.path.exists("/dev/loop-control"):
        return ("/dev/loop-control is missing: load the loop module (modprobe loop) "
                "or, in a container, run it with --privileged")
    probe = "/tmp/nxs-demo-loop-probe-%d" % os.getpid()
    with open(probe, "wb") as f:
        f.truncate(MiB)
    try:
        out = subprocess.run(["losetup", "-f", "--show", probe], capture_output=True,
                             text=True, timeout=20)
        if out.returncode != 0:
            return "losetup cannot attach a loop device: %s" % out.stderr.strip()
        subprocess.run(["losetup", "-d", out.stdout.strip()], timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "losetup cannot run: %s" % e
    finally:
        os.unlink(probe)
    return None


def loops_backed_under(path):
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True,
                         timeout=20).stdout
    return [line.split(":", 1)[0] for line in out.splitlines() if path in line]


# What pygrub reads from a PV guest's disk to find its kernel.
GRUB_CFG = """\
set default=0
set timeout=1
menuentry 'nova-xen-split demo' {
    linux /boot/vmlinuz root=/dev/xvda1 ro console=hvc0
    initrd /boot/initrd.img
}
"""


def make_disk_image(path, size_mb=64, message="hello from nova-xen-split demo\n",
                    bootloader=True):
    """A raw disk: msdos label, one ext4 partition from sector 2048 holding a
    file and a grub 2 config, so that pygrub finds what to boot (a PV guest)
    and a BIOS a bootable partition (HVM).

    Built without root or loop devices: the filesystem is made in a plain
    file with ``mkfs.ext4 -d`` and copied into place after the table.
    """
    work = path + ".d"
    os.makedirs(os.path.join(work, "root", "etc"), exist_ok=True)
    os.makedirs(os.path.join(work, "root", "boot", "grub"), exist_ok=True)
    with open(os.path.join(work, "root", "etc", "motd"), "w") as f:
        f.write(message)
    if bootloader:  # else a disk pygrub finds nothing to boot on
        with open(os.path.join(work, "root", "boot", "grub", "grub.cfg"), "w") as f:
            f.write(GRUB_CFG)
    start_sector = 2048
    fs_path = os.path.join(work, "fs.img")
    fs_bytes = size_mb * MiB - start_sector * 512
    with open(fs_path, "wb") as f:
        f.truncate(fs_bytes)
    _run(["mkfs.ext4", "-q", "-F", "-L", "demo-root", "-d", os.path.join(work, "root"),
          fs_path])
    with open(path, "wb") as f:
        f.truncate(size_mb * MiB)
    _run(["sfdisk", "--quiet", path], input_text="label: dos\nstart=%d, type=83, bootable\n"
         % start_sector)
    with open(fs_path, "rb") as src, open(path, "r+b") as dst:
        dst.seek(start_sector * 512)
        shutil.copyfileobj(src, dst, 4 * MiB)
    shutil.rmtree(work)
    return os.path.getsize(path)


def make_vhd_tarball(raw_path, tar_path):
    """The raw disk as Glance serves a XenServer image: a tarball with ``0.vhd``.

    ``qemu-img`` (an independent VHD producer) writes a dynamic VHD of the
    exact size; the dom0 image plugin unpacks it into the SR.
    """
    vhd_path = tar_path + ".vhd"
    _run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o",
          "subformat=dynamic,force_size=on", raw_path, vhd_path], timeout=120)
    with tarfile.open(tar_path, "w") as tar:
        tar.add(vhd_path, arcname="0.vhd")
    os.unlink(vhd_path)
    return os.path.getsize(tar_path)


def _console_script(name, module):
    """The venv's console script, else ``python -c`` on its entry point."""
    script = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "import sys; from %s import main; sys.exit(main())" % module]


class _Child:
    """A child process in its own session, its output in a log file."""

    def __init__(self, log_path):
        self.log_path = log_path
        self.proc = None

    def output_tail(self, lines=15):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout=30):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        code, self.proc = self.proc.returncode, None
        return code


class Simulator(_Child):
    """``xapi-sim`` on a state directory, with or without a compute VM;
    ``extra_args``: more of its command-line options."""

    def __init__(self, state_dir, compute_vm, extra_args=()):
        super().__init__(os.path.join(os.path.dirname(state_dir),
                                      os.path.basename(state_dir) + ".log"))
        self.state_dir = state_dir
        self.compute_vm = compute_vm
        self.extra_args = list(extra_args)
        self.url = None

    def start(self, timeout=30):
        os.makedirs(self.state_dir, exist_ok=True)
        cmd = [sys.executable, "-m", "dom0.simulator.server", "--state-dir", self.state_dir,
               "--port", "0", "--password", SIM_PASSWORD,
               "--compute-vm" if self.compute_vm else "--no-compute-vm"] + self.extra_args
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = LISTEN_RE.search(line)
            if m:
                self.url = m.group(1)
                # Keep draining stdout so the simulator never blocks on a full pipe.
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        self.stop()
        raise DemoError("xapi-sim did not start:\n%s" % self.output_tail())

    def _drain(self):
        proc = self.proc
        with open(self.log_path, "a") as log:
            for line in proc.stdout:
                log.write(line)

    def compute_vm_uuid(self):
        vms = os.path.join(self.state_dir, "vms")
        for vm_uuid in sorted(os.listdir(vms)) if os.path.isdir(vms) else ():
            if os.path.exists(os.path.join(vms, vm_uuid, "sys", "hypervisor", "uuid")):
                return vm_uuid
        return None


def write_config(path, sim, host, glance_url, work_dir, transport_url=None,
                 vm_uuid=None, cache_images=None, glance_options=None):
    """The config file that the agent and the driver share, as deployed;
    ``cache_images`` sets ``[xenserver] cache_images`` (unset: its default);
    ``glance_options`` adds ``[glance]`` options (name → text)."""
    if vm_uuid:
        vm_dir = os.path.join(sim.state_dir, "vms", vm_uuid)
        vm_uuid_file = os.path.join(vm_dir, "sys", "hypervisor", "uuid")
        device_dir = os.path.join(vm_dir, "dev")
    else:
        vm_uuid_file = os.path.join(work_dir, "no-local-vm")
        device_dir = "/dev"
    lines = [
        "[DEFAULT]",
        "host = %s" % host,
        "state_path = %s" % work_dir,
        "default_ephemeral_format = ext4",
    ]
    # Named explicitly even for the local socket: oslo.messaging's own default
    # for transport_url is "rabbit://", which would otherwise win.
    socket_path = os.path.join(work_dir, "agent.sock")
    lines.append("transport_url = %s" % (transport_url or "unix://" + socket_path))
    lines += [
        "",
        "[xenserver]",
        "connection_url = %s" % sim.url,
        "connection_username = root",
        "connection_password = %s" % SIM_PASSWORD,
        "independent_compute = auto",
        "vm_uuid_file = %s" % vm_uuid_file,
        # No xenstore here: the uuid file alone says whether a local VM exists.
        "xenstore_read_command = false",
        "device_dir = %s" % device_dir,
    ]
    if cache_images is not None:
        lines.append("cache_images = %s" % cache_images)
    lines += [
        "",
        "[glance]",
        "api_servers = %s" % glance_url,
    ]
    lines += ["%s = %s" % item for item in sorted((glance_options or {}).items())]
    lines += [
        "",
        "[agent]",
        "socket_path = %s" % socket_path,
        "startup_timeout = 30",
        "rpc_timeout = 120",
    ]
    if vm_uuid:
        # The demo runs as root: the in-guest backend's privileged daemon is
        # forked from the agent instead of started through sudo.
        lines.append("privsep_start_method = fork")
    lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    os.chmod(path, 0o600)  # it holds the XAPI password
    return path


class Agent(_Child):
    """``nova-xen-split-agent --config-file F`` as its own process."""

    def __init__(self, config_file, log_path):
        super().__init__(log_path)
        self.config_file = config_file

    def start(self):
        cmd = _console_script("nova-xen-split-agent", "agent.service")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd + ["--config-file", self.config_file],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def exited(self):
        return self.proc is not None and self.proc.poll() is not None


# -- an image service's records (Glance v2) ---------------------------------------

def _glance(url, method, path, body=None, token=None, timeout=60):
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if token:
        headers["X-Auth-Token"] = token
    request = urllib.request.Request(
        url.rstrip("/") + path, method=method, headers=headers,
        data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        raise DemoError("%s %s%s: HTTP %d %s" % (method, url, path, e.code, e.reason)) \
            from None
    except (OSError, ValueError) as e:
        raise DemoError("%s %s%s: %s" % (method, url, path, e)) from None


def image_record(url, image_id, token=None):
    """The record of an image of the image service at ``url``."""
    return _glance(url, "GET", "/v2/images/%s" % image_id, token=token)


def create_image(url, name, token=None):
    """A new queued image, as Nova's API makes one for a snapshot; its id."""
    record = _glance(url, "POST", "/v2/images", {
        "name": name, "disk_format": "raw", "container_format": "bare",
        "visibility": "private"}, token=token)
    return record["id"]
