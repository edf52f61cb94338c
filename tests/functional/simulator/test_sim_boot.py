"""VM.start checks what the guest's boot method needs (dom0/simulator/boot.py,
after ocaml/xapi/helpers.ml boot_method_of_vm, ocaml/xapi/xapi_xenops.ml
kernel_path and its error mapping, ocaml/xenopsd/xc/xenops_server_xen.ml
build_domain, and pygrub's search for a config file)."""

import os
import subprocess

import pytest

from tests.functional.simulator.simhelpers import (
    drop_vm, failure, new_vbd, new_vdi, new_vm, vdi_path)

MiB = 1 << 20
DISK_MB = 16


def _filesystem(tmp_path, files, size_mb):
    """An ext4 filesystem image holding ``files`` (path -> text)."""
    root = tmp_path / "root"
    for name, text in files.items():
        path = root / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    root.mkdir(exist_ok=True)
    image = tmp_path / "fs.img"
    with open(image, "wb") as f:
        f.truncate(size_mb * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(image)],
                   check=True, capture_output=True, timeout=60)
    return image.read_bytes()


def _disk(sim, xapi, sr_ref, tmp_path, files, table="dos"):
    """A VDI holding an ext4 filesystem: in partition 1 of an msdos or GPT
    table from sector 2048, or on the whole disk (table None)."""
    vdi = new_vdi(xapi, sr_ref, DISK_MB * MiB)
    path = vdi_path(sim, xapi, vdi)
    if table is None:
        data, offset = _filesystem(tmp_path, files, DISK_MB), 0
    else:
        subprocess.run(["sfdisk", "-q", path], input="label: %s\nstart=2048\n" % table,
                       text=True, check=True, capture_output=True, timeout=60)
        data, offset = _filesystem(tmp_path, files, DISK_MB - 2), 2048 * 512
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    return vdi


def _pv_vm(xapi, vdi=None, bootable=True):
    vm = new_vm(xapi, "pv")  # PV_bootloader pygrub, as Nova's PV record
    if vdi is not None:
        xapi.VBD.set_bootable(new_vbd(xapi, vm, vdi, userdevice="0"), bootable)
    return vm


@pytest.mark.parametrize("config", ["/boot/grub/grub.cfg", "/boot/grub/menu.lst",
                                    "/boot/extlinux.conf", "/grub2/grub.cfg"])
def test_pygrub_boots_a_disk_with_a_bootloader_config(sim, xapi, sr_ref, tmp_path, config):
    vm = _pv_vm(xapi, _disk(sim, xapi, sr_ref, tmp_path, {config: "menuentry x {}\n"}))
    xapi.VM.start(vm, False, False)
    assert xapi.VM.get_power_state(vm) == "Running"
    drop_vm(xapi, vm)


@pytest.mark.parametrize("table", [None, "gpt"])
def test_pygrub_reads_a_whole_disk_filesystem_and_gpt_partitions(
        sim, xapi, sr_ref, tmp_path, table):
    vdi = _disk(sim, xapi, sr_ref, tmp_path, {"/boot/grub/grub.cfg": "x\n"}, table=table)
    vm = _pv_vm(xapi, vdi)
    xapi.VM.start(vm, False, False)
    drop_vm(xapi, vm)


def test_a_disk_without_a_bootloader_config_is_bootloader_failed(sim, xapi, sr_ref, tmp_path):
    vm = _pv_vm(xapi, _disk(sim, xapi, sr_ref, tmp_path, {"/etc/motd": "no grub here\n"}))
    assert failure(xapi.VM.start, vm, False, False) == [
        "BOOTLOADER_FAILED", vm, "Unable to find partition containing kernel"]
    assert xapi.VM.get_power_state(vm) == "Halted"
    drop_vm(xapi, vm)


def test_a_disk_of_zeros_is_bootloader_failed(xapi, sr_ref):
    vm = _pv_vm(xapi, new_vdi(xapi, sr_ref, DISK_MB * MiB))
    assert failure(xapi.VM.start, vm, False, False)[0] == "BOOTLOADER_FAILED"
    drop_vm(xapi, vm)


def test_pygrub_without_a_bootable_vbd_has_no_bootable_device(sim, xapi, sr_ref, tmp_path):
    vdi = _disk(sim, xapi, sr_ref, tmp_path, {"/boot/grub/grub.cfg": "x\n"})
    vm = _pv_vm(xapi, vdi, bootable=False)
    assert failure(xapi.VM.start, vm, False, False) == [
        "INTERNAL_ERROR", "there is no bootable device"]
    drop_vm(xapi, vm)


def test_a_direct_kernel_must_be_a_file_under_dom0s_boot(sim, xapi):
    vm = new_vm(xapi, "direct")
    xapi.VM.set_PV_bootloader(vm, "")
    missing = os.path.join(sim.state_dir, "boot", "guest", "no-such-kernel")
    xapi.VM.set_PV_kernel(vm, missing)
    assert failure(xapi.VM.start, vm, False, False) == [
        "INVALID_VALUE", "kernel", missing, "File does not exist"]
    outside = os.path.join(sim.state_dir, "db.json")
    xapi.VM.set_PV_kernel(vm, outside)
    assert failure(xapi.VM.start, vm, False, False)[:3] == ["INVALID_VALUE", "kernel", outside]
    kernel = os.path.join(sim.state_dir, "boot", "guest", "vmlinuz-test")
    with open(kernel, "wb") as f:
        f.write(b"\0" * 512)
    xapi.VM.set_PV_kernel(vm, kernel)
    xapi.VM.start(vm, False, False)
    drop_vm(xapi, vm)
    os.unlink(kernel)


def _hvm_vm(xapi, order):
    vm = new_vm(xapi, "hvm")
    xapi.VM.set_PV_bootloader(vm, "")
    xapi.VM.set_HVM_boot_policy(vm, "BIOS order")
    xapi.VM.set_HVM_boot_params(vm, {"order": order} if order is not None else {})
    return vm


def test_a_vm_made_with_a_boot_policy_is_hvm(xapi):
    # xapi_vm.ml, create: derive_domain_type from HVM_boot_policy.
    vm = new_vm(xapi, "derived")
    assert xapi.VM.get_domain_type(vm) == "pv"
    record = xapi.VM.get_record(vm)
    record.update(HVM_boot_policy="BIOS order", domain_type="unspecified")
    for field in ("uuid", "power_state", "VBDs", "resident_on", "domid"):
        record.pop(field)
    hvm = xapi.VM.create(record)
    assert xapi.VM.get_domain_type(hvm) == "hvm"
    for ref in (vm, hvm):
        xapi.VM.destroy(ref)


@pytest.mark.parametrize("order", ["dc", "c", None])
def test_hvm_boots_when_its_boot_order_names_a_bootable_disk(xapi, sr_ref, order):
    vm = _hvm_vm(xapi, order)
    xapi.VM.set_domain_type(vm, "hvm")
    vbd = new_vbd(xapi, vm, new_vdi(xapi, sr_ref, MiB), userdevice="0")
    xapi.VBD.set_bootable(vbd, True)
    xapi.VM.start(vm, False, False)
    drop_vm(xapi, vm)


@pytest.mark.parametrize("order,bootable", [("d", True), ("n", True), ("dc", False)])
def test_hvm_with_nothing_to_boot_in_its_order_has_no_bootable_device(
        xapi, sr_ref, order, bootable):
    vm = _hvm_vm(xapi, order)
    xapi.VM.set_domain_type(vm, "hvm")
    vbd = new_vbd(xapi, vm, new_vdi(xapi, sr_ref, MiB), userdevice="0")
    xapi.VBD.set_bootable(vbd, bootable)
    assert failure(xapi.VM.start, vm, False, False) == [
        "INTERNAL_ERROR", "there is no bootable device"]
    drop_vm(xapi, vm)
