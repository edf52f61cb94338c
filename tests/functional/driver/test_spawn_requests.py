"""What a spawn checks before it makes anything, and flat_injected in in_guest mode.

A bad flavor, bad network information or injected files the interface would
refuse are refused before the first agent call: no step runs, so no image is
fetched only to be thrown away. With ``flat_injected`` (in_guest mode), the
network configuration is written into the image's root filesystem; the file
is read back with debugfs and parsed by Debian's ifupdown.
"""

import json
import os
import shutil
import subprocess

import pytest

from nova_xen_split import driver_errors
from nova_xen_split import netinfo
from nova_xen_split import objects
from nova_xen_split import vm_utils
from rpc import exceptions
from tests.conftest import need
from tests.functional.driver.conftest import (TEST_IMAGE, leftovers, make_instance, run,
                                              vdi_path)
from nova_xen_split.xenhost import marks

VIF = {"id": "5b2f1b0c-0d3a-4f3e-8c61-3b7d0f1a2b3c", "address": "fa:16:3e:11:22:33",
       "network": {"id": "n", "meta": {"mtu": 1450}, "subnets": [{
           "cidr": "192.0.2.0/24", "ips": [{"address": "192.0.2.20", "type": "fixed"}],
           "gateway": {"address": "192.0.2.1"}, "dns": [{"address": "192.0.2.53"}],
           "routes": [{"cidr": "10.0.0.0/8", "gateway": {"address": "192.0.2.254"}}]}]}}


def _spawn(pair, instance, network_info, files=()):
    pair.driver.spawn(objects.RequestContext(auth_token="test-token"), instance,
                      objects.ImageMeta(id=TEST_IMAGE, disk_format="raw"), list(files),
                      None, {}, network_info)


@pytest.mark.parametrize("flavor, network_info, files, error, words", [
    (objects.Flavor(swap=-64), [VIF], (), driver_errors.InvalidFlavor, "swap is -64"),
    (objects.Flavor(ephemeral_gb=70000), [VIF], (), driver_errors.InvalidFlavor,
     "ephemeral_gb is 70000"),
    (objects.Flavor(vcpus="two"), [VIF], (), driver_errors.InvalidFlavor,
     "vcpus must be a whole number"),
    (objects.Flavor(), [dict(VIF, address="fa:16:3e:11:22:33\n up reboot")], (),
     driver_errors.InvalidNetworkInfo, "network_info[0].address"),
    (objects.Flavor(), [{"network": {"subnets": [{"cidr": "bad"}]}}], (),
     driver_errors.InvalidNetworkInfo, "subnets[0].cidr"),
    (objects.Flavor(), [VIF], [("etc/relative", b"x")], exceptions.InvalidRequest,
     "files[0]"),
    (objects.Flavor(), [VIF], [("/etc/a", 5)], exceptions.InvalidRequest,
     "injected_files[0]"),
])
def test_a_bad_request_is_refused_before_the_first_step(
        xapi_sim, make_pair, flavor, network_info, files, error, words):
    pair = make_pair(xapi_sim)
    steps = []
    pair.driver.on_step = steps.append
    baseline = pair.counts()
    instance = make_instance(flavor)

    with pytest.raises(error) as err:
        _spawn(pair, instance, network_info, files)

    assert words in str(err.value)
    assert steps == []  # not even the image was fetched
    assert leftovers(pair, instance.uuid, baseline) == []


def _root_partition_file(pair, vdi_uuid, tmp_path, guest_path):
    """The contents of ``guest_path`` in partition 1 of a VDI, read with debugfs."""
    path = vdi_path(pair.sim, vdi_uuid)
    start = int(run(["sfdisk", "--json", path]).split('"start":')[1].split(",")[0])
    loop = run(["losetup", "-r", "-f", "--show", "-o", str(start * 512), path]).strip()
    try:
        return run(["debugfs", "-R", "cat " + guest_path, loop])
    finally:
        subprocess.run(["losetup", "-d", loop], check=True, timeout=30)


def _root_vdi(pair, instance_uuid):
    s = pair.session()
    try:
        for rec in s.xenapi.VDI.get_all_records().values():
            mark = marks.read_vdi(rec["other_config"])
            if mark and (mark.instance_uuid, mark.purpose) == (instance_uuid, "root"):
                return rec["uuid"]
    finally:
        s.xenapi.session.logout()
    raise AssertionError("no root VDI for %s" % instance_uuid)


def test_in_guest_flat_injected_writes_the_network_config_into_the_root_fs(
        xapi_sim_compute, make_pair, tmp_path):
    pair = make_pair(xapi_sim_compute, driver_overrides={("DEFAULT", "flat_injected"): True})
    assert pair.driver.agent_mode == "in_guest"
    baseline = pair.counts()
    steps = []
    pair.driver.on_step = steps.append
    instance = make_instance(objects.Flavor(root_gb=1), config_drive="")

    _spawn(pair, instance, [VIF])

    (step,) = [step for step in steps if step.name == "preconfigure_instance"]
    assert step.detail.startswith(
        "/etc/network/interfaces, /root/.ssh/authorized_keys, /meta.js")
    written = _root_partition_file(pair, _root_vdi(pair, instance.uuid), tmp_path,
                                   "/etc/network/interfaces")
    assert written == netinfo.interfaces(netinfo.parse([VIF]))
    assert _root_partition_file(pair, _root_vdi(pair, instance.uuid), tmp_path,
                                "/etc/motd") == "written before the spawn\n"
    # As Nova's flat_injected: the key and the metadata go in too.
    keys = _root_partition_file(pair, _root_vdi(pair, instance.uuid), tmp_path,
                                "/root/.ssh/authorized_keys")
    assert keys.splitlines()[-1] == instance.key_data
    assert json.loads(_root_partition_file(pair, _root_vdi(pair, instance.uuid), tmp_path,
                                           "/meta.js")) == instance.metadata
    ifup = shutil.which("ifup") or "/usr/sbin/ifup"
    need(os.path.exists(ifup), "ifupdown is not installed (bash .ci/install --tests)")
    (tmp_path / "interfaces").write_text(written)
    (tmp_path / "state").mkdir()
    plan = subprocess.run([ifup, "--no-act", "--verbose", "-i", str(tmp_path / "interfaces"),
                           "--state-dir", str(tmp_path / "state"), "eth0"],
                          capture_output=True, text=True, timeout=30, check=True).stderr
    assert "ip addr add 192.0.2.20/255.255.255.0" in plan
    assert "ip route add 10.0.0.0/8 via 192.0.2.254 dev eth0" in plan

    pair.driver.destroy(None, instance)
    assert leftovers(pair, instance.uuid, baseline) == []


def test_in_guest_flat_injected_boots_a_non_linux_image_untouched(
        xapi_sim_compute, make_pair, image_service, tmp_path):
    image = tmp_path / "vfat.raw"
    run(["mkfs.vfat", "-C", "-n", "WINDOWS", str(image), str(32 * 1024)])
    vfat_image = image_service.add(str(image))
    pair = make_pair(xapi_sim_compute, driver_overrides={("DEFAULT", "flat_injected"): True},
                     image_url=image_service.url)
    steps = []
    pair.driver.on_step = steps.append
    instance = make_instance(objects.Flavor(root_gb=0), config_drive="")

    pair.driver.spawn(objects.RequestContext(auth_token="test-token"), instance,
                      objects.ImageMeta(id=vfat_image, disk_format="raw"), [], None, {},
                      [VIF])

    (step,) = [step for step in steps if step.name == "preconfigure_instance"]
    assert step.detail.endswith("skipped")
    root = vdi_path(pair.sim, _root_vdi(pair, instance.uuid))
    with open(root, "rb") as f, open(image, "rb") as g:
        assert f.read(image.stat().st_size) == g.read()  # not a byte changed
    assert pair.driver.get_info(instance).state == vm_utils.RUNNING  # Nova's rule: it boots
    pair.driver.destroy(None, instance)


def test_flat_injected_request_is_checked_before_the_first_step(xapi_sim_compute, make_pair):
    pair = make_pair(xapi_sim_compute, driver_overrides={("DEFAULT", "flat_injected"): True})
    steps = []
    pair.driver.on_step = steps.append
    baseline = pair.counts()
    instance = make_instance(objects.Flavor(root_gb=1), config_drive="",
                             key_data="ssh-rsa AAAA k1\nssh-rsa BBBB k2")

    with pytest.raises(exceptions.InvalidRequest) as err:
        _spawn(pair, instance, [VIF])

    assert err.value.kwargs["field"] == "ssh_key"
    assert steps == []
    assert leftovers(pair, instance.uuid, baseline) == []


def test_without_flat_injected_the_image_is_not_mounted(xapi_sim_compute, make_pair):
    pair = make_pair(xapi_sim_compute)
    steps = []
    pair.driver.on_step = steps.append
    instance = make_instance(objects.Flavor(root_gb=1), config_drive="")

    _spawn(pair, instance, [VIF])

    assert "preconfigure_instance" not in [step.name for step in steps]
    pair.driver.destroy(None, instance)
