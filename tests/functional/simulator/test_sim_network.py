"""Networks, VIFs, host CPUs and memory, SR sizes, reboots.

VIF checks follow xen-api's ocaml/xapi/xapi_vif_helpers.ml (create,
destroy, valid_operations); a VM's VIFs go with it (xapi_vm_helpers.ml,
destroy); host_cpu and host_metrics are datamodel_host.ml's classes.
"""

import os

import pytest

from tests.conftest import SimProcess
from tests.functional.simulator.simhelpers import drop_vm, failure, new_vm, startable_vm

MiB = 1 << 20
MAC = "fa:16:3e:00:00:01"


def _network(xapi, bridge):
    return next(ref for ref, rec in xapi.network.get_all_records().items()
                if rec["bridge"] == bridge)


def _vif(vm, network, device="0", mac=MAC, **extra):
    record = {"device": device, "network": network, "VM": vm, "MAC": mac, "MTU": "1500",
              "other_config": {"owner": "port-1"}, "qos_algorithm_type": "",
              "qos_algorithm_params": {}}
    record.update(extra)
    return record


def test_a_fresh_host_has_the_management_and_integration_bridges(xapi):
    bridges = {rec["bridge"]: rec for rec in xapi.network.get_all_records().values()}
    assert {"xenbr0", "br-int"} <= set(bridges)
    assert bridges["br-int"]["name_label"] == "br-int"
    assert bridges["xenbr0"]["MTU"] == "1500"


def test_a_vif_is_made_attached_with_its_vm_and_destroyed_with_it(xapi, sr_ref):
    vm = startable_vm(xapi, sr_ref, "vif-life")
    network = _network(xapi, "br-int")
    vif = xapi.VIF.create(_vif(vm, network))
    record = xapi.VIF.get_record(vif)
    assert (record["device"], record["MAC"], record["MTU"]) == ("0", MAC, "1500")
    assert record["other_config"] == {"owner": "port-1"}
    assert record["currently_attached"] is False
    assert xapi.VM.get_VIFs(vm) == [vif]
    assert vif in xapi.network.get_VIFs(network)
    xapi.VM.start(vm, False, False)
    assert xapi.VIF.get_currently_attached(vif) is True
    xapi.VM.hard_shutdown(vm)
    assert xapi.VIF.get_currently_attached(vif) is False
    drop_vm(xapi, vm)
    assert vif not in xapi.VIF.get_all()


@pytest.mark.parametrize("field, value, error", [
    ("device", "eth0", ["INVALID_DEVICE", "eth0"]),
    ("device", "-1", ["INVALID_DEVICE", "-1"]),
    ("MAC", "fa:16:3e:00:00", ["MAC_INVALID", "fa:16:3e:00:00"]),
    ("MAC", "fa:16:3e:00:00:0g", ["MAC_INVALID", "fa:16:3e:00:00:0g"]),
])
def test_vif_create_refuses_a_bad_device_or_mac(xapi, field, value, error):
    vm = new_vm(xapi, "vif-bad")
    before = xapi.VIF.get_all()
    assert failure(xapi.VIF.create, _vif(vm, _network(xapi, "xenbr0"), **{field: value})) == \
        error
    assert xapi.VIF.get_all() == before
    xapi.VM.destroy(vm)


def test_vif_create_refuses_a_device_the_vm_has(xapi):
    vm = new_vm(xapi, "vif-twice")
    network = _network(xapi, "xenbr0")
    xapi.VIF.create(_vif(vm, network, device="1"))
    assert failure(xapi.VIF.create, _vif(vm, network, device="1",
                                         mac="fa:16:3e:00:00:02")) == \
        ["DEVICE_ALREADY_EXISTS", "1"]
    xapi.VM.destroy(vm)


def test_vif_create_names_a_missing_field_and_an_unknown_network(xapi):
    vm = new_vm(xapi, "vif-fields")
    record = _vif(vm, _network(xapi, "xenbr0"))
    del record["MTU"]
    assert failure(xapi.VIF.create, record) == [
        "INTERNAL_ERROR", 'Server_helpers.Dispatcher_FieldNotFound("MTU")']
    assert failure(xapi.VIF.create, _vif(vm, "OpaqueRef:nope"))[0] == "HANDLE_INVALID"
    xapi.VM.destroy(vm)


def test_plug_and_unplug_need_a_running_vm_and_the_other_state(xapi, sr_ref):
    vm = startable_vm(xapi, sr_ref, "vif-plug")
    vif = xapi.VIF.create(_vif(vm, _network(xapi, "br-int")))
    assert failure(xapi.VIF.plug, vif) == ["VM_BAD_POWER_STATE", vm, "running", "halted"]
    xapi.VM.start(vm, False, False)
    assert failure(xapi.VIF.plug, vif) == ["DEVICE_ALREADY_ATTACHED", vif]
    assert failure(xapi.VIF.destroy, vif) == [
        "OPERATION_NOT_ALLOWED", "VIF currently attached to a running VM"]
    xapi.VIF.unplug(vif)
    assert failure(xapi.VIF.unplug, vif) == ["DEVICE_ALREADY_DETACHED", vif]
    xapi.VIF.plug(vif)
    xapi.VIF.unplug(vif)
    xapi.VIF.destroy(vif)
    drop_vm(xapi, vm)


def test_a_reboot_is_a_new_domain_of_a_running_vm(xapi, sr_ref):
    vm = startable_vm(xapi, sr_ref, "reboots")
    assert failure(xapi.VM.clean_reboot, vm) == ["VM_BAD_POWER_STATE", vm, "running",
                                                 "halted"]
    xapi.VM.start(vm, False, False)
    first = xapi.VM.get_domid(vm)
    xapi.VM.clean_reboot(vm)
    second = xapi.VM.get_domid(vm)
    xapi.VM.hard_reboot(vm)
    assert len({first, second, xapi.VM.get_domid(vm)}) == 3
    assert xapi.VM.get_power_state(vm) == "Running"
    drop_vm(xapi, vm)


def test_host_memory_free_is_what_resident_vms_do_not_hold(xapi, host_ref, sr_ref):
    metrics = xapi.host.get_metrics(host_ref)
    free = int(xapi.host_metrics.get_memory_free(metrics))
    vm = startable_vm(xapi, sr_ref, "holds-memory")
    xapi.VM.start(vm, False, False)
    assert int(xapi.host_metrics.get_memory_free(metrics)) == free - 512 * MiB
    xapi.VM.hard_shutdown(vm)
    assert int(xapi.host_metrics.get_memory_free(metrics)) == free
    drop_vm(xapi, vm)


def test_a_file_srs_size_is_its_filesystems(xapi, sr_ref, sim):
    record = xapi.SR.get_record(sr_ref)
    fs = os.statvfs(os.path.join(sim.state_dir, "sr", record["uuid"]))
    assert int(record["physical_size"]) == fs.f_blocks * fs.f_frsize
    assert 0 < int(record["physical_utilisation"]) <= int(record["physical_size"])


def test_cpus_and_memory_follow_the_command_line_of_each_start(tmp_path):
    state = tmp_path / "hw"
    for cpus, memory_mb in ((2, 6144), (8, 32768)):
        sim = SimProcess(state, extra_args=["--host-cpus", str(cpus), "--host-memory-mb",
                                            str(memory_mb), "--no-loop-devices"]).start()
        try:
            xapi = sim.session().xenapi
            host = xapi.host.get_all()[0]
            cpus_seen = [xapi.host_cpu.get_number(ref) for ref in xapi.host.get_host_CPUs(host)]
            assert sorted(cpus_seen, key=int) == [str(n) for n in range(cpus)]
            metrics = xapi.host.get_metrics(host)
            assert xapi.host_metrics.get_memory_total(metrics) == str(memory_mb * MiB)
            # The control domain (4 GiB) is resident; nothing else is.
            assert xapi.host_metrics.get_memory_free(metrics) == str((memory_mb - 4096) * MiB)
        finally:
            sim.stop()
