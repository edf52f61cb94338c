"""kernel.py through host.call_plugin: kernel/ramdisk files in dom0's boot dir."""

import os

import pytest

from tests.conftest import small_tmpfs
from tests.functional.plugins.conftest import MIB

PLUGIN = "kernel.py"


def _boot_dir(dom0):
    return os.path.realpath(os.path.join(dom0.sim.state_dir, "boot", "guest"))


def _write(device, data):
    with open(device, "r+b", buffering=0) as f:
        f.write(data)
        os.fsync(f.fileno())


@pytest.mark.parametrize("kind", ["kernel", "ramdisk"])
def test_copy_vdi_copies_the_first_bytes_of_the_disk_into_the_boot_dir(
        dom0, dom0_disk, kind):
    dev, device = dom0_disk(8)
    image = os.urandom(3 * MIB + 123)
    _write(device, image + b"trailing bytes not to copy")

    result = dom0.call(PLUGIN, "copy_vdi", dev=dev, size_bytes=str(len(image)), kind=kind)

    path = result["path"]
    assert os.path.dirname(path) == _boot_dir(dom0)
    assert os.path.basename(path).startswith(kind + "-")
    with open(path, "rb") as f:
        assert f.read() == image
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_copy_vdi_into_a_full_boot_dir_fails_and_leaves_no_file(dom0, dom0_disk):
    dev, device = dom0_disk(8)
    _write(device, os.urandom(3 * MIB))
    boot_dir = _boot_dir(dom0)
    os.makedirs(boot_dir, exist_ok=True)
    with small_tmpfs(boot_dir, "1m"):       # holds a third of the kernel
        details = dom0.failure(PLUGIN, "copy_vdi", dev=dev, size_bytes=str(3 * MIB),
                               kind="kernel")
        left = os.listdir(boot_dir)
    assert details[:3] == ["XENAPI_PLUGIN_FAILURE", "copy_vdi", "DeviceError"]
    assert "cannot write the kernel to %s" % boot_dir in details[3]
    assert "No space left on device" in details[3]
    assert left == []


def test_remove_file_removes_what_copy_vdi_made_and_is_idempotent(dom0, dom0_disk):
    dev, _ = dom0_disk(8)
    path = dom0.call(PLUGIN, "copy_vdi", dev=dev, size_bytes="4096", kind="kernel")["path"]

    assert dom0.call(PLUGIN, "remove_file", path=path) == {"path": path, "removed": True}
    assert not os.path.exists(path)
    assert dom0.call(PLUGIN, "remove_file", path=path) == {"path": path, "removed": False}


@pytest.mark.parametrize("args, phrase", [
    ({"size_bytes": "0", "kind": "kernel"}, "out of range"),
    ({"size_bytes": "-1", "kind": "kernel"}, "non-negative"),
    ({"size_bytes": str(256 * MIB + 1), "kind": "kernel"}, "out of range"),
    ({"size_bytes": str(8 * MIB + 1), "kind": "kernel"}, "larger than"),
    ({"size_bytes": "4096", "kind": "initrd"}, "kind"),
    ({"size_bytes": "4096", "kind": "kernel", "dev": "../xvdb"}, "device name"),
])
def test_copy_vdi_refuses_bad_sizes_kinds_and_devices(dom0, dom0_disk, args, phrase):
    dev, _ = dom0_disk(8)
    call_args = {"dev": dev}
    call_args.update(args)
    details = dom0.failure(PLUGIN, "copy_vdi", **call_args)
    assert details[:3] == ["XENAPI_PLUGIN_FAILURE", "copy_vdi", "InvalidArgument"]
    assert phrase in details[3]
    boot_dir = _boot_dir(dom0)
    assert not os.path.isdir(boot_dir) or os.listdir(boot_dir) == []


def test_remove_file_refuses_anything_but_a_kernel_or_ramdisk_file(dom0, dom0_disk, tmp_path):
    dev, _ = dom0_disk(8)
    made = dom0.call(PLUGIN, "copy_vdi", dev=dev, size_bytes="512", kind="ramdisk")["path"]
    boot_dir = os.path.dirname(made)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    os.symlink(str(victim), os.path.join(boot_dir, "kernel-link"))
    for path, phrase in [
            ("/etc/passwd", "not a kernel or ramdisk file"),
            (os.path.join(boot_dir, "..", "guest", os.path.basename(made)), "not a kernel"),
            (os.path.join(boot_dir, "other-file"), "not a kernel or ramdisk file"),
            ("kernel-abc", "not a kernel or ramdisk file"),
            (str(victim), "not a kernel or ramdisk file"),
            (os.path.join(boot_dir, "kernel-link"), "not a regular file")]:
        details = dom0.failure(PLUGIN, "remove_file", path=path)
        assert details[:3] == ["XENAPI_PLUGIN_FAILURE", "remove_file", "InvalidArgument"]
        assert phrase in details[3], (path, details)
    assert victim.read_bytes() == b"keep me"
    assert os.path.exists(made)
