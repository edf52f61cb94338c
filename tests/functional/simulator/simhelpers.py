"""Small helpers for the simulator tests: records as Nova builds them."""

import contextlib
import os
import subprocess
import time

import pytest
import XenAPI

from tests.conftest import need

MiB = 1 << 20


def new_vdi(xapi, sr_ref, size_bytes, name="test", **fields):
    record = {"name_label": name, "name_description": "", "SR": sr_ref,
              "virtual_size": str(size_bytes), "type": "user", "sharable": False,
              "read_only": False, "other_config": {}, "sm_config": {}, "xenstore_data": {},
              "tags": []}
    record.update(fields)
    return xapi.VDI.create(record)


def new_vbd(xapi, vm_ref, vdi_ref, userdevice="autodetect", mode="RW", vbd_type="Disk",
            empty=False, other_config=None):
    return xapi.VBD.create({
        "VM": vm_ref, "VDI": vdi_ref, "userdevice": userdevice, "bootable": False,
        "mode": mode, "type": vbd_type, "empty": empty, "unpluggable": True,
        "other_config": other_config or {}, "qos_algorithm_type": "",
        "qos_algorithm_params": {}})


def new_vm(xapi, name="guest"):
    """A VM record shaped like the one Nova's vm_utils.create_vm sends."""
    return xapi.VM.create({
        "name_label": name, "name_description": "", "user_version": "0",
        "is_a_template": False, "memory_static_min": "0",
        "memory_static_max": str(512 * MiB), "memory_dynamic_min": str(512 * MiB),
        "memory_dynamic_max": str(512 * MiB), "VCPUs_max": "1", "VCPUs_at_startup": "1",
        "VCPUs_params": {}, "actions_after_shutdown": "destroy",
        "actions_after_reboot": "restart", "actions_after_crash": "destroy",
        "PV_bootloader": "pygrub", "PV_kernel": "", "PV_ramdisk": "", "PV_args": "",
        "PV_bootloader_args": "", "PV_legacy_args": "", "HVM_boot_policy": "",
        "HVM_boot_params": {}, "platform": {}, "PCI_bus": "",
        "recommendations": "", "affinity": "OpaqueRef:NULL", "other_config": {
            "instance": "00000000-0000-0000-0000-000000000001"},
        "xenstore_data": {}, "ha_always_run": False, "ha_restart_priority": "",
        "tags": [], "blocked_operations": {}, "protection_policy": "OpaqueRef:NULL",
        "is_snapshot_from_vmpp": False, "appliance": "OpaqueRef:NULL",
        "start_delay": "0", "shutdown_delay": "0", "order": "0", "suspend_SR": "OpaqueRef:NULL",
        "version": "0", "generation_id": "", "hardware_platform_version": "0",
        "has_vendor_device": False})


def startable_vm(xapi, sr_ref, name="guest"):
    """An HVM guest whose BIOS boots its disk 0: VM.start accepts it
    (dom0/simulator/boot.py); its boot disk is destroyed with :func:`drop_vm`."""
    vm = new_vm(xapi, name)
    xapi.VM.set_HVM_boot_policy(vm, "BIOS order")
    xapi.VM.set_HVM_boot_params(vm, {"order": "c"})
    xapi.VM.set_domain_type(vm, "hvm")
    xapi.VBD.set_bootable(new_vbd(xapi, vm, new_vdi(xapi, sr_ref, MiB), userdevice="0"), True)
    return vm


def drop_vm(xapi, vm, keep=()):
    """Shut down (if running) and destroy a VM and the VDIs of its VBDs
    (but those in ``keep``)."""
    if xapi.VM.get_power_state(vm) != "Halted":
        xapi.VM.hard_shutdown(vm)
    vdis = {xapi.VBD.get_VDI(vbd) for vbd in xapi.VM.get_VBDs(vm)} - set(keep)
    xapi.VM.destroy(vm)
    for vdi in vdis:
        xapi.VDI.destroy(vdi)


def failure(fn, *args):
    """The XAPI error description of a call that must fail."""
    with pytest.raises(XenAPI.Failure) as info:
        fn(*args)
    return info.value.details


def wait_for(predicate, timeout=10.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def wait_task(xapi, task_ref, timeout=30.0):
    assert wait_for(lambda: xapi.task.get_status(task_ref) != "pending", timeout), \
        "task still pending"
    return xapi.task.get_status(task_ref)


def vdi_path(sim, xapi, vdi_ref):
    sr_uuid = xapi.SR.get_uuid(xapi.VDI.get_SR(vdi_ref))
    return os.path.join(sim.state_dir, "sr", sr_uuid, xapi.VDI.get_uuid(vdi_ref) + ".raw")


@contextlib.contextmanager
def small_ext2(image, mountpoint):
    """A 16 MiB ext2 file system with 1 KiB blocks mounted on ``mountpoint``:
    its largest file is about 16 GiB, so a bigger VDI does not fit, and a
    few MiB of data fill it. Needs root;
    ``mount -o loop`` detaches its loop device at umount."""
    need(os.geteuid() == 0, "mounting a file system needs root")
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext2", "-q", "-F", "-b", "1024", str(image)], check=True,
                   capture_output=True, timeout=60)
    os.makedirs(mountpoint)
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True,
                   capture_output=True, timeout=60)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True, capture_output=True,
                       timeout=60)
        os.unlink(image)
