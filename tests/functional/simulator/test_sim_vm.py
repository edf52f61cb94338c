"""VM life cycle and the compute VM."""

import os
import xmlrpc.client

from tests.functional.simulator.simhelpers import (
    drop_vm, failure, new_vbd, new_vdi, new_vm, startable_vm)

MiB = 1 << 20


def test_vm_create_keeps_nova_fields_and_starts_halted(xapi):
    vm = new_vm(xapi, "keeps-fields")
    record = xapi.VM.get_record(vm)
    assert record["power_state"] == "Halted"
    assert record["resident_on"] == "OpaqueRef:NULL"
    assert record["memory_static_max"] == str(512 * MiB)
    assert record["other_config"]["instance"] == "00000000-0000-0000-0000-000000000001"
    assert record["is_control_domain"] is False
    assert xapi.VM.get_by_uuid(record["uuid"]) == vm
    xapi.VM.destroy(vm)


def test_vm_create_names_the_first_missing_field_as_xapi_does(xapi):
    # gen_server.ml, operation (from_ctor_record) and server_helpers.ml,
    # my_assoc: a field without a default (datamodel_vm.ml) missing from
    # the record is INTERNAL_ERROR Dispatcher_FieldNotFound; the first one
    # in declaration order is named.
    assert failure(xapi.VM.create, {"memory_static_max": "1"}) == [
        "INTERNAL_ERROR", 'Server_helpers.Dispatcher_FieldNotFound("user_version")']
    record = xapi.VM.get_record(new_vm(xapi))
    for field in ("actions_after_crash", "recommendations", "HVM_boot_params"):
        partial = {k: v for k, v in record.items() if k != field}
        assert failure(xapi.VM.create, partial) == [
            "INTERNAL_ERROR", 'Server_helpers.Dispatcher_FieldNotFound("%s")' % field]


def test_vm_create_without_the_fields_that_have_defaults(xapi):
    # datamodel_common.ml, names: name_label/name_description default to "";
    # datamodel_vm.ml gives ha_*, tags, xenstore_data ... defaults too.
    full = xapi.VM.get_record(new_vm(xapi))
    required = ("user_version", "is_a_template", "affinity", "memory_static_max",
                "memory_dynamic_max", "memory_dynamic_min", "memory_static_min",
                "VCPUs_params", "VCPUs_max", "VCPUs_at_startup", "actions_after_shutdown",
                "actions_after_reboot", "actions_after_crash", "PV_bootloader", "PV_kernel",
                "PV_ramdisk", "PV_args", "PV_bootloader_args", "PV_legacy_args",
                "HVM_boot_policy", "HVM_boot_params", "platform", "PCI_bus", "other_config",
                "recommendations")
    vm = xapi.VM.create({k: full[k] for k in required})
    assert xapi.VM.get_name_label(vm) == ""
    xapi.VM.destroy(vm)


def test_a_constructor_record_is_unmarshalled_before_the_session_is_checked(sim):
    # gen_server.ml, operation: unmarshall_code comes before session_check_exp.
    proxy = xmlrpc.client.ServerProxy(sim.url, allow_none=True)
    answer = proxy.VM.create("OpaqueRef:no-such-session", {})
    assert answer["ErrorDescription"] == [
        "INTERNAL_ERROR", 'Server_helpers.Dispatcher_FieldNotFound("user_version")']
    # ... and a record that is not a struct fails its match (from_ctor_record).
    answer = proxy.VM.create("OpaqueRef:no-such-session", "a string")
    assert answer["ErrorDescription"] == ["INTERNAL_ERROR", 'Failure("bad __structure")']


def test_start_and_shutdowns_move_power_state_and_residence(xapi, host_ref, sr_ref):
    vm = startable_vm(xapi, sr_ref)
    xapi.VM.start(vm, False, False)
    assert xapi.VM.get_power_state(vm) == "Running"
    assert xapi.VM.get_resident_on(vm) == host_ref
    xapi.VM.clean_shutdown(vm)
    assert xapi.VM.get_power_state(vm) == "Halted"
    assert xapi.VM.get_resident_on(vm) == "OpaqueRef:NULL"
    xapi.VM.start(vm, False, False)
    xapi.VM.hard_shutdown(vm)
    assert xapi.VM.get_power_state(vm) == "Halted"
    drop_vm(xapi, vm)


def test_power_operations_in_the_wrong_state_are_vm_bad_power_state(xapi, sr_ref):
    vm = startable_vm(xapi, sr_ref)
    assert failure(xapi.VM.clean_shutdown, vm) == ["VM_BAD_POWER_STATE", vm, "running", "halted"]
    xapi.VM.start(vm, False, False)
    assert failure(xapi.VM.start, vm, False, False) == [
        "VM_BAD_POWER_STATE", vm, "halted", "running"]
    assert failure(xapi.VM.destroy, vm) == ["VM_BAD_POWER_STATE", vm, "halted", "running"]
    drop_vm(xapi, vm)


def test_control_domain_cannot_be_shut_down_or_destroyed(xapi, dom0_ref):
    assert failure(xapi.VM.hard_shutdown, dom0_ref)[0] == "OPERATION_NOT_ALLOWED"
    assert failure(xapi.VM.destroy, dom0_ref)[0] == "OPERATION_NOT_ALLOWED"
    assert xapi.VM.get_power_state(dom0_ref) == "Running"


def test_guest_vbds_attach_on_start_without_a_device_and_detach_on_shutdown(
        sim, xapi, sr_ref):
    vm = new_vm(xapi)
    vdi = new_vdi(xapi, sr_ref, MiB)
    vbd = new_vbd(xapi, vm, vdi, userdevice="0")
    xapi.VM.set_PV_bootloader(vm, "eliloader")  # reads no disk (boot.py)
    assert xapi.VM.get_VBDs(vm) == [vbd]
    xapi.VM.start(vm, False, False)
    assert xapi.VBD.get_currently_attached(vbd) is True
    assert xapi.VBD.get_device(vbd) == "xvda"
    vm_dev_dir = sim.vm_dev_dir(xapi.VM.get_uuid(vm))
    assert not os.path.exists(os.path.join(vm_dev_dir, "xvda"))  # guests get no block device
    xapi.VM.clean_shutdown(vm)
    assert xapi.VBD.get_currently_attached(vbd) is False
    xapi.VM.destroy(vm)
    xapi.VDI.destroy(vdi)


def test_destroying_a_vm_destroys_its_vbds_but_not_its_vdis(xapi, sr_ref):
    vm = new_vm(xapi)
    vdi = new_vdi(xapi, sr_ref, MiB)
    vbd = new_vbd(xapi, vm, vdi)
    xapi.VM.destroy(vm)
    assert failure(xapi.VBD.get_record, vbd) == ["HANDLE_INVALID", "VBD", vbd]
    assert xapi.VDI.get_VBDs(vdi) == []
    xapi.VDI.destroy(vdi)


def test_other_config_of_a_vm_can_be_extended(xapi, dom0_ref):
    vm = new_vm(xapi)
    xapi.VM.add_to_other_config(vm, "owner", "host-1")
    assert xapi.VM.get_other_config(vm)["owner"] == "host-1"
    xapi.VM.destroy(vm)


def test_async_vm_start_returns_a_task_whose_result_is_an_empty_value(xapi, sr_ref):
    # gen_server.ml, operation: a message without a result is marshalled
    # as Rpc.String "", which taskHelper.ml (set_result_on_task) stores with
    # Xmlrpc.to_string: <value></value>.
    from tests.functional.simulator.simhelpers import wait_task
    vm = startable_vm(xapi, sr_ref)
    task = xapi.Async.VM.start(vm, False, False)
    assert wait_task(xapi, task) == "success"
    assert xapi.task.get_result(task) == "<value></value>"
    assert xapi.VM.get_power_state(vm) == "Running"
    xapi.task.destroy(task)
    drop_vm(xapi, vm)


def test_compute_vm_is_a_running_guest_that_knows_its_uuid(xapi_sim_compute):
    xapi = xapi_sim_compute.session().xenapi
    uuid = xapi_sim_compute.compute_vm_uuid
    path = os.path.join(xapi_sim_compute.state_dir, "vms", uuid, "sys", "hypervisor", "uuid")
    assert open(path).read().strip() == uuid
    vm = xapi.VM.get_by_uuid(uuid)
    record = xapi.VM.get_record(vm)
    assert record["is_control_domain"] is False
    assert record["power_state"] == "Running"
    host = xapi.pool.get_master(xapi.pool.get_all()[0])
    assert record["resident_on"] == host
    # Its VBDs become real block devices in its own device directory.
    sr = xapi.pool.get_default_SR(xapi.pool.get_all()[0])
    vdi = new_vdi(xapi, sr, MiB)
    vbd = new_vbd(xapi, vm, vdi)
    # It stands for a guest booted from its own disk 0, so autodetect gives 1
    # (xapi_vm_helpers.ml, allowed_VBD_devices skips used numbers).
    assert xapi.VBD.get_userdevice(vbd) == "1"
    assert failure(new_vbd, xapi, vm, vdi, "0") == ["DEVICE_ALREADY_EXISTS", "0"]
    xapi.VBD.plug(vbd)
    link = os.path.join(xapi_sim_compute.vm_dev_dir(uuid), xapi.VBD.get_device(vbd))
    assert os.readlink(link).startswith("/dev/loop")
    xapi.VBD.unplug(vbd)
    assert not os.path.lexists(link)


def test_no_compute_vm_means_no_identity_file(sim):
    assert sim.compute_vm_uuid is None
