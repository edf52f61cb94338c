"""Config drives read back by independent ISO tools (isoinfo, bsdtar, xorriso).

The kernel here cannot mount iso9660, so the tools that read real config
drives without the kernel stand in for it.
"""

import json
import os
import shutil
import subprocess

import pytest

from agent import configdrive
from tests.conftest import need

UUID = "9c7f4f8e-2b1c-4a8e-8d53-7f9a0c6b5e42"
USER_DATA = b"#cloud-config\nruncmd:\n - [touch, /tmp/ok]\n" + bytes(range(256)) * 100


def run(*cmd):
    out = subprocess.run(list(cmd), capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return out.stdout.decode(errors="replace")


@pytest.fixture
def drive(tmp_path):
    for tool in ("isoinfo", "bsdtar", "xorriso"):
        need(shutil.which(tool), "%s is not installed" % tool)
    path = str(tmp_path / "configdrive.iso")
    size = configdrive.build_configdrive(
        path, {"uuid": UUID, "hostname": "vm-1", "name": "vm-1"},
        user_data=USER_DATA,
        network_data={"links": [{"id": "tap0", "type": "phy"}], "networks": [],
                      "services": []},
        vendor_data={"motd": "welcome"},
        files=[["/etc/motd", b"hello world\n"], ["/etc/hosts.extra", b"10.0.0.1 a\n"]],
        admin_password="pa55")
    return path, size


def test_isoinfo_sees_label_rock_ridge_and_joliet(drive):
    path, size = drive

    info = run("isoinfo", "-d", "-i", path)

    assert "Volume id: config-2" in info
    assert "Rock Ridge signatures" in info
    assert "Joliet with UCS level 3 found" in info
    assert size == os.path.getsize(path) and size % 2048 == 0
    assert size < configdrive.CONFIGDRIVE_SIZE_BYTES


def test_bsdtar_extracts_the_openstack_tree_intact(drive, tmp_path):
    path, _ = drive
    out = tmp_path / "x"
    out.mkdir()

    run("bsdtar", "-xf", path, "-C", str(out))

    for version in configdrive.OPENSTACK_VERSIONS + ("latest",):
        base = out / "openstack" / version
        assert json.loads((base / "meta_data.json").read_bytes())["uuid"] == UUID
        assert (base / "user_data").read_bytes() == USER_DATA
    latest = out / "openstack" / "latest"
    meta = json.loads((latest / "meta_data.json").read_bytes())
    assert meta["admin_pass"] == "pa55"
    assert meta["files"][0] == {"path": "/etc/motd", "content_path": "/content/0000"}
    assert (out / "openstack" / "content" / "0000").read_bytes() == b"hello world\n"
    assert json.loads((latest / "network_data.json").read_bytes())["links"][0]["id"] == "tap0"
    assert json.loads((latest / "vendor_data.json").read_bytes()) == {"motd": "welcome"}
    assert (out / "ec2" / "latest" / "user-data").read_bytes() == USER_DATA
    assert json.loads((out / "ec2" / "2009-04-04" / "meta-data.json").read_bytes())[
        "instance-id"] == UUID


def test_xorriso_lists_rock_ridge_names(drive):
    path, _ = drive

    listing = run("xorriso", "-indev", path, "-find", "/", "-type", "f")

    assert "'/openstack/2020-10-14/vendor_data2.json'" in listing
    assert "'/openstack/latest/meta_data.json'" in listing
    assert "'/ec2/2009-04-04/meta-data.json'" in listing


def test_joliet_names_are_the_real_names(drive):
    path, _ = drive

    joliet = run("isoinfo", "-J", "-f", "-i", path).split()
    plain = run("isoinfo", "-f", "-i", path).split()

    assert "/openstack/2016-10-06/network_data.json" in joliet
    assert "/OPENSTACK/2016_10_06/NETWORK_DATA.JSON;1" in plain


def test_isoinfo_reads_user_data_bytes_through_rock_ridge(drive):
    path, _ = drive

    data = subprocess.run(
        ["isoinfo", "-R", "-i", path, "-x", "/openstack/2012-08-10/user_data"],
        capture_output=True, timeout=60, check=True).stdout

    assert data == USER_DATA
