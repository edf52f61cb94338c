"""Nova-shaped inputs and the XAPI records the driver makes from them."""

from nova_xen_split import objects
from nova_xen_split import vm_utils
from nova_xen_split.xenhost import marks


def test_dicts_become_nova_shaped_objects():
    instance = objects.instance_from({
        "uuid": "6f1d3c2e-8a4b-4c1d-9e2f-0a1b2c3d4e5f", "hostname": "h",
        "flavor": {"memory_mb": 2048, "vcpus": 2, "root_gb": 20, "ephemeral_gb": 5,
                   "swap": 512}})
    assert instance.flavor.root_gb == 20 and instance.flavor.swap == 512
    assert instance.name == "instance-6f1d3c2e"
    image = objects.image_meta_from({"id": "img", "disk_format": "vhd",
                                     "properties": {"vm_mode": "hvm"}})
    assert image.disk_format == "vhd" and image.properties.get("vm_mode") == "hvm"


def test_vm_record_carries_nova_uuid_memory_and_vcpus_as_xapi_strings():
    instance = objects.Instance(flavor=objects.Flavor(memory_mb=1024, vcpus=4))
    record = vm_utils.vm_record(instance, instance.flavor, "hvm")
    assert record["name_label"] == instance.name
    assert record["other_config"] == marks.vm_marks(instance.uuid)
    assert marks.vm_instance(record["other_config"]) == instance.uuid
    assert record["memory_static_max"] == record["memory_target"] == str(1024 * 1024 * 1024)
    assert record["VCPUs_max"] == record["VCPUs_at_startup"] == "4"
    assert record["HVM_boot_policy"] == "BIOS order" and record["PV_bootloader"] == ""


def test_pv_record_boots_with_pygrub_and_no_hvm_policy():
    instance = objects.Instance()
    record = vm_utils.vm_record(instance, instance.flavor, "xen")
    assert record["PV_bootloader"] == "pygrub" and record["HVM_boot_policy"] == ""


def test_vm_mode_follows_vm_mode_then_os_type_then_the_disk_format():
    # Nova's xenapi vm_utils.determine_vm_mode, with VMMode.canonicalize.
    def mode(fmt, **props):
        return vm_utils.vm_mode_for(objects.ImageMeta(
            disk_format=fmt, properties=objects.ImageMetaProps(props)))
    assert mode("vhd") == "xen"
    assert mode("ami") == "xen"
    assert mode("raw") == "hvm"
    assert mode("raw", vm_mode="xen") == "xen"
    assert mode("raw", vm_mode="pv") == "xen"
    assert mode("vhd", vm_mode="hvm") == "hvm"
    assert mode("vhd", vm_mode="hv") == "hvm"
    assert mode("raw", os_type="linux") == "xen"
    assert mode("vhd", os_type="windows") == "hvm"
    assert mode("vhd", vm_mode="xen", os_type="windows") == "xen"
    assert mode("raw", os_type="freebsd") == "hvm"
