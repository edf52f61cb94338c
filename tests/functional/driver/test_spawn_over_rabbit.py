"""Spawn and destroy through the split: xapi-sim, the agent process, the driver.

Three processes over RabbitMQ at 127.0.0.1:5672, as deployed. The result is
checked on the simulator with the XenAPI SDK and on the VDIs' files with
independent tools (sfdisk, blkid, e2fsck, debugfs, bsdtar).
"""

import json
import os
import subprocess

import pytest

from nova_xen_split import objects
from nova_xen_split import vm_utils
from tests.functional.driver.conftest import (GiB, MiB, TEST_IMAGE_VHD, USER_DATA,
                                              leftovers, make_instance, run, spawn,
                                              vdi_path)
from nova_xen_split.xenhost import marks


def _partition_loop(path, start_sector, sectors):
    """A read-only loop device over one partition of a VDI file (no table parsing)."""
    return run(["losetup", "-r", "-f", "--show", "-o", str(start_sector * 512),
                "--sizelimit", str(sectors * 512), path]).strip()


def _only_partition(path):
    table = json.loads(run(["sfdisk", "--json", path]))["partitiontable"]
    assert table["label"] == "dos"
    (part,) = table["partitions"]
    return part


def _blkid(device, offset=None):
    cmd = ["blkid", "-p", "-o", "export"]
    if offset is not None:
        cmd += ["-O", str(offset)]
    out = run(cmd + [device])
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _disks_by_userdevice(pair, instance_uuid):
    s = pair.session()
    try:
        vm_ref = next(ref for ref, rec in s.xenapi.VM.get_all_records().items()
                      if marks.vm_instance(rec["other_config"]) == instance_uuid)
        vm = s.xenapi.VM.get_record(vm_ref)
        disks = {}
        for vbd_ref in vm["VBDs"]:
            vbd = s.xenapi.VBD.get_record(vbd_ref)
            vdi = s.xenapi.VDI.get_record(vbd["VDI"])
            disks[vbd["userdevice"]] = (vbd, vdi)
        return vm, disks
    finally:
        s.xenapi.session.logout()


def _check_root(pair, vdi):
    """The image's ext4 partition, grown to the end of a 1 GiB disk, data intact."""
    path = vdi_path(pair.sim, vdi["uuid"])
    part = _only_partition(path)
    assert part["start"] == 2048
    assert part["start"] + part["size"] == GiB // 512
    loop = _partition_loop(path, part["start"], part["size"])
    try:
        assert _blkid(loop)["LABEL"] == "demo-root"
        run(["e2fsck", "-fn", loop])
        assert run(["debugfs", "-R", "cat /etc/motd", loop]) == "written before the spawn\n"
        block_count = int(run(["dumpe2fs", "-h", loop]).split("Block count:")[1].split()[0])
        block_size = int(run(["dumpe2fs", "-h", loop]).split("Block size:")[1].split()[0])
        assert block_count * block_size == part["size"] * 512  # the fs grew with it
    finally:
        subprocess.run(["losetup", "-d", loop], check=True, timeout=30)


def _check_generated(pair, vdi, fs_type, label, size_bytes):
    path = vdi_path(pair.sim, vdi["uuid"])
    assert int(vdi["virtual_size"]) == size_bytes
    part = _only_partition(path)
    ids = _blkid(path, offset=part["start"] * 512)
    assert ids["TYPE"] == fs_type and ids["LABEL"] == label
    if fs_type.startswith("ext"):
        loop = _partition_loop(path, part["start"], part["size"])
        try:
            run(["e2fsck", "-fn", loop])
        finally:
            subprocess.run(["losetup", "-d", loop], check=True, timeout=30)


def _check_configdrive(pair, vdi, instance):
    path = vdi_path(pair.sim, vdi["uuid"])
    assert _blkid(path)["LABEL"] == "config-2"
    meta = json.loads(run(["bsdtar", "-xOf", path, "openstack/latest/meta_data.json"]))
    assert meta["uuid"] == instance.uuid and meta["hostname"] == "test-vm"
    assert meta["public_keys"] == {"k1": "ssh-ed25519 AAAAtest k1@test"}
    user_data = subprocess.run(["bsdtar", "-xOf", path, "openstack/latest/user_data"],
                               capture_output=True, check=True, timeout=60).stdout
    assert user_data == USER_DATA
    network = json.loads(run(["bsdtar", "-xOf", path, "openstack/latest/network_data.json"]))
    assert network["networks"][0]["ip_address"] == "192.0.2.20"
    content = run(["bsdtar", "-xOf", path, "openstack/content/0000"])
    assert content == "injected\n"


@pytest.mark.parametrize("compute_vm", [False, True], ids=["independent", "in_guest"])
def test_spawn_makes_a_running_vm_with_every_disk_and_destroy_leaves_nothing(
        compute_vm, loop_devices, make_sim, make_pair, rabbit_url):
    sim = make_sim(compute_vm=compute_vm)
    pair = make_pair(sim, transport_url=rabbit_url)
    assert pair.driver.agent_mode == ("in_guest" if compute_vm else "independent")
    baseline = pair.counts()
    instance = make_instance()

    spawn(pair, instance)

    vm, disks = _disks_by_userdevice(pair, instance.uuid)
    assert vm["power_state"] == "Running" and vm["name_label"] == instance.name
    assert int(vm["memory_static_max"]) == 256 * MiB and vm["VCPUs_max"] == "2"
    assert sorted(disks) == ["0", "1", "2", "3"]
    root_vbd, root_vdi = disks["0"]
    assert root_vbd["bootable"] and root_vbd["mode"] == "RW"
    assert int(root_vdi["virtual_size"]) == GiB
    _check_root(pair, root_vdi)
    _check_generated(pair, disks["1"][1], "swap", "swap", 64 * MiB)
    _check_generated(pair, disks["2"][1], "ext4", "ephemeral0", GiB)
    cd_vbd, cd_vdi = disks["3"]
    assert cd_vbd["mode"] == "RO" and not cd_vbd["bootable"]
    _check_configdrive(pair, cd_vdi, instance)
    assert pair.driver.list_instances() == [instance.name]
    assert pair.driver.get_info(instance).state == vm_utils.RUNNING

    pair.driver.destroy(None, instance)

    assert leftovers(pair, instance.uuid, baseline) == []
    assert pair.driver.list_instances() == []
    for _vbd, vdi in disks.values():
        assert not os.path.exists(os.path.join(pair.sim.state_dir, "sr", vdi["SR"], vdi["uuid"]))


def test_two_hypervisors_on_one_broker_each_get_only_their_own_disks(
        loop_devices, make_sim, make_pair, rabbit_url):
    sim_a, sim_b = make_sim(), make_sim()
    pair_a = make_pair(sim_a, transport_url=rabbit_url)
    pair_b = make_pair(sim_b, transport_url=rabbit_url)
    baseline_a, baseline_b = pair_a.counts(), pair_b.counts()
    inst_a, inst_b = make_instance(hostname="vm-a"), make_instance(hostname="vm-b")

    spawn(pair_a, inst_a)
    spawn(pair_b, inst_b)

    for pair, mine, other in ((pair_a, inst_a, inst_b), (pair_b, inst_b, inst_a)):
        assert pair.driver.list_instances() == [mine.name]
        assert leftovers(pair, other.uuid, pair.counts()) == []  # nothing of the other
        s = pair.session()
        tagged = {marks.vdi_instance(rec["other_config"])
                  for rec in s.xenapi.VDI.get_all_records().values()}
        s.xenapi.session.logout()
        assert mine.uuid in tagged and other.uuid not in tagged
    pair_a.driver.destroy(None, inst_a)
    pair_b.driver.destroy(None, inst_b)
    assert leftovers(pair_a, inst_a.uuid, baseline_a) == []
    assert leftovers(pair_b, inst_b.uuid, baseline_b) == []


@pytest.mark.parametrize("compute_vm", [False, True], ids=["independent", "in_guest"])
def test_a_vhd_image_boots_through_the_dom0_image_plugin_with_its_data(
        compute_vm, loop_devices, make_sim, make_pair):
    sim = make_sim(compute_vm=compute_vm)
    pair = make_pair(sim)  # the local socket: the transport is not what is tested here
    baseline = pair.counts()
    instance = make_instance(objects.Flavor(root_gb=1), config_drive="")
    meta = objects.ImageMeta(id=TEST_IMAGE_VHD, disk_format="vhd", size=64 * MiB)

    spawn(pair, instance, meta)

    vm, disks = _disks_by_userdevice(pair, instance.uuid)
    assert vm["power_state"] == "Running" and vm["PV_bootloader"] == "pygrub"
    assert sorted(disks) == ["0"]
    _check_root(pair, disks["0"][1])
    pair.driver.destroy(None, instance)
    assert leftovers(pair, instance.uuid, baseline) == []
