"""VDIs as sparse files; VBDs plugged into dom0 as real loop devices."""

import concurrent.futures
import os
import subprocess

from tests.diskfiles import allocated_bytes
from tests.functional.simulator.simhelpers import (
    drop_vm, failure, new_vbd, new_vdi, new_vm, startable_vm, vdi_path, wait_task)

MiB = 1 << 20


def test_vdi_create_makes_a_sparse_file_of_the_virtual_size(sim, xapi, sr_ref):
    vdi = new_vdi(xapi, sr_ref, 64 * MiB, other_config={"purpose": "root"},
                  sm_config={"k": "v"})
    record = xapi.VDI.get_record(vdi)
    assert record["virtual_size"] == str(64 * MiB)  # int64 travels as a string
    assert record["physical_utilisation"] == "0"
    assert record["other_config"] == {"purpose": "root"}
    assert xapi.VDI.get_sm_config(vdi) == {"k": "v"}
    assert record["SR"] == sr_ref and vdi in xapi.SR.get_VDIs(sr_ref)
    path = vdi_path(sim, xapi, vdi)
    assert os.path.getsize(path) == 64 * MiB and allocated_bytes(path) == 0
    xapi.VDI.destroy(vdi)
    assert not os.path.exists(path)


def test_vdi_create_needs_the_fields_without_a_default(xapi, sr_ref):
    # datamodel.ml, VDI.t: SR, virtual_size, type, sharable, read_only and
    # other_config have no default; gen_server.ml (from_ctor_record) and
    # server_helpers.ml (my_assoc) fail on the first one missing.
    minimal = {"SR": sr_ref, "virtual_size": str(MiB), "type": "user", "sharable": False,
               "read_only": False, "other_config": {}}
    for field in minimal:
        partial = {k: v for k, v in minimal.items() if k != field}
        assert failure(xapi.VDI.create, partial) == [
            "INTERNAL_ERROR", 'Server_helpers.Dispatcher_FieldNotFound("%s")' % field]
    vdi = xapi.VDI.create(minimal)  # name_*, sm_config, xenstore_data, tags: defaults
    record = xapi.VDI.get_record(vdi)
    assert record["name_label"] == "" and record["sm_config"] == {} and record["tags"] == []
    xapi.VDI.destroy(vdi)


def test_vbd_create_needs_the_fields_without_a_default(xapi, sr_ref, dom0_ref):
    # datamodel.ml, VBD.t and qos: device, unpluggable and currently_attached
    # have defaults; the other constructor fields do not.
    vdi = new_vdi(xapi, sr_ref, MiB)
    minimal = {"VM": dom0_ref, "VDI": vdi, "userdevice": "autodetect", "bootable": False,
               "mode": "RW", "type": "Disk", "empty": False, "other_config": {},
               "qos_algorithm_type": "", "qos_algorithm_params": {}}
    for field in minimal:
        partial = {k: v for k, v in minimal.items() if k != field}
        assert failure(xapi.VBD.create, partial) == [
            "INTERNAL_ERROR", 'Server_helpers.Dispatcher_FieldNotFound("%s")' % field]
    vbd = xapi.VBD.create(minimal)
    assert xapi.VBD.get_unpluggable(vbd) is True
    xapi.VBD.destroy(vbd)
    xapi.VDI.destroy(vdi)


def test_vdi_create_refuses_a_size_that_is_not_a_number(xapi, sr_ref):
    assert failure(new_vdi, xapi, sr_ref, "big") == ["FIELD_TYPE_ERROR", "virtual_size"]


def test_physical_utilisation_follows_allocated_blocks(sim, xapi, sr_ref):
    vdi = new_vdi(xapi, sr_ref, 16 * MiB)
    with open(vdi_path(sim, xapi, vdi), "r+b") as f:
        f.seek(4 * MiB)
        f.write(b"\xab" * MiB)
    assert int(xapi.VDI.get_physical_utilisation(vdi)) == MiB
    xapi.VDI.destroy(vdi)


def test_resize_grows_and_refuses_to_shrink(sim, xapi, sr_ref):
    vdi = new_vdi(xapi, sr_ref, 8 * MiB)
    xapi.VDI.resize(vdi, str(16 * MiB))
    assert xapi.VDI.get_virtual_size(vdi) == str(16 * MiB)
    assert os.path.getsize(vdi_path(sim, xapi, vdi)) == 16 * MiB
    assert failure(xapi.VDI.resize, vdi, str(4 * MiB)) == [
        "SR_BACKEND_FAILURE_79", "", "VDI Invalid size [opterr=shrinking not allowed]", ""]
    assert xapi.VDI.get_virtual_size(vdi) == str(16 * MiB)
    xapi.VDI.destroy(vdi)


def test_copy_keeps_data_and_holes(sim, xapi, sr_ref):
    vdi = new_vdi(xapi, sr_ref, 32 * MiB, other_config={"purpose": "root"})
    with open(vdi_path(sim, xapi, vdi), "r+b") as f:
        f.write(b"head" * 1024)
        f.seek(20 * MiB)
        f.write(b"tail" * 1024)
    copy = xapi.VDI.copy(vdi, sr_ref)
    assert copy != vdi
    src, dst = vdi_path(sim, xapi, vdi), vdi_path(sim, xapi, copy)
    assert open(src, "rb").read() == open(dst, "rb").read()
    assert allocated_bytes(dst) <= allocated_bytes(src) < MiB
    assert xapi.VDI.get_virtual_size(copy) == str(32 * MiB)
    assert xapi.VDI.get_other_config(copy) == {"purpose": "root"}
    xapi.VDI.destroy(copy)
    xapi.VDI.destroy(vdi)


def test_copy_of_a_vdi_attached_read_only_is_allowed(sim, xapi, sr_ref, dom0_ref):
    # xapi_vdi.ml, check_operation_error: copy may run with read-only
    # attachments (operation_can_be_performed_with_ro_attach); a VBD plugged
    # read-write makes it VDI_IN_USE.
    vdi = new_vdi(xapi, sr_ref, 4 * MiB)
    with open(vdi_path(sim, xapi, vdi), "r+b") as f:
        f.write(b"attached")
    ro = new_vbd(xapi, dom0_ref, vdi, mode="RO")
    xapi.VBD.plug(ro)
    copy = xapi.VDI.copy(vdi, sr_ref)
    with open(vdi_path(sim, xapi, copy), "rb") as f:
        assert f.read(8) == b"attached"
    xapi.VBD.unplug(ro)
    xapi.VBD.destroy(ro)
    rw = new_vbd(xapi, dom0_ref, vdi)
    xapi.VBD.plug(rw)
    assert failure(xapi.VDI.copy, vdi, sr_ref) == ["VDI_IN_USE", vdi, "copy"]
    xapi.VBD.unplug(rw)
    xapi.VBD.destroy(rw)
    for ref in (copy, vdi):
        xapi.VDI.destroy(ref)


def test_copy_of_a_read_only_vdi_is_read_write_and_into_checks_the_target(xapi, sr_ref):
    # xapi_vdi.ml, copy: the new VDI is always read-write (CA-64962) with an
    # empty sm_config; into_vdi must not be read-only (VDI_READONLY) nor
    # smaller than the source (VDI_TOO_SMALL [dst, source size]).
    vdi = new_vdi(xapi, sr_ref, 4 * MiB, read_only=True, sm_config={"k": "v"}, tags=["t"])
    copy = xapi.VDI.copy(vdi, sr_ref)
    record = xapi.VDI.get_record(copy)
    assert record["read_only"] is False and record["sm_config"] == {}
    assert record["tags"] == ["t"]
    small = new_vdi(xapi, sr_ref, MiB)
    assert failure(xapi.VDI.copy, vdi, sr_ref, "OpaqueRef:NULL", small) == [
        "VDI_TOO_SMALL", small, str(4 * MiB)]
    locked = new_vdi(xapi, sr_ref, 8 * MiB, read_only=True)
    assert failure(xapi.VDI.copy, vdi, sr_ref, "OpaqueRef:NULL", locked) == [
        "VDI_READONLY", locked]
    for ref in (copy, small, locked, vdi):
        xapi.VDI.destroy(ref)


def test_async_copy_task_result_is_the_new_vdi_as_xmlrpc_value(sim, xapi, sr_ref):
    vdi = new_vdi(xapi, sr_ref, 4 * MiB)
    task = xapi.Async.VDI.copy(vdi, sr_ref)
    assert task.startswith("OpaqueRef:")
    assert wait_task(xapi, task) == "success"
    result = xapi.task.get_result(task)
    assert result.startswith("<value>OpaqueRef:") and result.endswith("</value>")
    copy = result[len("<value>"):-len("</value>")]
    assert xapi.VDI.get_virtual_size(copy) == str(4 * MiB)
    assert xapi.task.get_progress(task) == 1.0
    xapi.task.destroy(task)
    xapi.VDI.destroy(copy)
    xapi.VDI.destroy(vdi)


def test_async_task_failure_carries_the_error(xapi, sr_ref):
    task = xapi.Async.VDI.copy("OpaqueRef:missing", sr_ref)
    assert wait_task(xapi, task) == "failure"
    assert xapi.task.get_error_info(task) == ["HANDLE_INVALID", "VDI", "OpaqueRef:missing"]
    xapi.task.destroy(task)
    assert failure(xapi.task.get_status, task)[0] == "HANDLE_INVALID"


def test_task_create_makes_a_pending_task(xapi, host_ref):
    task = xapi.task.create("upload", "config drive")
    record = xapi.task.get_record(task)
    assert record["status"] == "pending" and record["name_label"] == "upload"
    assert record["resident_on"] == host_ref and record["progress"] == 0.0
    xapi.task.destroy(task)


def test_vbd_plug_into_dom0_makes_a_loop_device_named_by_get_device(
        sim, xapi, sr_ref, dom0_ref):
    vdi = new_vdi(xapi, sr_ref, 8 * MiB)
    vbd = new_vbd(xapi, dom0_ref, vdi)
    assert xapi.VBD.get_currently_attached(vbd) is False
    xapi.VBD.plug(vbd)
    device = xapi.VBD.get_device(vbd)
    # xapi_vm_helpers.ml, allowed_VBD_devices: dom0's autodetect is the
    # lowest free disk number from 0.
    assert device == "xvda"
    link = os.path.join(sim.vm_dev_dir(xapi.VM.get_uuid(dom0_ref)), device)
    target = os.readlink(link)
    assert target.startswith("/dev/loop")
    out = subprocess.run(["losetup", "--list", "--noheadings", "-O", "BACK-FILE", target],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == vdi_path(sim, xapi, vdi)
    assert xapi.VBD.get_currently_attached(vbd) is True
    assert failure(xapi.VBD.plug, vbd) == ["DEVICE_ALREADY_ATTACHED", vbd]
    assert failure(xapi.VDI.destroy, vdi) == ["VDI_IN_USE", vdi, "destroy"]
    assert failure(xapi.VBD.destroy, vbd)[0] == "OPERATION_NOT_ALLOWED"
    xapi.VBD.unplug(vbd)
    assert not os.path.lexists(link)
    assert subprocess.run(["losetup", target], capture_output=True).returncode != 0
    assert failure(xapi.VBD.unplug, vbd) == ["DEVICE_ALREADY_DETACHED", vbd]
    xapi.VBD.destroy(vbd)
    xapi.VDI.destroy(vdi)


def test_two_plugged_vdis_are_two_block_devices_with_their_own_data(
        sim, xapi, sr_ref, dom0_ref):
    vdis = [new_vdi(xapi, sr_ref, 4 * MiB) for _ in range(2)]
    for n, vdi in enumerate(vdis):
        with open(vdi_path(sim, xapi, vdi), "r+b") as f:
            f.write(b"disk-%d" % n)
    vbds = [new_vbd(xapi, dom0_ref, vdi) for vdi in vdis]
    for vbd in vbds:
        xapi.VBD.plug(vbd)
    dev_dir = sim.vm_dev_dir(xapi.VM.get_uuid(dom0_ref))
    devices = [xapi.VBD.get_device(vbd) for vbd in vbds]
    assert devices == ["xvda", "xvdb"]
    targets = [os.path.realpath(os.path.join(dev_dir, d)) for d in devices]
    assert targets[0] != targets[1]
    for n, target in enumerate(targets):
        assert os.path.exists(target) and os.stat(target).st_rdev != 0
        with open(target, "rb") as f:
            assert f.read(6) == b"disk-%d" % n
    for vbd in vbds:
        xapi.VBD.unplug(vbd)
        xapi.VBD.destroy(vbd)
    for vdi in vdis:
        xapi.VDI.destroy(vdi)


def test_read_only_vbd_is_a_read_only_device(sim, xapi, sr_ref, dom0_ref):
    vdi = new_vdi(xapi, sr_ref, 4 * MiB)
    vbd = new_vbd(xapi, dom0_ref, vdi, mode="RO")
    xapi.VBD.plug(vbd)
    link = os.path.join(sim.vm_dev_dir(xapi.VM.get_uuid(dom0_ref)), xapi.VBD.get_device(vbd))
    name = os.path.basename(os.readlink(link))
    assert open("/sys/block/%s/ro" % name).read().strip() == "1"
    xapi.VBD.unplug(vbd)
    xapi.VBD.destroy(vbd)
    xapi.VDI.destroy(vdi)


def test_autodetect_takes_the_lowest_free_number_from_zero(xapi, sr_ref, dom0_ref):
    # xapi_vbd.ml, create: "autodetect" resolves to the first of
    # xapi_vm_helpers.ml allowed_VBD_devices (0..255 for the control domain,
    # 0..254 for a guest) not used by the VM's VBDs (all_used_VBD_devices).
    vdi = new_vdi(xapi, sr_ref, MiB)
    taken = new_vbd(xapi, dom0_ref, vdi, userdevice="0")
    first = new_vbd(xapi, dom0_ref, vdi)
    assert xapi.VBD.get_userdevice(first) == "1"
    xapi.VBD.destroy(taken)
    second = new_vbd(xapi, dom0_ref, vdi)
    assert xapi.VBD.get_userdevice(second) == "0"
    vm = new_vm(xapi)
    guest = new_vbd(xapi, vm, vdi)
    assert xapi.VBD.get_userdevice(guest) == "0"
    xapi.VM.destroy(vm)
    for vbd in (first, second):
        xapi.VBD.destroy(vbd)
    xapi.VDI.destroy(vdi)


def test_vbd_create_with_a_number_and_a_taken_number(xapi, sr_ref, dom0_ref):
    vdi = new_vdi(xapi, sr_ref, MiB)
    vbd = new_vbd(xapi, dom0_ref, vdi, userdevice="5")
    assert xapi.VBD.get_userdevice(vbd) == "5"
    assert failure(new_vbd, xapi, dom0_ref, vdi, "5") == ["DEVICE_ALREADY_EXISTS", "5"]
    assert failure(new_vbd, xapi, dom0_ref, vdi, "sideways") == ["INVALID_DEVICE", "sideways"]
    xapi.VBD.destroy(vbd)
    xapi.VDI.destroy(vdi)


def test_a_vbd_that_is_not_unpluggable_refuses_unplug(xapi, sr_ref, dom0_ref):
    # xapi_vbd_helpers.ml, valid_operations: unpluggable=false sets
    # VBD_NOT_UNPLUGGABLE [vbd] on unplug and unplug_force, before the
    # power-state and already-detached errors.
    vdi = new_vdi(xapi, sr_ref, MiB)
    vbd = new_vbd(xapi, dom0_ref, vdi)
    xapi.VBD.set_unpluggable(vbd, False)
    assert failure(xapi.VBD.unplug, vbd) == ["VBD_NOT_UNPLUGGABLE", vbd]  # even unplugged
    xapi.VBD.plug(vbd)
    assert failure(xapi.VBD.unplug, vbd) == ["VBD_NOT_UNPLUGGABLE", vbd]
    assert failure(xapi.VBD.unplug_force, vbd) == ["VBD_NOT_UNPLUGGABLE", vbd]
    assert xapi.VBD.get_currently_attached(vbd) is True
    xapi.VBD.set_unpluggable(vbd, True)
    xapi.VBD.unplug(vbd)
    xapi.VBD.destroy(vbd)
    xapi.VDI.destroy(vdi)


def test_empty_cd_vbd_has_no_vdi(xapi):
    vm = new_vm(xapi)
    vbd = new_vbd(xapi, vm, "OpaqueRef:NULL", userdevice="3", mode="RO", vbd_type="CD",
                  empty=True)
    record = xapi.VBD.get_record(vbd)
    assert record["empty"] is True and record["VDI"] == "OpaqueRef:NULL"
    assert record["type"] == "CD"
    xapi.VM.destroy(vm)


def test_plugging_into_a_halted_guest_is_vm_bad_power_state(xapi, sr_ref):
    vm = new_vm(xapi)
    vdi = new_vdi(xapi, sr_ref, MiB)
    vbd = new_vbd(xapi, vm, vdi)
    assert failure(xapi.VBD.plug, vbd) == ["VM_BAD_POWER_STATE", vm, "running", "halted"]
    xapi.VM.destroy(vm)
    xapi.VDI.destroy(vdi)


def test_a_rw_disk_attached_to_one_guest_is_in_use_for_another(xapi, sr_ref):
    vms = [startable_vm(xapi, sr_ref) for _ in range(2)]
    vdi = new_vdi(xapi, sr_ref, MiB)
    new_vbd(xapi, vms[0], vdi)
    for vm in vms:
        xapi.VM.start(vm, False, False)
    second = new_vbd(xapi, vms[1], vdi)
    assert failure(xapi.VBD.plug, second) == ["VDI_IN_USE", vdi]
    assert xapi.VBD.get_currently_attached(second) is False
    for vm in vms:
        drop_vm(xapi, vm, keep=(vdi,))
    xapi.VDI.destroy(vdi)


def test_destroying_a_vdi_removes_its_unplugged_vbds(xapi, sr_ref, dom0_ref):
    vdi = new_vdi(xapi, sr_ref, MiB)
    vbd = new_vbd(xapi, dom0_ref, vdi)
    xapi.VDI.destroy(vdi)
    assert failure(xapi.VBD.get_record, vbd) == ["HANDLE_INVALID", "VBD", vbd]


def test_concurrent_plugs_from_several_clients_get_distinct_devices(sim, sr_ref, dom0_ref):
    def plug_one(_):
        xapi = sim.session().xenapi
        vdi = new_vdi(xapi, sr_ref, MiB)
        vbd = new_vbd(xapi, dom0_ref, vdi)
        xapi.VBD.plug(vbd)
        device = xapi.VBD.get_device(vbd)
        link = os.path.join(sim.vm_dev_dir(xapi.VM.get_uuid(dom0_ref)), device)
        target = os.readlink(link)
        return xapi, vdi, vbd, device, target

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        plugged = list(pool.map(plug_one, range(4)))
    assert len({p[3] for p in plugged}) == 4  # device names
    assert len({p[4] for p in plugged}) == 4  # loop devices
    for xapi, vdi, vbd, _, _ in plugged:
        xapi.VBD.unplug(vbd)
        xapi.VBD.destroy(vbd)
        xapi.VDI.destroy(vdi)
