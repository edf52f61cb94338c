"""Power, reboot, resize and lookups of a spawned instance, seen through XAPI."""

import os

import pytest

from nova_xen_split import driver_errors
from nova_xen_split import objects
from nova_xen_split import vm_utils
from tests.functional.driver.conftest import (GiB, TEST_IMAGE, leftovers, make_instance,
                                              spawn)
from nova_xen_split.xenhost import marks

TEST_KERNEL = "7e57da7a-0000-4000-8000-0000000000a1"
TEST_RAMDISK = "7e57da7a-0000-4000-8000-0000000000a2"


def _power_state(pair, instance):
    s = pair.session()
    try:
        vm_ref = next(ref for ref, rec in s.xenapi.VM.get_all_records().items()
                      if marks.vm_instance(rec["other_config"]) == instance.uuid)
        return s.xenapi.VM.get_power_state(vm_ref)
    finally:
        s.xenapi.session.logout()


def test_power_off_power_on_and_reboots_change_the_vms_power_state(xapi_sim, make_pair):
    pair = make_pair(xapi_sim)
    instance = make_instance(objects.Flavor(root_gb=0), config_drive="")
    spawn(pair, instance)
    driver = pair.driver

    driver.power_off(instance)
    assert _power_state(pair, instance) == "Halted"
    assert driver.get_info(instance).state == vm_utils.SHUTDOWN
    driver.power_on(None, instance, [])
    assert _power_state(pair, instance) == "Running"
    driver.power_off(instance, timeout=30)  # clean shutdown
    assert _power_state(pair, instance) == "Halted"
    driver.reboot(None, instance, [], "HARD")  # a halted VM is started
    assert _power_state(pair, instance) == "Running"
    driver.reboot(None, instance, [], "SOFT")
    assert driver.get_info(instance).state == vm_utils.RUNNING

    driver.destroy(None, instance)


def test_an_unknown_instance_is_not_found_and_destroying_it_is_harmless(xapi_sim, make_pair):
    pair = make_pair(xapi_sim)
    baseline = pair.counts()
    stranger = make_instance()
    with pytest.raises(driver_errors.InstanceNotFound) as err:
        pair.driver.get_info(stranger)
    assert stranger.uuid in str(err.value)
    pair.driver.destroy(None, stranger)
    assert pair.counts() == baseline


def test_spawning_an_instance_twice_is_refused_without_touching_the_first(xapi_sim, make_pair):
    pair = make_pair(xapi_sim)
    instance = make_instance(objects.Flavor(root_gb=0), config_drive="")
    spawn(pair, instance)
    counts = pair.counts()
    with pytest.raises(driver_errors.InstanceExists):
        spawn(pair, instance)
    assert pair.counts() == counts
    assert pair.driver.get_info(instance).state == vm_utils.RUNNING
    pair.driver.destroy(None, instance)


def test_a_flavor_smaller_than_the_image_is_refused_before_any_disk(xapi_sim, make_pair):
    pair = make_pair(xapi_sim)
    baseline = pair.counts()
    instance = make_instance(objects.Flavor(root_gb=1))
    meta = objects.ImageMeta(id=TEST_IMAGE, disk_format="raw", size=2 * GiB)
    with pytest.raises(driver_errors.FlavorDiskSmallerThanImage):
        spawn(pair, instance, meta)
    assert pair.counts() == baseline


NETWORK_INFO = [{"id": "5b2f1b0c-0d3a-4f3e-8c61-3b7d0f1a2b3c", "address": "fa:16:3e:11:22:33",
                 "network": {"id": "n", "subnets": []}}]


def _vm_and_root(pair, instance):
    """(VM record, root VDI virtual size) of the instance's VM."""
    s = pair.session()
    try:
        vm = next(rec for rec in s.xenapi.VM.get_all_records().values()
                  if marks.vm_instance(rec["other_config"]) == instance.uuid)
        for vbd in vm["VBDs"]:
            if s.xenapi.VBD.get_userdevice(vbd) == "0":
                return vm, int(s.xenapi.VDI.get_virtual_size(s.xenapi.VBD.get_VDI(vbd)))
    finally:
        s.xenapi.session.logout()


def _resize(pair, instance, new_flavor):
    info = pair.driver.migrate_disk_and_power_off(None, instance, "hv-1", new_flavor, [])
    old_flavor, instance.flavor = instance.flavor, new_flavor  # as Nova does before finish
    pair.driver.finish_migration(None, None, instance, info, NETWORK_INFO, None, True, {})
    return old_flavor


def test_resize_up_boots_a_grown_copy_and_confirm_removes_the_original(xapi_sim, make_pair):
    pair = make_pair(xapi_sim)
    baseline = pair.counts()
    instance = make_instance(objects.Flavor(root_gb=1, memory_mb=256), config_drive="")
    spawn(pair, instance)
    original, _ = _vm_and_root(pair, instance)

    _resize(pair, instance, objects.Flavor(root_gb=2, memory_mb=512, vcpus=2))

    vm, root_bytes = _vm_and_root(pair, instance)
    assert vm["uuid"] != original["uuid"] and vm["power_state"] == "Running"
    assert (root_bytes, vm["memory_static_max"], vm["VCPUs_max"]) == (
        2 * GiB, str(512 * 1024 * 1024), "2")
    assert len(vm["VIFs"]) == 1
    assert pair.counts()["VM"] == baseline["VM"] + 2  # the original is kept, halted
    pair.driver.confirm_migration(None, None, instance, NETWORK_INFO)
    assert pair.counts()["VM"] == baseline["VM"] + 1
    pair.driver.destroy(None, instance)
    assert pair.counts() == baseline


def test_in_guest_resize_down_then_revert_restores_the_untouched_original(
        xapi_sim_compute, make_pair):
    pair = make_pair(xapi_sim_compute)
    baseline = pair.counts()
    instance = make_instance(objects.Flavor(root_gb=2), config_drive="")
    spawn(pair, instance)
    original, _ = _vm_and_root(pair, instance)

    old_flavor = _resize(pair, instance, objects.Flavor(root_gb=1))
    assert _vm_and_root(pair, instance)[1] == GiB

    pair.driver.destroy(None, instance)  # Nova destroys the resized VM first
    instance.flavor = old_flavor
    pair.driver.finish_revert_migration(None, instance, NETWORK_INFO, None)
    vm, root_bytes = _vm_and_root(pair, instance)
    assert (vm["uuid"], vm["power_state"], root_bytes) == (original["uuid"], "Running",
                                                           2 * GiB)
    pair.driver.destroy(None, instance)
    assert pair.counts() == baseline
    assert leftovers(pair, instance.uuid, baseline) == []


def test_in_guest_split_kernel_image_boots_from_dom0_files_removed_on_destroy(
        xapi_sim_compute, make_pair, image_service, tmp_path):
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"\x7fKERNEL" * 4096)
    ramdisk = tmp_path / "initrd"
    ramdisk.write_bytes(b"RAMDISK!" * 2048)
    image_service.add(str(kernel), TEST_KERNEL)
    image_service.add(str(ramdisk), TEST_RAMDISK)
    pair = make_pair(xapi_sim_compute, image_url=image_service.url)
    baseline = pair.counts()
    instance = make_instance(objects.Flavor(root_gb=0), config_drive="")
    meta = objects.ImageMeta(id=TEST_IMAGE, disk_format="ami", properties=(
        objects.ImageMetaProps({"kernel_id": TEST_KERNEL, "ramdisk_id": TEST_RAMDISK})))

    spawn(pair, instance, meta)

    s = pair.session()
    try:
        vm = s.xenapi.VM.get_record(s.xenapi.VM.get_by_name_label(instance.name)[0])
    finally:
        s.xenapi.session.logout()
    with open(vm["PV_kernel"], "rb") as f:
        assert f.read() == kernel.read_bytes()
    with open(vm["PV_ramdisk"], "rb") as f:
        assert f.read() == ramdisk.read_bytes()
    assert vm["power_state"] == "Running"
    pair.driver.destroy(None, instance)
    assert not os.path.exists(vm["PV_kernel"]) and not os.path.exists(vm["PV_ramdisk"])
    assert leftovers(pair, instance.uuid, baseline) == []


def test_destroy_leaves_a_volume_attached_to_the_vm_alone(xapi_sim, make_pair):
    # A VDI the instance uses but nova-xen-split did not make (a Cinder
    # volume, say) loses its VBD with the VM, and nothing more.
    pair = make_pair(xapi_sim)
    baseline = pair.counts()
    instance = make_instance(objects.Flavor(root_gb=0), config_drive="")
    spawn(pair, instance)
    s = pair.session()
    try:
        x = s.xenapi
        vm = next(ref for ref, rec in x.VM.get_all_records().items()
                  if marks.vm_instance(rec["other_config"]) == instance.uuid)
        volume = x.VDI.create({
            "name_label": "a volume", "name_description": "", "virtual_size": str(8 << 20),
            "SR": x.pool.get_default_SR(x.pool.get_all()[0]), "type": "user",
            "sharable": False, "read_only": False, "other_config": {},
            "xenstore_data": {}, "sm_config": {}, "tags": []})
        x.VBD.create({
            "VM": vm, "VDI": volume, "userdevice": "autodetect", "bootable": False,
            "mode": "RW", "type": "Disk", "empty": False, "other_config": {},
            "qos_algorithm_type": "", "qos_algorithm_params": {}})
        volume_uuid = x.VDI.get_uuid(volume)

        pair.driver.destroy(None, instance)

        assert x.VDI.get_by_uuid(volume_uuid) == volume     # still there
        assert x.VDI.get_VBDs(volume) == []
        assert vm_utils.tagged_vdis(pair.driver.session, instance.uuid) == {}
        x.VDI.destroy(volume)
    finally:
        s.xenapi.session.logout()
    assert pair.counts() == baseline


def test_the_console_log_is_the_running_domains_and_a_halted_vm_has_none(xapi_sim, make_pair):
    from rpc import exceptions

    pair = make_pair(xapi_sim)
    instance = make_instance(objects.Flavor(root_gb=0), config_drive="")
    spawn(pair, instance)
    driver = pair.driver
    first = driver.get_console_output(None, instance)
    driver.reboot(None, instance, [], "HARD")
    second = driver.get_console_output(None, instance)
    assert b"started for VM" in first and b"rebooted for VM" in second
    assert b"rebooted" not in first  # another domain, another log
    driver.power_off(instance)
    with pytest.raises(exceptions.ConsoleLogUnavailable, match="no running VM"):
        driver.get_console_output(None, instance)
    stranger = make_instance()
    with pytest.raises(exceptions.ConsoleLogUnavailable, match=stranger.uuid):
        driver.get_console_output(None, stranger)
    driver.destroy(None, instance)
