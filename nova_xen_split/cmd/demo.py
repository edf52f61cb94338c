"""``nova-xen-split demo``: boot one instance in each agent mode, end to end.

For each mode it starts a fresh ``xapi-sim`` (without a compute VM for
``independent``, with one for ``in_guest``), writes the config file a
deployment would have, starts ``nova-xen-split-agent`` on it as its own
process, and drives :class:`XenSplitDriver` in this process: spawn from an
image it made itself and serves on loopback, show each step and the disks,
snapshot it back into the image service (a VHD tarball, as Nova's XenAPI
driver made them), destroy, and check that nothing is left (VMs, VDIs,
VBDs, loop devices, processes, files).

With ``glance_url`` and ``image_id`` it boots that image of an existing
Glance in each mode and snapshots each instance into that Glance, printing
the snapshot's image id; otherwise it serves its own image from the
embedded stand-in (no Glance needed) and snapshots into it.
"""

import base64
import os
import shutil
import subprocess
import tempfile
import time
import uuid as uuidlib

from oslo_config import cfg

from nova_xen_split import driver as nxs_driver
from nova_xen_split import objects, vm_utils
from nova_xen_split.cmd import demo_env
from nova_xen_split.cmd import image_service
from nova_xen_split.xenhost import conf as nxs_conf
from nova_xen_split.xenhost import marks
from rpc import exceptions, transports

MODES = ("independent", "in_guest")
IMAGE_MB = 64
GiB = 1024 ** 3
USER_DATA = b"#cloud-config\nfinal_message: booted by nova-xen-split demo\n"


class Printer:
    """Writes the demo's lines; everything goes through here for the tests."""

    def __init__(self, write=print):
        self.write = write

    def line(self, text=""):
        self.write(text)

    def step(self, mode, step):
        self.write("  [%-11s] %-22s %-30s %7.2f s" % (mode, step.name, step.detail, step.seconds))


def demo_flavor(full):
    """Root grow, ephemeral and swap need block devices; without them, none."""
    if full:
        return objects.Flavor(name="demo.small", memory_mb=256, vcpus=1, root_gb=1,
                              ephemeral_gb=1, swap=128)
    return objects.Flavor(name="demo.tiny", memory_mb=256, vcpus=1, root_gb=0,
                          ephemeral_gb=0, swap=0)


def demo_instance(mode, flavor, image_id):
    return objects.Instance(
        hostname="demo-%s" % mode.replace("_", "-"), flavor=flavor, image_ref=image_id,
        config_drive="True", project_id="demo",
        user_data=base64.b64encode(USER_DATA).decode("ascii"),
        key_name="demo-key", key_data="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDemo demo@nxs",
        metadata={"role": "demo", "mode": mode}, availability_zone="nova")


def demo_network_info():
    return [{
        "id": "0c1b5e0e-5a9e-4a5c-9d43-6b3f3c5f0a01", "address": "fa:16:3e:00:00:01",
        "type": "bridge",
        "network": {"id": "net-demo", "bridge": "xenbr0", "meta": {"mtu": 1500},
                    "subnets": [{"cidr": "192.0.2.0/24",
                                 "ips": [{"address": "192.0.2.10", "type": "fixed"}],
                                 "gateway": {"address": "192.0.2.1"},
                                 "dns": [{"address": "192.0.2.53"}], "routes": []}]},
    }]


def _load_conf(config_file):
    conf = cfg.ConfigOpts()
    nxs_conf.register_opts(conf)
    conf(args=["--config-file", config_file], project="nova-xen-split",
         default_config_files=[])
    return conf


def _wait_for_agent(driver, agent, host, timeout=60):
    """init_host, retried while the agent process is alive and starting."""
    deadline = time.monotonic() + timeout
    driver._conf.set_override("startup_timeout", 1.0, group="agent")
    while True:
        if agent.exited():
            if agent.proc.returncode in (1, 2):  # a refusal: its one line says why
                raise demo_env.DemoError("the agent refused to start: %s" % (
                    agent.output_tail(1).strip() or "(no reason printed)"))
            raise demo_env.DemoError("the agent exited during startup (code %s):\n%s" % (
                agent.proc.returncode, agent.output_tail()))
        try:
            return driver.init_host(host)
        except exceptions.NovaXenSplitError as e:
            if "describe()" not in str(e) or time.monotonic() > deadline:
                raise


def _disk_table(session, vm_ref):
    """``[(userdevice, purpose, mode, virtual bytes, allocated bytes)]`` of a VM."""
    rows = []
    for vbd_ref in session.call("VM.get_VBDs", vm_ref):
        vbd = session.call("VBD.get_record", vbd_ref)
        vdi = session.call("VDI.get_record", vbd["VDI"])
        mark = marks.read_vdi(vdi.get("other_config"))
        purpose = mark.purpose if mark else "?"
        rows.append((vbd["userdevice"], purpose, vbd["mode"], int(vdi["virtual_size"]),
                     int(vdi.get("physical_utilisation") or 0)))
    return sorted(rows)


def _counts(session):
    """VMs, VBDs and VDIs on the hypervisor; image cache VDIs, which stay
    for the next spawn of their image by design, are not counted."""
    counts = {cls: len(session.call(cls + ".get_all")) for cls in ("VM", "VBD")}
    counts["VDI"] = sum(1 for rec in session.call("VDI.get_all_records").values()
                        if marks.read_cache(rec.get("other_config")) is None)
    return counts


def _leftovers(session, instance_uuid, baseline, state_dir):
    """What of the instance is still on the hypervisor, as text lines."""
    left = []
    if vm_utils.find_vm(session, instance_uuid):
        left.append("its VM")
    tagged = vm_utils.tagged_vdis(session, instance_uuid)
    if tagged:
        left.append("%d VDI(s) tagged with it" % len(tagged))
    for cls, now in _counts(session).items():
        if now != baseline[cls]:
            left.append("%s count %d (before the spawn: %d)" % (cls, now, baseline[cls]))
    loops = demo_env.loops_backed_under(state_dir)
    if loops:
        left.append("loop devices %s" % ", ".join(loops))
    return left


class ModeResult:
    def __init__(self, mode):
        self.mode = mode
        self.steps = []
        self.disks = []
        self.state = None
        self.error = None
        self.seconds = 0.0
        self.leftovers = []
        self.snapshot_id = None


def _snapshot(driver, instance, images_url, printer, mode, result):
    """Snapshot the instance into a new image, as Nova's createImage does."""
    t0 = time.monotonic()
    image_id = demo_env.create_image(images_url, "snapshot of %s" % instance.hostname)
    states = []
    driver.snapshot(objects.RequestContext(project_id="demo"), instance, image_id,
                    lambda task_state, expected_state=None: states.append(task_state))
    record = demo_env.image_record(images_url, image_id)
    result.snapshot_id = image_id
    result.steps.append(nxs_driver.SpawnStep("snapshot", time.monotonic() - t0,
                                             "image %s" % image_id))
    printer.step(mode, result.steps[-1])
    printer.line("  [%-11s] snapshot image %s: %s, %s/%s, %s (task states %s)" % (
        mode, image_id, record.get("status"), record.get("disk_format"),
        record.get("container_format"), _human(record.get("size") or 0),
        " -> ".join(states)))


def run_mode(mode, work_dir, images_url, image_id, disk_format, image_size, printer,
             transport_url, full):
    result = ModeResult(mode)
    started = time.monotonic()
    mode_dir = os.path.join(work_dir, mode)
    os.makedirs(mode_dir, exist_ok=True)
    sim = demo_env.Simulator(os.path.join(mode_dir, "sim"), compute_vm=(mode == "in_guest"))
    agent = driver = None
    host = "nxs-demo-%s-%s" % (mode.replace("_", "-"), uuidlib.uuid4().hex[:8])
    try:
        sim.start()
        printer.line("  [%-11s] xapi-sim at %s (%s)" % (
            mode, sim.url, "compute VM %s" % sim.compute_vm_uuid() if sim.compute_vm
            else "no compute VM"))
        config_file = demo_env.write_config(
            os.path.join(mode_dir, "nova-xen-split.conf"), sim, host, images_url, mode_dir,
            transport_url=transport_url,
            vm_uuid=sim.compute_vm_uuid() if sim.compute_vm else None)
        agent = demo_env.Agent(config_file, os.path.join(mode_dir, "agent.log")).start()
        driver = nxs_driver.XenSplitDriver(
            _load_conf(config_file), on_step=lambda s: printer.step(mode, s))
        info = _wait_for_agent(driver, agent, host)
        printer.line("  [%-11s] agent pid %d for host %s: mode %s, interface %s" % (
            mode, agent.proc.pid, host, info["mode"], info["version"]))
        if info["mode"] != mode:
            raise demo_env.DemoError("the agent chose %s mode, expected %s" % (
                info["mode"], mode))
        session = driver.session
        baseline = _counts(session)
        instance = demo_instance(mode, demo_flavor(full), image_id)
        image_meta = objects.ImageMeta(id=image_id, name="demo-image",
                                       disk_format=disk_format, size=image_size)
        driver.spawn(objects.RequestContext(auth_token="demo-token", project_id="demo"),
                     instance, image_meta, [("/etc/demo.txt", b"injected by the demo\n")],
                     "demo-admin-password", {}, demo_network_info())
        result.steps = list(driver.last_spawn_steps)
        result.state = driver.get_info(instance).state
        result.disks = _disk_table(session, vm_utils.find_vm(session, instance.uuid))
        printer.line("  [%-11s] VM %s is %s with %d disks" % (
            mode, instance.name, "running" if result.state == vm_utils.RUNNING
            else "in power state %s" % result.state, len(result.disks)))
        _snapshot(driver, instance, images_url, printer, mode, result)
        t0 = time.monotonic()
        driver.destroy(None, instance)
        result.steps.append(nxs_driver.SpawnStep("destroy", time.monotonic() - t0, ""))
        printer.step(mode, result.steps[-1])
        result.leftovers = _leftovers(session, instance.uuid, baseline, sim.state_dir)
    except (exceptions.NovaXenSplitError, demo_env.DemoError, OSError,
            subprocess.SubprocessError) as e:
        if driver is not None:
            result.steps = list(driver.last_spawn_steps)
        result.error = "%s: %s" % (type(e).__name__, e)
        printer.line("  [%-11s] FAILED: %s" % (mode, result.error))
        if agent is not None and agent.proc is not None and "refused" not in result.error:
            printer.line("  [%-11s] agent log (last lines):\n%s" % (mode, agent.output_tail()))
    finally:
        if driver is not None:
            driver.cleanup_host(host)
        if agent is not None:
            code = agent.stop()
            if code not in (0, None, -15):
                result.leftovers.append("agent exited with %s on SIGTERM" % code)
        sim.stop()
        loops = demo_env.loops_backed_under(sim.state_dir)
        if loops:
            result.leftovers.append("loop devices after xapi-sim stopped: %s" % loops)
        if transport_url:
            _delete_host_queue(host)
    result.seconds = time.monotonic() - started
    return result


def _delete_host_queue(host):
    """The agent's per-host queue would outlive it on the broker; remove it."""
    if shutil.which("rabbitmqctl"):
        subprocess.run(["rabbitmqctl", "-q", "delete_queue", "nova-xen-split-agent.%s" % host],
                       capture_output=True, timeout=60, check=False)


def _human(size):
    for unit, div in (("GiB", GiB), ("MiB", 1024 * 1024), ("KiB", 1024)):
        if size >= div:
            return "%.1f %s" % (size / div, unit) if size % div else "%d %s" % (size // div, unit)
    return "%d B" % size


def print_summary(printer, results):
    printer.line("")
    printer.line("Summary")
    printer.line("  %-12s %-10s %-12s %-5s %12s %12s" % (
        "mode", "userdevice", "disk", "mode", "size", "allocated"))
    for r in results:
        for userdevice, purpose, vbd_mode, size, used in r.disks:
            printer.line("  %-12s %-10s %-12s %-5s %12s %12s" % (
                r.mode, userdevice, purpose, vbd_mode, _human(size), _human(used)))
    printer.line("")
    printer.line("  %-12s %-32s %8s" % ("mode", "step", "seconds"))
    for r in results:
        for step in r.steps:
            label = step.name
            if step.name in ("fetch_image", "generate_disk") and step.detail:
                label += " (%s)" % step.detail.split(",")[0]
            printer.line("  %-12s %-32s %8.2f" % (r.mode, label, step.seconds))
        printer.line("  %-12s %-32s %8.2f" % (r.mode, "total (with startup)", r.seconds))
    printer.line("")
    for r in results:
        if r.error:
            status = "FAILED (%s)" % r.error
        elif r.leftovers:
            status = "LEFT BEHIND: %s" % "; ".join(r.leftovers)
        else:
            status = "ok: booted, snapshotted (image %s), destroyed, nothing left " \
                "behind" % r.snapshot_id
        printer.line("  %-12s %s" % (r.mode, status))


def run(state_dir=None, transport_url=None, modes=MODES, printer=None, glance_url=None,
        image_id=None):
    """Run the demo; returns the exit code (0 when every mode that ran succeeded).

    ``glance_url`` and ``image_id`` (both or neither): boot that image of an
    existing Glance and snapshot into it, instead of the embedded service.
    """
    printer = printer or Printer()
    started = time.monotonic()
    printer.line("nova-xen-split demo: driver in this process, agent as its own process, "
                 "transport %s" % (transports.redacted_url(transport_url) if transport_url
                                   else "local Unix socket"))
    missing = demo_env.missing_tools(demo_env.IMAGE_TOOLS)
    if missing:
        printer.line("Cannot build the demo image: missing %s. Install with: %s" % (
            ", ".join(t for t, _ in missing), demo_env.install_hint(missing)))
        return 2
    loop_problem = demo_env.loop_devices_problem()
    missing = demo_env.missing_tools(demo_env.DISK_TOOLS)
    full = loop_problem is None and not missing
    if loop_problem:
        printer.line("Missing: %s." % loop_problem)
    if missing:
        printer.line("Missing disk tools: %s. Install with: %s" % (
            ", ".join(t for t, _ in missing), demo_env.install_hint(missing)))
    if not full:
        printer.line("Running what can run without them: the independent mode with the "
                     "image and the config drive only (no root grow, ephemeral or swap); "
                     "the in_guest mode is skipped.")
        modes = [m for m in modes if m == "independent"]

    keep = state_dir is not None
    work_dir = os.path.abspath(state_dir) if keep else tempfile.mkdtemp(prefix="nxs-demo-")
    os.makedirs(work_dir, exist_ok=True)
    images = image_service.ImageService(hash_algo="sha512")  # Glance's default
    results = []
    try:
        if glance_url:
            image_for, image_size = _glance_image(glance_url, image_id, modes, printer)
        else:
            image_for, image_size = _embedded_images(images, work_dir, modes, printer)
        for mode in modes:
            printer.line("")
            printer.line("== %s mode ==" % mode)
            mode_image, disk_format = image_for[mode]
            results.append(run_mode(mode, work_dir, glance_url or images.url, mode_image,
                                    disk_format, image_size, printer, transport_url, full))
    except demo_env.DemoError as e:
        printer.line("FAILED: %s" % e)
        return 1
    finally:
        images.stop()
        if not keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    return _finish(printer, results, keep, work_dir, started)


def _embedded_images(images, work_dir, modes, printer):
    """The demo's own image, raw (and as a VHD tarball for in_guest), served
    by the embedded image service."""
    image_path = os.path.join(work_dir, "demo-image.raw")
    image_size = demo_env.make_disk_image(image_path, IMAGE_MB)
    image_id = str(uuidlib.uuid4())
    images.add(image_path, image_id)
    images.start()
    printer.line("Image %s: raw, %s, msdos label, ext4 partition with /etc/motd, "
                 "served at %s; each download is checked against the SHA-512 "
                 "in the image's record, as Glance gives it"
                 % (image_id, _human(image_size), images.url))
    image_for = {mode: (image_id, "raw") for mode in modes}
    missing = demo_env.missing_tools(demo_env.VHD_TOOLS)
    if "in_guest" in modes and missing:
        printer.line("No VHD variant (missing qemu-img; install with: %s): in_guest "
                     "boots the raw image too." % demo_env.install_hint(missing))
    elif "in_guest" in modes:
        vhd_id = str(uuidlib.uuid4())
        tar_size = demo_env.make_vhd_tarball(image_path, image_path + ".tar")
        images.add(image_path + ".tar", vhd_id, disk_format="vhd",
                   container_format="ovf")
        image_for["in_guest"] = (vhd_id, "vhd")
        printer.line("Image %s: the same disk as a VHD tarball (0.vhd, %s) for the "
                     "dom0 image plugin; booted in in_guest mode" % (
                         vhd_id, _human(tar_size)))
    return image_for, image_size


def _glance_image(glance_url, image_id, modes, printer):
    """Both modes boot ``image_id`` of the Glance at ``glance_url``."""
    record = demo_env.image_record(glance_url, image_id)
    disk_format = record.get("disk_format")
    if record.get("status") != "active" or disk_format not in ("raw", "vhd"):
        raise demo_env.DemoError("image %s is %s with disk_format %s; the demo boots an "
                                 "active raw or vhd image" % (image_id, record.get("status"),
                                                              disk_format))
    printer.line("Image %s from the Glance at %s: %s, %s; snapshots go back there"
                 % (image_id, glance_url, disk_format, _human(record.get("size") or 0)))
    return {mode: (image_id, disk_format) for mode in modes}, record.get("size")


def _finish(printer, results, keep, work_dir, started):
    print_summary(printer, results)
    if not keep and os.path.exists(work_dir):
        printer.line("  temporary directory %s could not be removed" % work_dir)
    printer.line("")
    printer.line("Modes run: %s; total %.1f s" % (", ".join(r.mode for r in results),
                                                  time.monotonic() - started))
    ok = results and all(not r.error and not r.leftovers for r in results)
    return 0 if ok else 1

