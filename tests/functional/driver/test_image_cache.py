"""The image cache, end to end: a driver, its agent process and a simulator
whose SR is an XFS with reflink (a clone shares its parent's blocks, as a
VHD child does), in both modes. Downloads are counted at the image service."""

import functools
import hashlib
import os
import signal
import threading
import time
import types

import pytest

from nova_xen_split import objects
from nova_xen_split.cmd import demo_env
from nova_xen_split.xenhost import marks
from tests.functional.driver.conftest import (
    IMAGE_MB, TEST_IMAGE, TEST_IMAGE_VHD, MiB, leftovers, make_instance, spawn, vdi_path,
    wait_for_agent)

# Images added to the stand-in by single tests.
CACHED_IMAGE = "7e57da7a-0000-4000-8000-00000000cac1"
OTHER_IMAGE = "7e57da7a-0000-4000-8000-00000000cac2"

MODES = [pytest.param(False, id="independent"), pytest.param(True, id="in_guest")]


@pytest.fixture
def make_pair(make_pair, image_service):
    """Pairs reading the stand-in image service, which counts downloads."""
    return functools.partial(make_pair, image_url=image_service.url)


def small_instance(**kwargs):
    """Root as big as the image (no grow), no other disk, no config drive."""
    return make_instance(objects.Flavor(name="t.small", memory_mb=256, vcpus=1, root_gb=0),
                         config_drive="", **kwargs)


def downloads(image_service, image_id):
    return sum(1 for found, _token in image_service.downloads if found == image_id)


def cache_vdis(pair, image_id=None):
    """``{uuid: CacheMark}`` of the image cache VDIs on the pair's hypervisor."""
    s = pair.session()
    try:
        found = {}
        for rec in s.xenapi.VDI.get_all_records().values():
            mark = marks.read_cache(rec["other_config"])
            if mark and (image_id is None or mark.image_id == image_id):
                found[rec["uuid"]] = mark
        return found
    finally:
        s.xenapi.session.logout()


def root_record(pair, instance_uuid):
    s = pair.session()
    try:
        for rec in s.xenapi.VDI.get_all_records().values():
            mark = marks.read_vdi(rec["other_config"])
            if mark and mark.instance_uuid == instance_uuid and mark.purpose == "root":
                return rec
    finally:
        s.xenapi.session.logout()
    raise AssertionError("instance %s has no root VDI" % instance_uuid)


def digest(path, size_bytes=IMAGE_MB * MiB):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(size_bytes)).hexdigest()


@pytest.mark.parametrize("compute_vm", MODES)
def test_two_instances_of_one_image_are_clones_of_one_cache_vdi_and_one_download(
        compute_vm, make_xfs_sim, make_pair, image_service, demo_image):
    sim = make_xfs_sim(compute_vm=compute_vm)
    pair = make_pair(sim, cache_images="all")
    first, second = small_instance(), small_instance()

    spawn(pair, first)
    spawn(pair, second)

    assert downloads(image_service, TEST_IMAGE) == 1
    (cache_uuid, mark), = cache_vdis(pair, TEST_IMAGE).items()
    assert mark.state == marks.READY
    assert mark.checksum == "sha512:" + image_service.multihash_of(TEST_IMAGE)[1]
    roots = [root_record(pair, inst.uuid) for inst in (first, second)]
    assert [marks.cloned_from(r["other_config"]) for r in roots] == [cache_uuid] * 2
    # A fresh clone owns next to no blocks: its data is its parent's.
    assert all(int(r["physical_utilisation"]) < MiB for r in roots)
    image = digest(demo_image)
    paths = [vdi_path(sim, r["uuid"]) for r in roots]
    assert [digest(p) for p in paths] == [image, image]

    # What the first guest writes, only the first guest sees.
    with open(paths[0], "r+b") as f:
        f.seek(8 * MiB)
        f.write(b"written by the first guest" * 1000)
    assert digest(paths[0]) != image
    assert digest(paths[1]) == image
    assert digest(vdi_path(sim, cache_uuid)) == image

    baseline = pair.counts()
    pair.driver.destroy(None, first)
    pair.driver.destroy(None, second)
    assert list(cache_vdis(pair)) == [cache_uuid]  # the cache stays for the next spawn
    assert pair.counts()["VDI"] == baseline["VDI"] - 2


@pytest.mark.parametrize("compute_vm", MODES)
def test_a_cloned_root_grows_to_the_flavor_and_its_image_stays_as_it_was(
        compute_vm, make_xfs_sim, make_pair, image_service, demo_image):
    pair = make_pair(make_xfs_sim(compute_vm=compute_vm), cache_images="all")
    instance = make_instance(objects.Flavor(name="t.grow", memory_mb=256, vcpus=1,
                                            root_gb=1), config_drive="")

    spawn(pair, instance)

    root = root_record(pair, instance.uuid)
    assert int(root["virtual_size"]) == 1 << 30
    (cache_uuid, _mark), = cache_vdis(pair, TEST_IMAGE).items()
    cache_path = vdi_path(pair.sim, cache_uuid)
    assert os.path.getsize(cache_path) == IMAGE_MB * MiB
    assert digest(cache_path) == digest(demo_image)
    pair.driver.destroy(None, instance)


def test_vhd_images_are_cached_too(make_xfs_sim, make_pair, image_service):
    pair = make_pair(make_xfs_sim(), cache_images="all")
    meta = objects.ImageMeta(id=TEST_IMAGE_VHD, disk_format="vhd", size=IMAGE_MB * MiB)
    first, second = small_instance(), small_instance()

    spawn(pair, first, meta)
    spawn(pair, second, meta)

    assert downloads(image_service, TEST_IMAGE_VHD) == 1
    (cache_uuid, _mark), = cache_vdis(pair, TEST_IMAGE_VHD).items()
    assert {marks.cloned_from(root_record(pair, i.uuid)["other_config"])
            for i in (first, second)} == {cache_uuid}
    pair.driver.destroy(None, first)
    pair.driver.destroy(None, second)


@pytest.mark.parametrize("compute_vm", MODES)
def test_cache_images_none_downloads_every_time_and_keeps_nothing(
        compute_vm, make_xfs_sim, make_pair, image_service):
    pair = make_pair(make_xfs_sim(compute_vm=compute_vm), cache_images="none")
    baseline = pair.counts()
    first, second = small_instance(), small_instance()

    spawn(pair, first)
    spawn(pair, second)

    assert downloads(image_service, TEST_IMAGE) == 2
    assert cache_vdis(pair) == {}
    pair.driver.destroy(None, first)
    pair.driver.destroy(None, second)
    assert leftovers(pair, first.uuid, baseline) == []


def test_cache_images_some_caches_only_images_with_cache_in_nova(
        make_xfs_sim, make_pair, image_service, demo_image):
    image_service.add(demo_image, CACHED_IMAGE, properties={"cache_in_nova": "true"})
    pair = make_pair(make_xfs_sim(), cache_images="some")
    meta = objects.ImageMeta(id=CACHED_IMAGE, disk_format="raw", size=IMAGE_MB * MiB)
    instances = [small_instance() for _ in range(4)]

    spawn(pair, instances[0])
    spawn(pair, instances[1])
    spawn(pair, instances[2], meta)
    spawn(pair, instances[3], meta)

    assert downloads(image_service, TEST_IMAGE) == 2
    assert downloads(image_service, CACHED_IMAGE) == 1
    assert [m.image_id for m in cache_vdis(pair).values()] == [CACHED_IMAGE]
    for instance in instances:
        pair.driver.destroy(None, instance)


@pytest.mark.parametrize("compute_vm", MODES)
def test_manage_image_cache_removes_an_unused_old_cache_vdi_and_keeps_a_used_one(
        compute_vm, make_xfs_sim, make_pair, image_service, demo_image):
    image_service.add(demo_image, OTHER_IMAGE)
    pair = make_pair(make_xfs_sim(compute_vm=compute_vm), cache_images="all")
    kept, gone = small_instance(), small_instance()
    spawn(pair, kept)
    spawn(pair, gone, objects.ImageMeta(id=OTHER_IMAGE, disk_format="raw",
                                         size=IMAGE_MB * MiB))
    pair.driver.destroy(None, gone)
    used = list(cache_vdis(pair, TEST_IMAGE))
    conf = pair.driver._conf

    # Young enough: nothing goes.
    conf.set_override("remove_unused_original_minimum_age_seconds", 3600,
                      group="image_cache")
    assert pair.driver.manage_image_cache(None, []) == {
        "removed": 0, "kept_in_use": 1, "kept_recent": 1}
    # Told not to remove anything: nothing goes.
    conf.set_override("remove_unused_original_minimum_age_seconds", 0, group="image_cache")
    conf.set_override("remove_unused_base_images", False, group="image_cache")
    assert pair.driver.manage_image_cache(None, []) is None
    assert len(cache_vdis(pair)) == 2
    # Old enough and unused: the other image's cache VDI goes.
    conf.set_override("remove_unused_base_images", True, group="image_cache")
    assert pair.driver.manage_image_cache(None, [])["removed"] == 1
    assert list(cache_vdis(pair)) == used
    pair.driver.destroy(None, kept)


def test_cache_image_fills_the_cache_once_and_the_spawn_downloads_nothing(
        make_xfs_sim, make_pair, image_service):
    pair = make_pair(make_xfs_sim(), cache_images="all")
    context = objects.RequestContext(auth_token="test-token")

    assert pair.driver.cache_image(context, TEST_IMAGE) is True
    assert pair.driver.cache_image(context, TEST_IMAGE) is False
    instance = small_instance()
    spawn(pair, instance)

    assert downloads(image_service, TEST_IMAGE) == 1
    pair.driver.destroy(None, instance)


@pytest.mark.parametrize("compute_vm", MODES)
def test_a_crash_while_filling_leaves_no_cache_vdi_and_the_next_spawn_succeeds(
        compute_vm, make_xfs_sim, make_pair, image_service):
    pair = make_pair(make_xfs_sim(compute_vm=compute_vm), cache_images="all")
    image_service.delay = 0.05  # seconds per MiB: the fill takes about 3 s
    instance = small_instance()
    failed = []
    spawner = threading.Thread(target=lambda: _spawn_expecting_failure(pair, instance,
                                                                       failed))
    spawner.start()
    deadline = time.monotonic() + 60
    while not any(m.state == marks.FILLING for m in cache_vdis(pair).values()):
        assert time.monotonic() < deadline, "no cache VDI began filling"
        time.sleep(0.05)

    pair.agent.proc.send_signal(signal.SIGKILL)  # the agent dies mid-fill
    pair.agent.proc.wait(30)
    spawner.join(120)
    assert failed, "the spawn went through although its agent was killed"
    assert [m.state for m in cache_vdis(pair).values()] == [marks.FILLING]

    image_service.delay = 0.0
    pair.agent = demo_env.Agent(pair.config_file, pair.agent.log_path).start()
    wait_for_agent(pair)  # its startup cleanup ran before it answered
    assert cache_vdis(pair) == {}
    s = pair.session()
    try:
        sr_other = [s.xenapi.SR.get_other_config(sr) for sr in s.xenapi.SR.get_all()]
    finally:
        s.xenapi.session.logout()
    assert not [entry for other in sr_other for entry in marks.fillings(other)]

    again = small_instance()
    spawn(pair, again)
    assert [m.state for m in cache_vdis(pair).values()] == [marks.READY]
    pair.driver.destroy(None, again)


def _spawn_expecting_failure(pair, instance, failed):
    try:
        spawn(pair, instance)
    except Exception as e:  # noqa: BLE001 -- any error of the dead agent's call
        failed.append(e)


@pytest.mark.parametrize("compute_vm", MODES)
def test_eight_concurrent_spawns_of_an_uncached_image_download_it_once(
        compute_vm, make_xfs_sim, make_pair, image_service):
    pair = make_pair(make_xfs_sim(compute_vm=compute_vm), cache_images="all")
    image_service.delay = 0.01  # the first fill lasts while the others arrive
    instances = [small_instance() for _ in range(8)]
    errors = []

    def one(instance):
        driver = pair.driver.__class__(pair.driver._conf)
        try:
            driver.init_host(pair.host)
            spawn(types.SimpleNamespace(driver=driver), instance)
        except Exception as e:  # noqa: BLE001 -- collected and shown below
            errors.append(e)
        finally:
            driver.cleanup_host(pair.host)

    threads = [threading.Thread(target=one, args=(i,)) for i in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)

    assert errors == []
    assert downloads(image_service, TEST_IMAGE) == 1
    (cache_uuid, _mark), = cache_vdis(pair, TEST_IMAGE).items()
    assert {marks.cloned_from(root_record(pair, i.uuid)["other_config"])
            for i in instances} == {cache_uuid}
    for instance in instances:
        pair.driver.destroy(None, instance)
