"""Images from a real Glance, snapshots back into it, in both agent modes.

Glance runs as deployed (nova_xen_split/cmd/glance_server.py: its API application under
gunicorn, a thin-provisioned file store); the driver/agent pair talks to it
as to any Glance. Images are uploaded with fixed ids once per run. What
lands is checked with independent tools (tar, qemu-img, debugfs).
"""

import json
import os
import tarfile
import uuid

import pytest

from nova_xen_split import objects
from nova_xen_split.xenhost import marks
from tests.functional.agent.disktools import ext_write
from tests.functional.driver.conftest import (
    IMAGE_MB, RAW_IMAGE_ID, VHD_IMAGE_ID, MiB, leftovers, make_instance, run, spawn,
    vdi_path)

MODES = ("independent", "in_guest")


@pytest.fixture(params=MODES)
def mode_sim(request, loop_devices, make_sim):
    """A simulator with (in_guest) or without (independent) a compute VM."""
    return make_sim(compute_vm=request.param == "in_guest")


def _meta(image_id, disk_format, size):
    return objects.ImageMeta(id=image_id, disk_format=disk_format, size=size)


def _vdi_of(pair, instance_uuid, purpose="root"):
    s = pair.session()
    try:
        for rec in s.xenapi.VDI.get_all_records().values():
            mark = marks.read_vdi(rec["other_config"])
            if mark and (mark.instance_uuid, mark.purpose) == (instance_uuid, purpose):
                return rec["uuid"]
    finally:
        s.xenapi.session.logout()
    return None


def _partition_offset(path):
    table = json.loads(run(["sfdisk", "--json", path]))["partitiontable"]
    return int(table["partitions"][0]["start"]) * 512


def _guest_file(pair, vdi_uuid, guest_path):
    path = vdi_path(pair.sim, vdi_uuid)
    return run(["debugfs", "-R", "cat " + guest_path,
                "%s?offset=%d" % (path, _partition_offset(path))])


def _spawn_from(pair, image_id, disk_format, size):
    instance = make_instance(objects.Flavor(root_gb=0), config_drive="",
                             image_ref=image_id)
    spawn(pair, instance, _meta(image_id, disk_format, size), files=())
    return instance


def test_raw_and_vhd_images_from_glance_boot(mode_sim, make_pair, glance_images):
    pair = make_pair(mode_sim, image_url=glance_images.url)
    baseline = pair.counts()
    for image_id, disk_format in ((RAW_IMAGE_ID, "raw"), (VHD_IMAGE_ID, "vhd")):
        size = glance_images.image(image_id)["size"]
        instance = _spawn_from(pair, image_id, disk_format, size)
        root = _vdi_of(pair, instance.uuid)
        assert _guest_file(pair, root, "/etc/motd") == "written before the spawn\n"
        pair.driver.destroy(None, instance)
        assert leftovers(pair, instance.uuid, baseline) == []


def test_a_raw_image_read_from_glances_store_is_checked_against_its_multihash(
        mode_sim, make_pair, glance_images, tmp_path):
    # [glance] file_url_mounts: the image is read from Glance's own file,
    # and its SHA-512 (os_hash_value) still checked.
    pair = make_pair(mode_sim, image_url=glance_images.url, glance_options={
        "file_url_mounts": "%s:%s" % (glance_images.images_dir, glance_images.images_dir)})
    instance = _spawn_from(pair, RAW_IMAGE_ID, "raw", IMAGE_MB * MiB)
    assert "reading %d bytes from %s" % (IMAGE_MB * MiB, glance_images.images_dir) \
        in pair.agent.output_tail(200)
    pair.driver.destroy(None, instance)
    # A store file that no longer matches its record's multihash is refused.
    record = glance_images.create_image(str(uuid.uuid4()), disk_format="raw",
                                        container_format="bare")
    glance_images.upload(record["id"], glance_images_file(glance_images, RAW_IMAGE_ID))
    stored = os.path.join(glance_images.images_dir, record["id"])
    with open(stored, "r+b") as f:
        f.seek(40 * MiB)
        f.write(b"tampered")
    baseline = pair.counts()
    bad = make_instance(objects.Flavor(root_gb=0), config_drive="", image_ref=record["id"])
    with pytest.raises(Exception) as err:
        spawn(pair, bad, _meta(record["id"], "raw", IMAGE_MB * MiB), files=())
    assert type(err.value).__name__ == "ImageFetchFailed"
    assert "SHA512" in str(err.value)
    assert leftovers(pair, bad.uuid, baseline) == []
    glance_images.delete(record["id"])


def glance_images_file(glance, image_id):
    return os.path.join(glance.images_dir, image_id)


class TaskStates:
    """Nova's update_task_state callback, recording what it is told."""

    def __init__(self):
        self.calls = []

    def __call__(self, task_state, expected_state=None):
        self.calls.append((task_state, expected_state))


def test_snapshot_goes_to_glance_as_a_vhd_tarball_that_boots_again(
        mode_sim, make_pair, glance_images, tmp_path):
    pair = make_pair(mode_sim, image_url=glance_images.url)
    baseline = pair.counts()
    first = _spawn_from(pair, RAW_IMAGE_ID, "raw", IMAGE_MB * MiB)
    root = _vdi_of(pair, first.uuid)
    path = vdi_path(pair.sim, root)
    ext_write(path, _partition_offset(path), "/etc/before-snapshot",
              b"written into the first instance\n", tmp_path)
    # What Nova's API does for createImage: a queued image with the
    # instance's formats, then the driver's snapshot.
    image_id = str(uuid.uuid4())
    glance_images.create_image(image_id, name="snap", disk_format="raw",
                               container_format="bare")
    vdis_before = pair.counts()["VDI"]
    states = TaskStates()

    pair.driver.snapshot(objects.RequestContext(auth_token="tok"), first, image_id, states)

    assert states.calls == [("image_pending_upload", None),
                            ("image_uploading", "image_pending_upload")]
    record = glance_images.image(image_id)
    assert (record["status"], record["disk_format"], record["container_format"]) == (
        "active", "vhd", "ovf")
    assert pair.counts()["VDI"] == vdis_before      # the snapshot VDI is gone
    assert _vdi_of(pair, first.uuid, marks.SNAPSHOT) is None
    tarball = glance_images.download(image_id, str(tmp_path / "snap.tar"))
    with tarfile.open(tarball) as tar:
        assert tar.getnames() == ["0.vhd"]
        tar.extract("0.vhd", str(tmp_path))
    info = json.loads(run(["qemu-img", "info", "--output=json", "-f", "vpc",
                           str(tmp_path / "0.vhd")]))
    assert info["virtual-size"] == os.path.getsize(path)
    # qemu-img reads the VHD as the first instance's disk, byte for byte.
    run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", str(tmp_path / "0.vhd"),
         str(tmp_path / "snap.raw")])
    run(["cmp", str(tmp_path / "snap.raw"), path])

    second = _spawn_from(pair, image_id, "vhd", record["size"])
    assert _guest_file(pair, _vdi_of(pair, second.uuid), "/etc/before-snapshot") == \
        "written into the first instance\n"
    for instance in (first, second):
        pair.driver.destroy(None, instance)
    for instance in (first, second):
        assert leftovers(pair, instance.uuid, baseline) == []
    glance_images.delete(image_id)


def test_a_snapshot_whose_upload_fails_leaves_no_image_and_no_vdi(
        xapi_sim, make_pair, glance_images):
    pair = make_pair(xapi_sim, image_url=glance_images.url)
    first = _spawn_from(pair, RAW_IMAGE_ID, "raw", IMAGE_MB * MiB)
    image_id = str(uuid.uuid4())
    glance_images.create_image(image_id, name="snap", disk_format="raw",
                               container_format="bare")
    counts = pair.counts()
    s = pair.session()
    try:
        # XAPI's export breaks once Glance has started receiving the tarball.
        s.xenapi.debug.inject_fault("export_raw_vdi", "VDI_IO_ERROR", "1", "0")
    finally:
        s.xenapi.session.logout()

    with pytest.raises(Exception) as err:
        pair.driver.snapshot(objects.RequestContext(), first, image_id, TaskStates())

    assert type(err.value).__name__ in ("XapiFailure", "ImageUploadFailed"), err.value
    assert glance_images.image(image_id) is None           # deleted, not left saving
    assert [i["id"] for i in glance_images.images() if i["status"] != "active"] == []
    assert pair.counts() == counts                          # no snapshot VDI
    pair.driver.destroy(None, first)


def test_a_snapshot_into_an_image_that_is_not_queued_changes_nothing(
        xapi_sim, make_pair, glance_images):
    pair = make_pair(xapi_sim, image_url=glance_images.url)
    first = _spawn_from(pair, RAW_IMAGE_ID, "raw", IMAGE_MB * MiB)
    counts = pair.counts()
    with pytest.raises(Exception) as err:
        pair.driver.snapshot(objects.RequestContext(), first, RAW_IMAGE_ID, TaskStates())
    assert type(err.value).__name__ == "ImageUploadFailed"
    assert "active, not queued" in str(err.value)
    assert glance_images.image(RAW_IMAGE_ID)["status"] == "active"  # not deleted
    assert pair.counts() == counts
    pair.driver.destroy(None, first)


def test_glance_keeps_a_raw_image_sparse(glance_images):
    # [fs] filesystem_thin_provisioning: the holes of the 64 MiB image stay holes.
    stored = glance_images_file(glance_images, RAW_IMAGE_ID)
    assert os.path.getsize(stored) == IMAGE_MB * MiB
    assert os.stat(stored).st_blocks * 512 < IMAGE_MB * MiB // 2
