"""Spawns on both kinds of local SR (xapi-sim --sr-type, dom0/simulator/storage.py).

On an LVM SR there is no SR directory for the dom0 image plugin to write
VHD files into: the agent imports a VHD image with ``PUT
/import_raw_vdi?format=vhd`` instead, in both modes.
"""

import tarfile

import pytest

from nova_xen_split import objects
from rpc import exceptions
from tests.functional.driver.conftest import (
    IMAGE_MB, TEST_IMAGE, TEST_IMAGE_VHD, MiB, leftovers, make_instance, spawn)
from nova_xen_split.xenhost import marks

# A VHD chain image (base and child), served by the stand-in.
CHAIN = "7e57da7a-0000-4000-8000-00000000c4a1"

CASES = [(sr, mode, fmt) for sr in ("ext", "lvm") for mode in ("independent", "in_guest")
         for fmt in ("raw", "vhd")]


def _meta(fmt):
    if fmt == "vhd":
        return objects.ImageMeta(id=TEST_IMAGE_VHD, disk_format="vhd",
                                 container_format="ovf", size=IMAGE_MB * MiB)
    return objects.ImageMeta(id=TEST_IMAGE, disk_format="raw", size=IMAGE_MB * MiB)


def _instance_disks(pair, instance):
    s = pair.session()
    try:
        vm = next(rec for rec in s.xenapi.VM.get_all_records().values()
                  if marks.vm_instance(rec["other_config"]) == instance.uuid)
        disks = {}
        for vbd in vm["VBDs"]:
            vdi = s.xenapi.VBD.get_VDI(vbd)
            disks[s.xenapi.VBD.get_userdevice(vbd)] = s.xenapi.VDI.get_record(vdi)
        return vm, disks
    finally:
        s.xenapi.session.logout()


@pytest.mark.parametrize("sr_type,mode,fmt", CASES,
                         ids=["-".join(case) for case in CASES])
def test_spawn_boots_and_destroy_leaves_nothing_on_both_sr_types(
        loop_devices, make_sim, make_pair, sr_type, mode, fmt):
    sim = make_sim(compute_vm=mode == "in_guest", extra_args=["--sr-type", sr_type])
    pair = make_pair(sim)
    assert pair.driver.agent_mode == mode
    baseline = pair.counts()
    image_ref = TEST_IMAGE_VHD if fmt == "vhd" else TEST_IMAGE
    instance = make_instance(image_ref=image_ref)

    spawn(pair, instance, meta=_meta(fmt))

    vm, disks = _instance_disks(pair, instance)
    assert vm["power_state"] == "Running"
    assert sorted(disks) == ["0", "1", "2", "3"]
    for vdi in disks.values():
        size = int(vdi["virtual_size"])
        physical = int(vdi["physical_utilisation"])
        if sr_type == "lvm":  # 2 MiB steps, thick volumes
            assert size % (2 * MiB) == 0 and physical > size
        else:
            assert physical < size  # sparse files
    assert int(disks["0"]["virtual_size"]) >= 1024 * MiB  # grown to the flavor's root

    pair.driver.destroy(None, instance)
    assert leftovers(pair, instance.uuid, baseline) == []


def test_a_vhd_chain_on_an_lvm_sr_is_refused_and_leaves_nothing(
        loop_devices, make_sim, make_pair, image_service, tmp_path):
    # Glance's XenServer layout: 0.vhd the leaf, 1.vhd its parent.
    from tests.functional.plugins import vhdchain
    size = 4 * MiB
    base, child = bytes(size), b"\x01" * MiB + bytes(size - MiB)
    (tmp_path / "base.raw").write_bytes(base)
    vhdchain.make_base(str(tmp_path / "base.raw"), str(tmp_path / "1.vhd"))
    vhdchain.make_child(base, child, str(tmp_path / "1.vhd"), "1.vhd", str(tmp_path / "0.vhd"))
    with tarfile.open(tmp_path / "chain.tar", "w") as tar:
        for name in ("0.vhd", "1.vhd"):
            tar.add(tmp_path / name, arcname=name)
    image_service.add(str(tmp_path / "chain.tar"), CHAIN, disk_format="vhd",
                      container_format="ovf")
    pair = make_pair(make_sim(extra_args=["--sr-type", "lvm"]), image_url=image_service.url)
    baseline = pair.counts()
    instance = make_instance(image_ref=CHAIN, config_drive="")
    meta = objects.ImageMeta(id=CHAIN, disk_format="vhd", container_format="ovf",
                             size=size)

    with pytest.raises(exceptions.ImageFetchFailed) as refused:
        spawn(pair, instance, meta=meta)

    assert "differencing VHD" in str(refused.value)
    assert leftovers(pair, instance.uuid, baseline) == []


@pytest.mark.parametrize("mode", ["independent", "in_guest"])
def test_a_vhd_image_on_an_lvm_sr_boots_uncached_with_the_cache_on(
        loop_devices, make_sim, make_pair, mode):
    # The cache VDI of a VHD image is the chain dom0 lands in the SR's
    # directory; an LVM SR has none, so the image is imported for the
    # instance alone instead of failing the spawn.
    sim = make_sim(compute_vm=mode == "in_guest", extra_args=["--sr-type", "lvm"])
    pair = make_pair(sim, cache_images="all")
    baseline = pair.counts()
    instance = make_instance(image_ref=TEST_IMAGE_VHD, config_drive="")

    spawn(pair, instance, meta=_meta("vhd"))
    assert pair.driver.cache_image(objects.RequestContext(), TEST_IMAGE_VHD) is False

    vm, disks = _instance_disks(pair, instance)
    assert vm["power_state"] == "Running"
    assert marks.cloned_from(disks["0"]["other_config"]) is None
    s = pair.session()
    try:
        cached = [rec for rec in s.xenapi.VDI.get_all_records().values()
                  if marks.read_cache(rec["other_config"]) is not None]
    finally:
        s.xenapi.session.logout()
    assert cached == []
    pair.driver.destroy(None, instance)
    assert leftovers(pair, instance.uuid, baseline) == []
