"""resize_disk and preconfigure_instance: done in_guest, refused independent."""

import hashlib
import json
import os
import uuid

import pytest

from rpc import exceptions
from tests.functional.agent import disktools

MiB = 1 << 20
GiB = 1 << 30
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFlatInjectedKey k1@test"
KEY_COMMENT = b"# Added by nova-xen-split (flat_injected)\n"


@pytest.fixture
def in_guest_agent(make_sim, loop_devices, image_server, make_agent):
    return make_agent(make_sim(compute_vm=True), "in_guest", image_server)


@pytest.fixture
def independent_agent(make_sim, loop_devices, image_server, make_agent):
    return make_agent(make_sim(compute_vm=False), "independent", image_server)


def _ext4_disk(agent, tmp_path, size_mb, data, instance_uuid=None):
    made = agent.endpoint.generate_disk(
        instance_uuid=instance_uuid or str(uuid.uuid4()), kind="ephemeral", size_mb=size_mb,
        fs_type="ext4", label="root")
    path = disktools.vdi_file(agent.sim, made["uuid"])
    disktools.ext_write(path, 2048 * 512, "/data.bin", data, tmp_path)
    return made


def test_resize_disk_copies_the_filesystem_into_a_smaller_vdi(in_guest_agent, tmp_path):
    data = bytes(range(256)) * 4096
    instance = str(uuid.uuid4())
    source = _ext4_disk(in_guest_agent, tmp_path, 1536, data, instance)
    source_path = disktools.vdi_file(in_guest_agent.sim, source["uuid"])
    with open(source_path, "r+b") as f:  # boot code the copy must keep
        f.write(b"\xeb\x63BOOTCODE")

    resized = in_guest_agent.endpoint.resize_disk(
        instance_uuid=instance, vdi_uuid=source["uuid"], new_gb=1)

    assert resized["size_bytes"] == GiB and resized["uuid"] != source["uuid"]
    path = disktools.vdi_file(in_guest_agent.sim, resized["uuid"])
    [part] = disktools.partitions(path)["partitions"]
    assert part["start"] == 2048 and part["start"] + part["size"] == GiB // 512
    clean, output = disktools.e2fsck_clean(path, 2048 * 512)
    assert clean, output
    assert disktools.ext_read(path, 2048 * 512, "/data.bin") == data
    assert disktools.ext_block_count(path, 2048 * 512) * 1024 <= part["size"] * 512
    with open(path, "rb") as f:
        assert f.read(10) == b"\xeb\x63BOOTCODE"
    clean, output = disktools.e2fsck_clean(source_path, 2048 * 512)
    assert clean, output
    assert in_guest_agent.tagged_vbds() == []


def test_resize_disk_refuses_a_size_that_is_not_smaller(in_guest_agent, tmp_path):
    instance = str(uuid.uuid4())
    source = _ext4_disk(in_guest_agent, tmp_path, 64, b"x", instance)
    before = in_guest_agent.vdi_uuids()

    with pytest.raises(exceptions.InvalidRequest, match="not smaller"):
        in_guest_agent.endpoint.resize_disk(
            instance_uuid=instance, vdi_uuid=source["uuid"], new_gb=1)

    assert in_guest_agent.vdi_uuids() == before


def test_preconfigure_instance_writes_network_config_and_files(in_guest_agent, tmp_path):
    disk = _ext4_disk(in_guest_agent, tmp_path, 64, b"x")

    in_guest_agent.endpoint.preconfigure_instance(
        vdi_uuid=disk["uuid"], network_config="auto eth0\niface eth0 inet dhcp\n",
        files=[["/root/.ssh/authorized_keys", b"ssh-ed25519 AAAA test\n"]])

    path = disktools.vdi_file(in_guest_agent.sim, disk["uuid"])
    assert disktools.ext_read(path, 2048 * 512, "/etc/network/interfaces") == \
        b"auto eth0\niface eth0 inet dhcp\n"
    assert disktools.ext_read(path, 2048 * 512, "/root/.ssh/authorized_keys") == \
        b"ssh-ed25519 AAAA test\n"
    # Directories it had to make are 0755 whatever the daemon's umask.
    for directory in ("/etc", "/etc/network", "/root", "/root/.ssh"):
        assert disktools.ext_stat(path, 2048 * 512, directory)[:2] == ("directory", 0o755)
    assert disktools.ext_stat(path, 2048 * 512, "/etc/network/interfaces")[:2] == (
        "regular", 0o644)
    clean, output = disktools.e2fsck_clean(path, 2048 * 512)
    assert clean, output
    assert in_guest_agent.tagged_vbds() == []


@pytest.mark.parametrize("bad_path, phrase", [
    ("/etc/network", "is a directory in the guest"),
    ("/etc/network/interfaces/x", "the guest has a file, not a directory, at "
     "/etc/network/interfaces"),
])
def test_preconfigure_instance_writes_nothing_when_one_path_cannot_be_a_file(
        in_guest_agent, tmp_path, bad_path, phrase):
    disk = _ext4_disk(in_guest_agent, tmp_path, 64, b"x")
    path = disktools.vdi_file(in_guest_agent.sim, disk["uuid"])
    for directory in ("/etc", "/etc/network"):
        disktools.ext_mkdir(path, 2048 * 512, directory)
    disktools.ext_write(path, 2048 * 512, "/etc/network/interfaces", b"old\n", tmp_path)

    with pytest.raises(exceptions.DiskOperationFailed, match=phrase):
        in_guest_agent.endpoint.preconfigure_instance(
            vdi_uuid=disk["uuid"], network_config=None,
            files=[["/root/first", b"written first?"], [bad_path, b"x"]])

    assert disktools.ext_read(path, 2048 * 512, "/etc/network/interfaces") == b"old\n"
    assert not disktools.ext_exists(path, 2048 * 512, "/root")     # never made
    clean, output = disktools.e2fsck_clean(path, 2048 * 512)
    assert clean, output
    assert in_guest_agent.tagged_vbds() == []


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def test_preconfigure_instance_leaves_a_non_linux_filesystem_unmounted(in_guest_agent):
    disk = in_guest_agent.endpoint.generate_disk(
        instance_uuid=str(uuid.uuid4()), kind="ephemeral", size_mb=64, fs_type="vfat",
        label="win")
    path = disktools.vdi_file(in_guest_agent.sim, disk["uuid"])
    before = _sha256(path)

    done = in_guest_agent.endpoint.preconfigure_instance(
        vdi_uuid=disk["uuid"], network_config="auto eth0\niface eth0 inet dhcp\n", files=None,
        ssh_key=KEY, metadata={"role": "web"})
    assert "partition 1 holds vfat, not a Linux filesystem" in done["skipped"]
    with pytest.raises(exceptions.DiskOperationFailed, match="cannot write files: partition 1 "
                       "holds vfat"):
        in_guest_agent.endpoint.preconfigure_instance(
            vdi_uuid=disk["uuid"], network_config=None, files=[["/a.txt", b"a"]])

    assert _sha256(path) == before  # never mounted, not even read-write for a moment
    assert in_guest_agent.tagged_vbds() == []


def test_preconfigure_instance_writes_into_a_disk_without_partition_table(
        in_guest_agent, tmp_path):
    disk = _ext4_disk(in_guest_agent, tmp_path, 64, b"x")
    path = disktools.vdi_file(in_guest_agent.sim, disk["uuid"])
    disktools.run(["wipefs", "-a", "-q", path])
    disktools.run(["mkfs.ext4", "-F", "-q", "-L", "whole", path])

    in_guest_agent.endpoint.preconfigure_instance(
        vdi_uuid=disk["uuid"], network_config="auto eth0\niface eth0 inet dhcp\n", files=None)

    assert disktools.ext_read(path, 0, "/etc/network/interfaces") == \
        b"auto eth0\niface eth0 inet dhcp\n"
    clean, output = disktools.e2fsck_clean(path, 0)
    assert clean, output
    assert in_guest_agent.tagged_vbds() == []


def test_preconfigure_instance_adds_the_ssh_key_and_writes_metadata(in_guest_agent, tmp_path):
    # As Nova's flat_injected: the key goes after the keys the image has
    # (one without a final newline here), /root/.ssh is made private again
    # (sshd's StrictModes refuses a group- or world-writable one), and the
    # instance metadata lands as JSON in /meta.js.
    disk = _ext4_disk(in_guest_agent, tmp_path, 64, b"x")
    path = disktools.vdi_file(in_guest_agent.sim, disk["uuid"])
    for directory in ("/root", "/root/.ssh"):
        disktools.ext_mkdir(path, 2048 * 512, directory)
    disktools.ext_write(path, 2048 * 512, "/root/.ssh/authorized_keys",
                        b"ssh-rsa AAAAB3Old old@host", tmp_path)
    disktools.ext_debugfs(path, 2048 * 512, "sif /root/.ssh mode 040777",
                          "sif /root/.ssh uid 1000", "sif /root/.ssh/authorized_keys uid 1000")
    metadata = {"role": "web", "zone": "b", "empty": ""}

    for _ in range(2):  # a retried request adds the key once
        done = in_guest_agent.endpoint.preconfigure_instance(
            vdi_uuid=disk["uuid"], network_config="auto eth0\niface eth0 inet dhcp\n",
            ssh_key=KEY, metadata=metadata)
        assert done == {}

    assert disktools.ext_read(path, 2048 * 512, "/root/.ssh/authorized_keys") == (
        b"ssh-rsa AAAAB3Old old@host\n" + KEY_COMMENT + KEY.encode() + b"\n")
    assert disktools.ext_stat(path, 2048 * 512, "/root/.ssh") == ("directory", 0o700, 0, 0)
    assert disktools.ext_stat(path, 2048 * 512, "/root/.ssh/authorized_keys") == (
        "regular", 0o600, 0, 0)
    assert json.loads(disktools.ext_read(path, 2048 * 512, "/meta.js")) == metadata
    assert disktools.ext_read(path, 2048 * 512, "/etc/network/interfaces") == \
        b"auto eth0\niface eth0 inet dhcp\n"
    clean, output = disktools.e2fsck_clean(path, 2048 * 512)
    assert clean, output
    assert in_guest_agent.tagged_vbds() == []


def test_preconfigure_instance_makes_root_ssh_dir_for_the_key(in_guest_agent, tmp_path):
    disk = _ext4_disk(in_guest_agent, tmp_path, 64, b"x")
    path = disktools.vdi_file(in_guest_agent.sim, disk["uuid"])

    in_guest_agent.endpoint.preconfigure_instance(vdi_uuid=disk["uuid"], ssh_key=KEY)

    assert disktools.ext_read(path, 2048 * 512, "/root/.ssh/authorized_keys") == \
        KEY_COMMENT + KEY.encode() + b"\n"
    assert disktools.ext_stat(path, 2048 * 512, "/root")[:2] == ("directory", 0o700)
    assert disktools.ext_stat(path, 2048 * 512, "/root/.ssh")[:2] == ("directory", 0o700)
    assert disktools.ext_stat(path, 2048 * 512, "/root/.ssh/authorized_keys")[:2] == (
        "regular", 0o600)
    assert not disktools.ext_exists(path, 2048 * 512, "/meta.js")  # no metadata sent


@pytest.mark.parametrize("selinux", [False, True])
def test_preconfigure_instance_labels_what_it_makes_for_the_key_on_selinux_guests(
        in_guest_agent, tmp_path, selinux):
    # Made outside the guest, /root/.ssh would carry no context, and an
    # enforcing guest's sshd (reading ssh_home_t only) would refuse the key.
    disk = _ext4_disk(in_guest_agent, tmp_path, 64, b"x")
    path = disktools.vdi_file(in_guest_agent.sim, disk["uuid"])
    disktools.ext_mkdir(path, 2048 * 512, "/etc")
    if selinux:
        disktools.ext_mkdir(path, 2048 * 512, "/etc/selinux")

    in_guest_agent.endpoint.preconfigure_instance(
        vdi_uuid=disk["uuid"], ssh_key=KEY, metadata={"a": "b"})

    expected = {"/root": "system_u:object_r:admin_home_t:s0",
                "/root/.ssh": "system_u:object_r:ssh_home_t:s0",
                "/root/.ssh/authorized_keys": "system_u:object_r:ssh_home_t:s0"}
    for guest_path, context in expected.items():
        assert disktools.ext_selinux_context(path, 2048 * 512, guest_path) == \
            (context if selinux else None)
    clean, output = disktools.e2fsck_clean(path, 2048 * 512)
    assert clean, output


@pytest.mark.parametrize("link_target", ["/etc", "../etc"])
def test_preconfigure_instance_never_writes_the_key_through_a_symlink(
        in_guest_agent, tmp_path, link_target):
    # An absolute link would lead out of the mount (onto the agent's own
    # /etc); a relative one would get the guest's /etc chmod 0700.
    disk = _ext4_disk(in_guest_agent, tmp_path, 64, b"x")
    path = disktools.vdi_file(in_guest_agent.sim, disk["uuid"])
    for directory in ("/root", "/etc"):
        disktools.ext_mkdir(path, 2048 * 512, directory)
    disktools.ext_debugfs(path, 2048 * 512, "symlink /root/.ssh %s" % link_target)
    etc_before = disktools.ext_stat(path, 2048 * 512, "/etc")

    with pytest.raises(exceptions.DiskOperationFailed,
                       match="leaves the filesystem|is a symlink in the guest"):
        in_guest_agent.endpoint.preconfigure_instance(
            vdi_uuid=disk["uuid"], network_config="auto lo\n", ssh_key=KEY,
            metadata={"a": "b"})

    assert disktools.ext_stat(path, 2048 * 512, "/etc") == etc_before
    for never in ("/etc/authorized_keys", "/etc/network", "/meta.js"):
        assert not disktools.ext_exists(path, 2048 * 512, never)  # nothing written
    assert not os.path.exists("/etc/authorized_keys")
    assert in_guest_agent.tagged_vbds() == []


def test_independent_refuses_resize_down_naming_feature_and_option(independent_agent):
    disk = independent_agent.endpoint.generate_disk(
        instance_uuid=str(uuid.uuid4()), kind="swap", size_mb=8, fs_type="swap",
        label="swap")
    before = independent_agent.vdi_uuids()

    with pytest.raises(exceptions.UnsupportedInIndependentMode,
                       match="Resizing a disk down.*independent_compute"):
        independent_agent.endpoint.resize_disk(
            instance_uuid=str(uuid.uuid4()), vdi_uuid=disk["uuid"], new_gb=1)

    assert independent_agent.vdi_uuids() == before


def test_independent_refuses_preconfigure_naming_flat_injected(independent_agent):
    with pytest.raises(exceptions.UnsupportedInIndependentMode, match="flat_injected"):
        independent_agent.endpoint.preconfigure_instance(
            vdi_uuid=str(uuid.uuid4()), network_config="auto eth0\n", files=None)
