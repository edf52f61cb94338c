"""The driver picks the boot mode as Nova's determine_vm_mode did, and the
host (xapi-sim) checks that the guest can boot in it (dom0/simulator/boot.py)."""

import pytest

from nova_xen_split import objects
from nova_xen_split.cmd import demo_env
from rpc import exceptions
from tests.functional.driver.conftest import (
    IMAGE_MB, TEST_IMAGE, MiB, leftovers, make_instance, spawn)
from nova_xen_split.xenhost import marks


# An image with no bootloader config, served by the stand-in.
NO_GRUB = "7e57da7a-0000-4000-8000-00000000b007"


def _vm_record(pair, instance):
    s = pair.session()
    try:
        return next(rec for rec in s.xenapi.VM.get_all_records().values()
                    if marks.vm_instance(rec["other_config"]) == instance.uuid)
    finally:
        s.xenapi.session.logout()


def _meta(image_id, **properties):
    return objects.ImageMeta(id=image_id, disk_format="raw", size=IMAGE_MB * MiB,
                             properties=objects.ImageMetaProps(properties))


@pytest.fixture(scope="module")
def image_without_bootloader(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("images") / "no-grub.raw")
    demo_env.make_disk_image(path, IMAGE_MB, bootloader=False)
    return path


@pytest.mark.parametrize("properties,pv", [
    ({}, False), ({"os_type": "linux"}, True), ({"vm_mode": "xen"}, True),
    ({"os_type": "windows"}, False)])
def test_the_boot_mode_follows_the_images_properties_and_the_guest_runs(
        xapi_sim, make_pair, properties, pv):
    pair = make_pair(xapi_sim)
    instance = make_instance(config_drive="")
    spawn(pair, instance, meta=_meta(TEST_IMAGE, **properties))

    record = _vm_record(pair, instance)
    assert record["power_state"] == "Running"
    if pv:
        assert (record["PV_bootloader"], record["domain_type"]) == ("pygrub", "pv")
    else:
        assert record["HVM_boot_policy"] == "BIOS order"
        assert record["domain_type"] == "hvm"
    pair.driver.destroy(None, instance)


def test_a_pv_image_without_a_bootloader_config_fails_to_start_and_leaves_nothing(
        xapi_sim, make_pair, image_service, image_without_bootloader):
    image_service.add(image_without_bootloader, NO_GRUB)
    pair = make_pair(xapi_sim, image_url=image_service.url)
    baseline = pair.counts()
    instance = make_instance(config_drive="", image_ref=NO_GRUB)

    with pytest.raises(exceptions.XapiFailure) as failed:
        spawn(pair, instance, meta=_meta(NO_GRUB, os_type="linux"))

    assert failed.value.details[0] == "BOOTLOADER_FAILED"
    assert failed.value.details[2] == "Unable to find partition containing kernel"
    assert leftovers(pair, instance.uuid, baseline) == []


def test_the_same_image_boots_as_hvm(xapi_sim, make_pair, image_service,
                                     image_without_bootloader):
    # Nova's default for raw data: HVM, whose BIOS needs no config file.
    image_service.add(image_without_bootloader, NO_GRUB)
    pair = make_pair(xapi_sim, image_url=image_service.url)
    instance = make_instance(config_drive="", image_ref=NO_GRUB)
    spawn(pair, instance, meta=_meta(NO_GRUB))
    assert _vm_record(pair, instance)["power_state"] == "Running"
    pair.driver.destroy(None, instance)
