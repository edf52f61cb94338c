"""fetch_image in both modes: raw streams, VHD chains, kernels; what is refused."""

import hashlib
import logging
import os
import subprocess
import threading
import time
import uuid

import pytest

from agent import vdis
from nova_xen_split import vm_utils
from nova_xen_split.cmd import demo_env
from nova_xen_split.xenhost import marks
from rpc import exceptions
from tests.functional.agent import disktools

# Image ids are Glance's: uuids.
IMAGE_ID = "0c2c5cf8-5b3f-4d2c-9a53-6e1d7f7d5a11"
OTHER_IMAGE = "a1b2c3d4-0000-4000-8000-00000000beef"
MISSING_IMAGE = "00000000-0000-4000-8000-00000000dead"

MiB = 1 << 20


def _raw_image(tmp_path, size_bytes=24 * MiB, name="image.raw"):
    """A sparse raw disk image: a partition table and a few data runs."""
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(size_bytes)
    disktools.run(["sfdisk", "-q", str(path)], stdin=b"label: dos\nstart=2048, type=83\n")
    with open(path, "r+b") as f:
        for offset in (3 * MiB, 10 * MiB + 4096, size_bytes - 8192):
            f.seek(offset)
            f.write(os.urandom(8192))
    return path


def _same_prefix(path_a, path_b, length):
    return subprocess.run(["cmp", "-n", str(length), str(path_a), str(path_b)],
                          capture_output=True, timeout=60).returncode == 0


def test_fetch_image_raw_streams_the_image_into_a_new_root_vdi(agent, image_server, tmp_path):
    image = _raw_image(tmp_path)
    image_id = image_server.add(image)

    fetched = agent.endpoint.fetch_image(
        instance_uuid=str(uuid.uuid4()), image_id=image_id, disk_format="raw",
        auth_token="tok-123")

    [root] = fetched["vdis"]
    assert root["type"] == "root"
    assert root["size_bytes"] == 24 * MiB
    assert _same_prefix(image, disktools.vdi_file(agent.sim, root["uuid"]), 24 * MiB)
    assert image_server.downloads[-1] == (image_id, "tok-123")
    assert agent.tagged_vbds() == []


@pytest.mark.parametrize("mode", ["in_guest", "independent"])
def test_fetch_image_raw_reads_a_shared_store_file_and_skips_its_holes(
        make_sim, loop_devices, image_server, make_agent, tmp_path, mode):
    store = tmp_path / "store"
    store.mkdir()
    image = _raw_image(store, size_bytes=64 * MiB)
    image_id = image_server.add(image)
    image_server.show_locations = True
    agent = make_agent(make_sim(compute_vm=(mode == "in_guest")), mode, image_server,
                       overrides={("glance", "file_url_mounts"): {str(store): str(store)}})

    fetched = agent.endpoint.fetch_image(
        instance_uuid=str(uuid.uuid4()), image_id=image_id, disk_format="raw",
        auth_token="tok-123")

    [root] = fetched["vdis"]
    vdi_file = disktools.vdi_file(agent.sim, root["uuid"])
    assert root["size_bytes"] == 64 * MiB
    assert _same_prefix(image, vdi_file, 64 * MiB)
    # Read from the file: the record was asked for, the data never downloaded.
    assert image_server.record_requests == [image_id]
    assert image_server.downloads == []
    # Holes stayed holes: a few 64 KiB grains of data (and the partition table).
    assert os.stat(vdi_file).st_blocks * 512 <= 2 * MiB
    assert agent.tagged_vbds() == []


def test_fetch_image_vhd_goes_through_the_dom0_plugin_and_sr_scan(agent, image_server, tmp_path):
    raw = _raw_image(tmp_path, 16 * MiB)
    tarball = tmp_path / "image.tar"
    demo_env.make_vhd_tarball(str(raw), str(tarball))
    instance = str(uuid.uuid4())

    image_id = image_server.add(tarball)
    fetched = agent.endpoint.fetch_image(
        instance_uuid=instance, image_id=image_id, disk_format="vhd", auth_token=None)

    [root] = fetched["vdis"]
    assert root["type"] == "root"
    assert _same_prefix(raw, disktools.vdi_file(agent.sim, root["uuid"]), 16 * MiB)
    before = agent.vdi_uuids()
    again = agent.endpoint.fetch_image(  # a retry: the same disk, nothing fetched
        instance_uuid=instance, image_id=image_id, disk_format="vhd", auth_token=None)
    assert again["vdis"][0]["uuid"] == root["uuid"]
    with pytest.raises(exceptions.InvalidRequest, match="made by another request"):
        agent.endpoint.fetch_image(instance_uuid=instance, image_id=OTHER_IMAGE,
                                   disk_format="vhd", auth_token=None)
    assert agent.vdi_uuids() == before


def test_fetch_image_of_an_unknown_image_fails_typed_and_leaves_no_vdi(agent, image_server):
    before = agent.vdi_uuids()

    with pytest.raises(exceptions.ImageFetchFailed):
        agent.endpoint.fetch_image(
            instance_uuid=str(uuid.uuid4()), image_id=MISSING_IMAGE, disk_format="raw",
            auth_token=None)

    assert agent.vdi_uuids() == before


def _dense_then_sparse_image(tmp_path, parts):
    """A raw image of ``parts``: (MiB, random?) pairs in order."""
    path = tmp_path / "mixed.raw"
    with open(path, "wb") as f:
        for mib, random in parts:
            if random:
                for _ in range(mib):
                    f.write(os.urandom(MiB))
            else:
                f.seek(mib * MiB, os.SEEK_CUR)
        f.truncate(f.tell())
    return path


def test_a_download_of_dense_and_empty_windows_lands_intact_and_checked(
        agent, image_server, tmp_path):
    # Windows are 32 MiB of data: dense ones, one that is mostly zeros, and
    # a short last one; the image's MD5 is checked across all of them.
    image = _dense_then_sparse_image(tmp_path, [(72, True), (24, False), (16, True)])

    fetched = agent.endpoint.fetch_image(
        instance_uuid=str(uuid.uuid4()), image_id=image_server.add(image),
        disk_format="raw", auth_token=None)

    [root] = fetched["vdis"]
    assert _same_prefix(image, disktools.vdi_file(agent.sim, root["uuid"]), 112 * MiB)
    assert agent.tagged_vbds() == []


@pytest.mark.parametrize("spoil", ["checksum", "multihash", "cut"])
def test_a_download_that_breaks_or_does_not_match_late_fails_and_leaves_nothing(
        agent, image_server, tmp_path, spoil):
    image = _dense_then_sparse_image(tmp_path, [(96, True)])
    image_id = image_server.add(image)
    if spoil == "checksum":
        image_server.content_md5[image_id] = "0123456789abcdef0123456789abcdef"
    elif spoil == "multihash":   # its Content-MD5 is right: the record's hash rules
        image_server.multihash[image_id] = ("sha512", hashlib.sha512(b"other").hexdigest())
    else:
        image_server.cut_after[image_id] = 80 * MiB + 12345  # the connection closes
    before = agent.vdi_uuids()

    with pytest.raises(exceptions.ImageFetchFailed) as raised:
        agent.endpoint.fetch_image(
            instance_uuid=str(uuid.uuid4()), image_id=image_id, disk_format="raw",
            auth_token=None)

    assert {"checksum": "do not match the image's checksum (MD5",
            "multihash": "do not match the image's checksum (SHA512",
            "cut": "broke after %d of %d bytes" % (80 * MiB + 12345, 96 * MiB)}[spoil] \
        in str(raised.value)
    assert agent.vdi_uuids() == before
    assert agent.tagged_vbds() == []
    tasks = agent.session.call("task.get_all_records")
    assert [t for t in tasks.values() if t["name_label"] == "nova-xen-split import"] == []


def _pending_chains(agent):
    sr = vdis.default_sr(agent.session)
    other = agent.session.call("SR.get_other_config", sr)
    return {chain.key: other[chain.key] for chain in marks.pending_chains(other)}


def test_a_vhd_fetch_leaves_no_pending_chain_entry_whether_it_works_or_fails(
        agent, image_server, tmp_path):
    raw = _raw_image(tmp_path, 4 * MiB)
    tarball = tmp_path / "image.tar"
    demo_env.make_vhd_tarball(str(raw), str(tarball))
    before = agent.vdi_uuids()

    with pytest.raises(exceptions.ImageFetchFailed):
        agent.endpoint.fetch_image(instance_uuid=str(uuid.uuid4()), image_id=MISSING_IMAGE,
                                   disk_format="vhd", auth_token=None)
    assert _pending_chains(agent) == {} and agent.vdi_uuids() == before
    fetched = agent.endpoint.fetch_image(instance_uuid=str(uuid.uuid4()),
                                         image_id=image_server.add(tarball),
                                         disk_format="vhd", auth_token=None)
    assert _pending_chains(agent) == {}
    assert agent.vdi_uuids() - before == {fetched["vdis"][0]["uuid"]}


def test_a_vhd_image_is_checked_in_dom0_against_its_records_multihash(
        agent, image_server, tmp_path, caplog):
    raw = _raw_image(tmp_path, 4 * MiB)
    tarball = tmp_path / "image.tar"
    demo_env.make_vhd_tarball(str(raw), str(tarball))
    good, rotten = image_server.add(tarball), image_server.add(tarball)
    image_server.multihash[good] = "sha256"   # the tarball's true SHA-256
    image_server.multihash[rotten] = ("sha512", hashlib.sha512(b"other").hexdigest())
    before = agent.vdi_uuids()

    # Its Content-MD5 is right, so only the multihash can refuse it.
    with pytest.raises(exceptions.ImageFetchFailed) as raised:
        agent.endpoint.fetch_image(instance_uuid=str(uuid.uuid4()), image_id=rotten,
                                   disk_format="vhd", auth_token=None)
    assert "checksum (SHA512 %s expected" % hashlib.sha512(b"other").hexdigest() \
        in str(raised.value)
    assert agent.vdi_uuids() == before and _pending_chains(agent) == {}

    with caplog.at_level(logging.INFO, logger="agent.backends.common"):
        fetched = agent.endpoint.fetch_image(instance_uuid=str(uuid.uuid4()),
                                             image_id=good, disk_format="vhd",
                                             auth_token=None)
    assert agent.vdi_uuids() - before == {fetched["vdis"][0]["uuid"]}
    assert "its SHA256 checksum was verified in dom0" in caplog.text
    assert image_server.record_requests == [rotten, good]


@pytest.mark.parametrize("agent", ["independent"], indirect=True)
def test_cleanup_settles_pending_chain_entries_of_this_agent_only(agent):
    session = agent.session
    sr = vdis.default_sr(session)
    entries = {
        "young": (agent.ctx.tag, time.time()),
        "stale": (agent.ctx.tag, time.time() - vdis.PENDING_CHAIN_STALE_SECONDS - 60),
        "other agent's": ("someone-else", 0),
    }
    keys = {}
    for name, (owner, since) in entries.items():
        keys[name], value = marks.pending_chain_mark(str(uuid.uuid4()), owner,
                                                     str(uuid.uuid4()), since)
        session.call("SR.add_to_other_config", sr, keys[name], value)
    try:
        agent.endpoint.cleanup_attached_vdis()
        left = _pending_chains(agent)
    finally:
        for key in keys.values():
            session.call("SR.remove_from_other_config", sr, key)

    # Not landed yet: the plugin may still be running, so the young entry stays.
    assert set(left) == {keys["young"], keys["other agent's"]}


def _vhd_image(image_server, tmp_path, size_bytes):
    raw = tmp_path / "dense.raw"
    raw.write_bytes(os.urandom(size_bytes))
    tarball = tmp_path / "dense.tar"
    demo_env.make_vhd_tarball(str(raw), str(tarball))
    return image_server.add(tarball)


def test_a_vhd_chain_landing_after_the_driver_gave_up_is_destroyed(
        agent, image_server, tmp_path):
    # The driver's call timed out while dom0 was still landing the chain:
    # its undo sweeps the instance, which finds no VDI (the chain has none
    # yet) but marks the pending entry abandoned; the fetch, once dom0 has
    # landed the chain, destroys it instead of handing over a ready VDI that
    # nothing would ever remove.
    image_id = _vhd_image(image_server, tmp_path, 8 * MiB)
    image_server.delay = 0.4  # about 3 s for the 8 MiB
    instance = str(uuid.uuid4())
    # another instance's fetch
    other, value = marks.pending_chain_mark(str(uuid.uuid4()), agent.ctx.tag,
                                            str(uuid.uuid4()), time.time())
    sr = vdis.default_sr(agent.session)
    agent.session.call("SR.add_to_other_config", sr, other, value)
    before = agent.vdi_uuids()
    outcome = []

    def fetch():
        try:
            outcome.append(agent.endpoint.fetch_image(
                instance_uuid=instance, image_id=image_id, disk_format="vhd",
                auth_token=None))
        except Exception as e:  # noqa: BLE001 -- the test looks at it
            outcome.append(e)
    fetching = threading.Thread(target=fetch)
    fetching.start()
    try:
        deadline = time.monotonic() + 30
        while not image_server.downloads and time.monotonic() < deadline:
            time.sleep(0.05)
        assert image_server.downloads, "dom0 never started the download"
        assert vm_utils.sweep_instance_vdis(agent.session, instance) == 0  # nothing to see
        marked = _pending_chains(agent)
    finally:
        fetching.join(60)
        agent.session.call("SR.remove_from_other_config", sr, other)

    assert [value.split()[1:2] + value.split()[3:] for key, value in marked.items()
            if key != other] == [[instance, "abandoned"]]
    assert len(marked[other].split()) == 3  # another instance's entry is left alone
    (error,) = outcome
    assert isinstance(error, exceptions.ImageFetchFailed), error
    assert "gave up on instance %s" % instance in str(error)
    assert agent.vdi_uuids() == before
    assert _pending_chains(agent) == {}


@pytest.mark.parametrize("abandoned", [False, True])
def test_cleanup_destroys_a_landed_chain_the_driver_abandoned_even_when_ready(
        agent, image_server, tmp_path, abandoned):
    # The agent died between tagging the leaf and reading the mark: a ready
    # leaf is kept as its fetch's result unless the driver abandoned it.
    before = agent.vdi_uuids()
    instance = str(uuid.uuid4())
    (leaf,) = agent.endpoint.fetch_image(
        instance_uuid=instance, image_id=_vhd_image(image_server, tmp_path, MiB),
        disk_format="vhd", auth_token=None)["vdis"]
    sr = vdis.default_sr(agent.session)
    agent.session.call("SR.add_to_other_config", sr, *marks.pending_chain_mark(
        leaf["uuid"], agent.ctx.tag, instance, time.time()))
    if abandoned:
        assert vm_utils.abandon_pending_chains(agent.session, instance) == 1

    agent.endpoint.cleanup_attached_vdis()

    assert _pending_chains(agent) == {}
    assert agent.vdi_uuids() - before == (set() if abandoned else {leaf["uuid"]})


def test_a_download_that_does_not_match_its_checksum_fails_and_leaves_nothing(
        agent, image_server, tmp_path):
    image = _raw_image(tmp_path)
    image_id = image_server.add(image)
    # The checksum of other bytes: as if the store's copy had rotted.
    image_server.content_md5[image_id] = "0123456789abcdef0123456789abcdef"
    before = agent.vdi_uuids()

    with pytest.raises(exceptions.ImageFetchFailed) as raised:
        agent.endpoint.fetch_image(
            instance_uuid=str(uuid.uuid4()), image_id=image_id, disk_format="raw",
            auth_token=None)

    assert "checksum (MD5 0123456789abcdef0123456789abcdef expected" in str(raised.value)
    assert agent.vdi_uuids() == before
    assert agent.tagged_vbds() == []


@pytest.fixture
def in_guest_agent(make_sim, loop_devices, image_server, make_agent):
    return make_agent(make_sim(compute_vm=True), "in_guest", image_server)


@pytest.fixture
def independent_agent(make_sim, loop_devices, image_server, make_agent):
    return make_agent(make_sim(compute_vm=False), "independent", image_server)


def test_in_guest_fetch_of_a_kernel_lands_in_dom0s_boot_dir_and_keeps_no_vdi(
        in_guest_agent, image_server, tmp_path):
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(os.urandom(3 * MiB + 123))
    before = in_guest_agent.vdi_uuids()

    fetched = in_guest_agent.endpoint.fetch_image(
        instance_uuid=str(uuid.uuid4()), image_id=image_server.add(kernel),
        disk_format="aki", auth_token=None)

    [entry] = fetched["vdis"]
    assert entry["type"] == "kernel" and entry["uuid"] is None
    assert entry["path"].startswith(os.path.join(in_guest_agent.sim.state_dir, "boot"))
    with open(entry["path"], "rb") as f:
        assert f.read() == kernel.read_bytes()
    assert in_guest_agent.vdi_uuids() == before
    assert in_guest_agent.tagged_vbds() == []


def test_in_guest_fetch_of_an_ami_puts_the_filesystem_in_a_partition_at_sector_63(
        in_guest_agent, image_server, tmp_path):
    fs_image = tmp_path / "fs.img"
    with open(fs_image, "wb") as f:
        f.truncate(8 * MiB)
    disktools.run(["mkfs.ext4", "-q", "-F", "-L", "amiroot", str(fs_image)])

    fetched = in_guest_agent.endpoint.fetch_image(
        instance_uuid=str(uuid.uuid4()), image_id=image_server.add(fs_image),
        disk_format="ami", auth_token=None)

    path = disktools.vdi_file(in_guest_agent.sim, fetched["vdis"][0]["uuid"])
    [part] = disktools.partitions(path)["partitions"]
    assert part["start"] == 63
    assert disktools.probe(path, 63 * 512)["LABEL"] == "amiroot"
    clean, output = disktools.e2fsck_clean(path, 63 * 512)
    assert clean, output


@pytest.mark.parametrize("disk_format,kernel_id,words", [
    ("aki", None, "kernel/ramdisk"),
    ("ami", "4b3e1e00-0000-4000-8000-000000000001", "kernel_id"),
    ("ami", None, "disk_format=ami"),
])
def test_independent_refuses_kernel_ramdisk_and_ami_images_naming_the_property(
        independent_agent, disk_format, kernel_id, words):
    before = independent_agent.vdi_uuids()

    with pytest.raises(exceptions.UnsupportedInIndependentMode, match=words) as caught:
        independent_agent.endpoint.fetch_image(
            instance_uuid=str(uuid.uuid4()), image_id=IMAGE_ID, disk_format=disk_format,
            kernel_id=kernel_id, auth_token=None)

    assert "independent_compute" in str(caught.value)
    assert independent_agent.vdi_uuids() == before


def test_in_guest_ami_whose_ramdisk_fails_leaves_no_kernel_file_in_dom0(
        in_guest_agent, image_server, tmp_path):
    fs_image = tmp_path / "fs.img"
    with open(fs_image, "wb") as f:
        f.truncate(8 * MiB)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(os.urandom(MiB))
    boot_dir = os.path.join(in_guest_agent.sim.state_dir, "boot", "guest")

    with pytest.raises(exceptions.ImageFetchFailed, match=MISSING_IMAGE):
        in_guest_agent.endpoint.fetch_image(
            instance_uuid=str(uuid.uuid4()), image_id=image_server.add(fs_image),
            disk_format="ami", kernel_id=image_server.add(kernel),
            ramdisk_id=MISSING_IMAGE, auth_token=None)

    assert not os.path.isdir(boot_dir) or os.listdir(boot_dir) == []
    assert in_guest_agent.tagged_vbds() == []


@pytest.mark.parametrize("mode", ["in_guest", "independent"])
def test_boot_files_are_removed_through_the_agent_in_either_mode(
        mode, make_sim, loop_devices, image_server, make_agent, tmp_path):
    """The driver touches no disk: dom0's kernel and ramdisk files go
    through the agent (the kernel plugin), whichever mode it runs in."""
    fetcher = make_agent(make_sim(compute_vm=True), "in_guest", image_server)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(os.urandom(MiB))
    [entry] = fetcher.endpoint.fetch_image(
        instance_uuid=str(uuid.uuid4()), image_id=image_server.add(kernel),
        disk_format="aki", auth_token=None)["vdis"]
    agent = fetcher
    if mode == "independent":  # an independent agent of the same host
        agent = make_agent(fetcher.sim, "independent", image_server)

    assert agent.endpoint.remove_boot_files(paths=[entry["path"]]) == {"removed": 1}
    assert not os.path.exists(entry["path"])
    assert agent.endpoint.remove_boot_files(paths=[entry["path"]]) == {"removed": 0}


@pytest.mark.parametrize("path", ["/etc/passwd", "/boot/guest/../kernel-x", "kernel-x",
                                  "/boot/guest/vmlinuz"])
def test_remove_boot_files_refuses_anything_but_a_boot_file(independent_agent, path):
    with pytest.raises(exceptions.InvalidRequest, match="paths"):
        independent_agent.endpoint.remove_boot_files(paths=[path])


def test_remove_boot_files_refuses_a_boot_file_name_outside_dom0s_boot_dir(
        independent_agent, tmp_path):
    outside = tmp_path / "kernel-abc"
    outside.write_bytes(b"not a kernel")
    with pytest.raises(exceptions.XapiFailure, match="not a kernel or ramdisk file"):
        independent_agent.endpoint.remove_boot_files(paths=[str(outside)])
    assert outside.exists()
