"""Fixtures for the dom0 plugin tests: plugins called as XAPI calls them.

Every test goes through ``host.call_plugin`` on a running ``xapi-sim``, with
VDIs plugged into dom0 as real loop devices (VBD.create + VBD.plug, the
device name from VBD.get_device), exactly as the agent's independent
backend uses the plugins.
"""

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import uuid

import pytest
import XenAPI

from nova_xen_split.cmd.image_service import ImageService
from tests.functional.plugins import vhdchain
from tests.functional.simulator import vhdtestlib

# Image ids are Glance's: uuids.
TOKEN_ECHO_IMAGE = "e0c0e0c0-7000-4000-8000-000000000001"

MIB = 1 << 20
SIZE = 12 * MIB  # virtual size of the test images


class Dom0:
    """A simulator session with dom0, its host and the default SR at hand."""

    def __init__(self, sim):
        self.sim = sim
        self.session = sim.session()
        self.api = self.session.xenapi
        self.host = self.api.host.get_all()[0]
        self.dom0 = next(ref for ref, rec in self.api.VM.get_all_records().items()
                         if rec["is_control_domain"])
        self.dom0_uuid = self.api.VM.get_uuid(self.dom0)
        self.sr = self.api.pool.get_default_SR(self.api.pool.get_all()[0])
        pbd = self.api.SR.get_PBDs(self.sr)[0]
        self.sr_path = self.api.PBD.get_device_config(pbd)["path"]
        self.plugged = []

    def call(self, plugin, fn, **args):
        """``host.call_plugin``; the JSON result decoded."""
        return json.loads(self.api.host.call_plugin(self.host, plugin, fn, args))

    def failure(self, plugin, fn, **args):
        """The ErrorDescription of a call that must fail."""
        with pytest.raises(XenAPI.Failure) as caught:
            self.api.host.call_plugin(self.host, plugin, fn, args)
        return caught.value.details

    def new_vdi(self, size_bytes, name="plugin-test"):
        return self.api.VDI.create({
            "name_label": name, "name_description": "", "SR": self.sr,
            "virtual_size": str(size_bytes), "type": "user", "sharable": False,
            "read_only": False, "other_config": {}, "sm_config": {}, "xenstore_data": {},
            "tags": []})

    def plug(self, vdi):
        """Plug ``vdi`` into dom0 → (device name, real block device path)."""
        vbd = self.api.VBD.create({
            "VM": self.dom0, "VDI": vdi, "userdevice": "autodetect", "bootable": False,
            "mode": "RW", "type": "Disk", "empty": False, "unpluggable": True,
            "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})
        self.api.VBD.plug(vbd)
        self.plugged.append(vbd)
        dev = self.api.VBD.get_device(vbd)
        return dev, os.path.realpath(os.path.join(self.sim.vm_dev_dir(self.dom0_uuid), dev))

    def unplug_all(self):
        for vbd in reversed(self.plugged):
            self.api.VBD.unplug(vbd)
            self.api.VBD.destroy(vbd)
        self.plugged = []

    def close(self):
        try:
            self.unplug_all()
        finally:
            self.session.xenapi.session.logout()


@pytest.fixture
def dom0(xapi_sim):
    handle = Dom0(xapi_sim)
    yield handle
    handle.close()


@pytest.fixture
def dom0_disk(dom0):
    """Factory: a fresh VDI of ``size_mib`` plugged into dom0 → (dev, /dev/loopN)."""
    def factory(size_mib=64):
        return dom0.plug(dom0.new_vdi(size_mib * MIB))
    return factory


def device_mapper_works():
    """Whether kpartx can map here (the plugin then maps instead of waiting)."""
    try:
        os.close(os.open("/dev/mapper/control", os.O_RDWR))
    except OSError:
        return False
    return True


def disk_digest(device):
    """Hash of a whole (small) disk: a refused request must not change it."""
    digest = hashlib.sha256()
    with open(device, "rb", buffering=0) as f:
        for chunk in iter(lambda: f.read(MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tool(*cmd, ok=(0,), input_text=None):
    """Run an independent checking tool; its stdout."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=120,
                          input=input_text)
    assert proc.returncode in ok, "%s: %s %s" % (cmd, proc.stdout, proc.stderr)
    return proc.stdout


@pytest.fixture
def image_service():
    """Downloads need the token; their Content-MD5 is the body's. The image
    TOKEN_ECHO_IMAGE is refused by a careless service that repeats the token in
    its reason."""
    token = "tok-" + os.urandom(12).hex()
    with ImageService(token=token).start() as service:
        service.add(b"", TOKEN_ECHO_IMAGE, error=(403, "token %s is not allowed" % token))
        yield service


def source_disk(seed):
    """Some data, some zeros, a tail that is not block-aligned in content."""
    disk = bytearray(SIZE)
    disk[:300000] = os.urandom(300000)
    disk[5 * MIB:5 * MIB + 70000] = bytes([seed]) * 70000
    disk[SIZE - 4096:] = os.urandom(4096)
    return disk


def tarball(members, compress=False):
    """``members``: (name, bytes) plain files, or TarInfo objects as they are."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
                continue
            name, data = member
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    return gzip.compress(data) if compress else data


def img(tag):
    """A Glance-form image id (a uuid) named by a short tag, the same every time."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "nxs-test-image:" + tag))


def download_args(dom0, service, image_id, **overrides):
    args = {"image_id": image_id, "endpoint": service.url,
            "auth_token": service.token, "sr_path": dom0.sr_path}
    args.update(overrides)
    return args


@pytest.fixture
def chain_files(tmp_path):
    """1.vhd: the base disk by qemu-img; 0.vhd: a child over it by the
    simulator tests' independent builder (blocks stored out of order)."""
    base = source_disk(7)
    writes = [(4096, os.urandom(4096)), (9 * MIB, b"\xaa" * 512)]
    child = bytearray(base)
    for offset, data in writes:
        child[offset:offset + len(data)] = data
    (tmp_path / "base.raw").write_bytes(base)
    vhdchain.make_base(str(tmp_path / "base.raw"), str(tmp_path / "1.vhd"))
    vhdtestlib.build_vhd(str(tmp_path / "0.vhd"), SIZE, writes,
                         parent_path=str(tmp_path / "1.vhd"), block_order="descending")
    return {"base": bytes(base), "child": bytes(child),
            "1.vhd": (tmp_path / "1.vhd").read_bytes(),
            "0.vhd": (tmp_path / "0.vhd").read_bytes()}
