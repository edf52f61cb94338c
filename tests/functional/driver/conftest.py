"""A driver/agent pair on a simulator, as deployed: two processes, one config file.

``make_pair(sim, transport_url)`` writes the config file a deployment would
have (the same file for both sides), starts ``nova-xen-split-agent
--config-file F`` as its own process, and builds a :class:`XenSplitDriver`
in the test process on that file. Host names are unique per pair so pairs
on one broker never see each other's calls; their queues are deleted after
the test.
"""

import base64
import os
import subprocess
import uuid as uuidlib

import pytest
from oslo_config import cfg

from nova_xen_split import driver as nxs_driver
from nova_xen_split import objects
from nova_xen_split.cmd import demo_env
from nova_xen_split.cmd.image_service import ImageService
from nova_xen_split.xenhost import conf as nxs_conf
from nova_xen_split.xenhost import marks

IMAGE_MB = 64
# Image ids are Glance's: uuids.
TEST_IMAGE = "7e57da7a-0000-4000-8000-000000000001"
TEST_IMAGE_VHD = "7e57da7a-0000-4000-8000-000000000002"
GiB = 1024 ** 3
MiB = 1024 ** 2
USER_DATA = b"#cloud-config\nfinal_message: hello from the functional test\n"


class Pair:
    """One agent process and one driver for one simulated hypervisor."""

    def __init__(self, sim, host, config_file, agent, driver):
        self.sim = sim
        self.host = host
        self.config_file = config_file
        self.agent = agent
        self.driver = driver

    def session(self):
        return self.sim.session()

    def counts(self):
        s = self.session()
        try:
            return {cls: len(getattr(s.xenapi, cls).get_all()) for cls in ("VM", "VDI", "VBD")}
        finally:
            s.xenapi.session.logout()


def load_conf(config_file, overrides=None):
    conf = cfg.ConfigOpts()
    nxs_conf.register_opts(conf)
    conf(args=["--config-file", config_file], project="nova-xen-split",
         default_config_files=[])
    for (group, name), value in (overrides or {}).items():
        conf.set_override(name, value, group=None if group == "DEFAULT" else group)
    return conf


@pytest.fixture(scope="session")
def demo_image(tmp_path_factory):
    """A 64 MiB raw disk: msdos label, ext4 partition 1 (label demo-root) with /etc/motd."""
    path = str(tmp_path_factory.mktemp("images") / "disk.raw")
    demo_env.make_disk_image(path, IMAGE_MB, message="written before the spawn\n")
    return path


@pytest.fixture(scope="session")
def demo_vhd_tarball(demo_image):
    """The same disk as Glance serves a XenServer image: a tarball holding 0.vhd."""
    path = demo_image + ".tar"
    demo_env.make_vhd_tarball(demo_image, path)
    return path


RAW_IMAGE_ID = "6f1d3c2a-9b8e-4d7f-a6c5-000000000001"
VHD_IMAGE_ID = "6f1d3c2a-9b8e-4d7f-a6c5-000000000002"
# What the tests boot: the demo disk, raw and as a VHD tarball.
TEST_IMAGE, TEST_IMAGE_VHD = RAW_IMAGE_ID, VHD_IMAGE_ID


@pytest.fixture(scope="session")
def glance_images(glance, demo_image, demo_vhd_tarball):
    """The demo disk in Glance as a raw image and as a VHD tarball."""
    for image_id, path, disk_format, container_format in (
            (RAW_IMAGE_ID, demo_image, "raw", "bare"),
            (VHD_IMAGE_ID, demo_vhd_tarball, "vhd", "ovf")):
        if glance.image(image_id) is None:
            glance.add_image(path, image_id, disk_format=disk_format,
                             container_format=container_format, name=disk_format)
    return glance


@pytest.fixture
def image_service(demo_image, demo_vhd_tarball):
    """The stand-in, for the tests that inject faults or add their own
    images; it serves the run's images under the same ids as Glance."""
    service = ImageService(hash_algo="sha512")
    service.add(demo_image, TEST_IMAGE)
    service.add(demo_vhd_tarball, TEST_IMAGE_VHD, disk_format="vhd", container_format="ovf")
    service.start()
    yield service
    service.stop()


@pytest.fixture
def make_pair(tmp_path, glance_images, rabbit_cleanup):
    """Factory: ``make_pair(sim, transport_url=None, driver_overrides=None,
    cache_images="none", image_url=None, glance_options=None)`` → Pair. The image
    cache is off unless asked for: most tests here are about what a spawn
    downloads; ``image_url`` is the image service (default: the run's real
    Glance, holding TEST_IMAGE and TEST_IMAGE_VHD)."""
    pairs = []

    def factory(sim, transport_url=None, driver_overrides=None, init=True,
                cache_images="none", image_url=None, glance_options=None):
        host = "nxs-test-%s" % uuidlib.uuid4().hex[:10]
        work = tmp_path / host
        work.mkdir()
        config_file = demo_env.write_config(
            str(work / "nova-xen-split.conf"), sim, host, image_url or glance_images.url,
            str(work), transport_url=transport_url, vm_uuid=sim.compute_vm_uuid,
            cache_images=cache_images, glance_options=glance_options)
        if transport_url:
            rabbit_cleanup.append("nova-xen-split-agent.%s" % host)
        agent = demo_env.Agent(config_file, str(work / "agent.log")).start()
        pair = Pair(sim, host, config_file, agent, None)
        pairs.append(pair)  # before anything else can fail: the agent must be stopped
        pair.driver = nxs_driver.XenSplitDriver(load_conf(config_file, driver_overrides))
        if init:
            wait_for_agent(pair)
        return pair

    yield factory
    for pair in pairs:
        try:
            if pair.driver is not None:
                pair.driver.cleanup_host(pair.host)
        finally:
            pair.agent.stop()


def wait_for_agent(pair, timeout=60):
    """init_host as the compute service does, failing early if the agent died."""
    import time

    deadline = time.monotonic() + timeout
    pair.driver._conf.set_override("startup_timeout", 1.0, group="agent")
    while True:
        assert not pair.agent.exited(), "agent exited: %s" % pair.agent.output_tail(40)
        try:
            return pair.driver.init_host(pair.host)
        except Exception as e:  # noqa: BLE001 -- only "not up yet" is retried
            if "describe()" not in str(e) or time.monotonic() > deadline:
                raise


def full_flavor():
    """Root grown from the 64 MiB image to 1 GiB, 1 GiB ephemeral, 64 MiB swap."""
    return objects.Flavor(name="t.full", memory_mb=256, vcpus=2, root_gb=1,
                          ephemeral_gb=1, swap=64)


def make_instance(flavor=None, **kwargs):
    fields = dict(hostname="test-vm", flavor=flavor or full_flavor(), image_ref=TEST_IMAGE,
                  config_drive="True", project_id="p-test",
                  user_data=base64.b64encode(USER_DATA).decode(),
                  key_name="k1", key_data="ssh-ed25519 AAAAtest k1@test",
                  metadata={"purpose": "functional"}, availability_zone="nova")
    fields.update(kwargs)
    return objects.Instance(**fields)


def image_meta(**properties):
    return objects.ImageMeta(id=TEST_IMAGE, disk_format="raw", size=IMAGE_MB * MiB,
                             properties=objects.ImageMetaProps(properties))


def spawn(pair, instance, meta=None, files=(("/etc/injected.txt", b"injected\n"),)):
    pair.driver.spawn(objects.RequestContext(auth_token="test-token"), instance,
                      meta or image_meta(), list(files), "admin-pw", {},
                      [{"id": "5b2f1b0c-0d3a-4f3e-8c61-3b7d0f1a2b3c",
                        "address": "fa:16:3e:11:22:33",
                        "network": {"id": "n", "subnets": [{
                            "cidr": "192.0.2.0/24",
                            "ips": [{"address": "192.0.2.20", "type": "fixed"}],
                            "gateway": {"address": "192.0.2.1"}, "dns": []}]}}])


def vdi_path(sim, vdi_uuid):
    """The sparse file behind a VDI, in the simulator's SR directory."""
    sr_root = os.path.join(sim.state_dir, "sr")
    for sr in os.listdir(sr_root):
        path = os.path.join(sr_root, sr, vdi_uuid + ".raw")
        if os.path.exists(path):
            return path
    raise AssertionError("no file for VDI %s under %s" % (vdi_uuid, sr_root))


def run(cmd, timeout=120):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, "%s: %s" % (cmd, proc.stderr)
    return proc.stdout


def leftovers(pair, instance_uuid, baseline):
    """What of an instance is still on the pair's hypervisor (empty: nothing)."""
    s = pair.session()
    try:
        left = []
        for rec in s.xenapi.VM.get_all_records().values():
            if marks.vm_instance(rec["other_config"]) == instance_uuid:
                left.append("VM %s" % rec["name_label"])
        for rec in s.xenapi.VDI.get_all_records().values():
            mark = marks.read_vdi(rec["other_config"])
            if mark and mark.instance_uuid == instance_uuid:
                left.append("VDI %s (%s)" % (rec["uuid"], mark.purpose))
    finally:
        s.xenapi.session.logout()
    now = pair.counts()
    for cls in ("VM", "VDI", "VBD"):
        if now[cls] != baseline[cls]:
            left.append("%s count %d, was %d" % (cls, now[cls], baseline[cls]))
    loops = demo_env.loops_backed_under(pair.sim.state_dir)
    if loops:
        left.append("loop devices %s" % loops)
    return left
