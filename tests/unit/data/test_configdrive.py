"""The config drive's file tree and its checks on the request."""

import json

import pytest

from agent import configdrive
from rpc import exceptions

UUID = "6a8d2c57-0d1e-4c55-9a4e-2f4f1b1e9d01"


def tree(**kwargs):
    kwargs.setdefault("metadata", {"uuid": UUID, "hostname": "web-1"})
    return configdrive.openstack_tree(**kwargs)


def test_every_version_directory_is_complete_for_its_version():
    files = tree(user_data=b"#!/bin/sh\n", network_data={"links": [{"id": "eth0"}]})

    for version in configdrive.OPENSTACK_VERSIONS + ("latest",):
        base = "openstack/%s/" % version
        assert json.loads(files[base + "meta_data.json"])["uuid"] == UUID
        assert files[base + "user_data"] == b"#!/bin/sh\n"
    assert "openstack/2013-04-04/vendor_data.json" not in files
    assert "openstack/2013-10-17/vendor_data.json" in files
    assert "openstack/2013-10-17/network_data.json" not in files
    assert json.loads(files["openstack/2015-10-15/network_data.json"])["links"][0]["id"] == "eth0"
    assert "openstack/2016-06-30/vendor_data2.json" not in files
    assert "openstack/2016-10-06/vendor_data2.json" in files
    assert "openstack/latest/vendor_data2.json" in files


def test_no_user_data_means_no_user_data_files():
    files = tree()

    assert not [path for path in files if "user" in path]
    assert json.loads(files["openstack/latest/network_data.json"]) == {
        "links": [], "networks": [], "services": []}


def test_injected_files_are_content_entries_listed_in_meta_data():
    files = tree(files=[["/etc/motd", b"hello"], ["/root/.ssh/config", b"Host *\n"]])

    meta = json.loads(files["openstack/2012-08-10/meta_data.json"])
    assert meta["files"] == [
        {"path": "/etc/motd", "content_path": "/content/0000"},
        {"path": "/root/.ssh/config", "content_path": "/content/0001"}]
    assert files["openstack/content/0000"] == b"hello"
    assert files["openstack/content/0001"] == b"Host *\n"


def test_admin_password_goes_into_meta_data_only_when_given():
    with_password = tree(admin_password="s3cret")
    without = tree()

    assert json.loads(with_password["openstack/latest/meta_data.json"])["admin_pass"] == "s3cret"
    assert "admin_pass" not in json.loads(without["openstack/latest/meta_data.json"])


def test_keys_newer_than_a_version_are_left_out_of_it():
    files = tree(metadata={"uuid": UUID, "devices": [], "project_id": "p1"})

    assert "devices" not in json.loads(files["openstack/2015-10-15/meta_data.json"])
    assert "devices" in json.loads(files["openstack/2016-06-30/meta_data.json"])
    assert "project_id" not in json.loads(files["openstack/2017-02-22/meta_data.json"])
    assert json.loads(files["openstack/latest/meta_data.json"])["project_id"] == "p1"


def test_vendor_data_is_served_plain_and_as_static_vendor_data2():
    files = tree(vendor_data={"motd": "hi"})

    assert json.loads(files["openstack/latest/vendor_data.json"]) == {"motd": "hi"}
    assert json.loads(files["openstack/latest/vendor_data2.json"]) == {"static": {"motd": "hi"}}


def test_ec2_meta_data_describes_the_instance():
    files = tree(metadata={"uuid": UUID, "hostname": "web-1", "availability_zone": "az1",
                           "public_keys": {"mykey": "ssh-ed25519 AAAA"}},
                 user_data=b"ud")

    for version in ("2009-04-04", "latest"):
        ec2 = json.loads(files["ec2/%s/meta-data.json" % version])
        assert ec2["instance-id"] == UUID and ec2["hostname"] == "web-1"
        assert ec2["placement"]["availability-zone"] == "az1"
        assert ec2["public-keys"]["0"]["openssh-key"] == "ssh-ed25519 AAAA"
        assert files["ec2/%s/user-data" % version] == b"ud"


def test_user_data_up_to_64_KiB_is_accepted():
    files = tree(user_data=b"x" * 65536)

    assert len(files["openstack/latest/user_data"]) == 65536


@pytest.mark.parametrize("kwargs, field", [
    ({"metadata": {"name": "no-uuid"}}, "metadata"),
    ({"metadata": {"uuid": ""}}, "metadata"),
    ({"user_data": b"x" * 65537}, "user_data"),
    ({"user_data": "text, not bytes"}, "user_data"),
    ({"network_data": ["not", "a", "dict"]}, "network_data"),
    ({"files": [["/etc/motd"]]}, "files"),
    ({"files": ["/etc/motd"]}, "files"),
    ({"files": [["/etc/motd", 42]]}, "files"),
])
def test_bad_requests_are_typed_errors_naming_the_field(tmp_path, kwargs, field):
    kwargs.setdefault("metadata", {"uuid": UUID})
    target = tmp_path / "cd.iso"

    with pytest.raises(exceptions.InvalidRequest) as err:
        configdrive.build_configdrive(str(target), **kwargs)

    assert err.value.kwargs["field"] == field
    assert not target.exists()


def test_content_too_large_for_the_drive_is_refused_before_writing(tmp_path):
    target = tmp_path / "cd.iso"
    big = [["/data/%d" % i, b"\1" * (4 * 1024 * 1024)] for i in range(16)]

    with pytest.raises(exceptions.InvalidRequest, match="do not fit"):
        configdrive.build_configdrive(str(target), {"uuid": UUID}, files=big)
    assert not target.exists()


@pytest.mark.parametrize("name, is_dir, expected", [
    ("meta_data.json", False, "META_DATA.JSON;1"),
    ("user-data", False, "USER_DATA.;1"),
    ("2012-08-10", True, "2012_08_10"),
    ("0000", False, "0000.;1"),
])
def test_iso9660_names_use_d_characters_only(name, is_dir, expected):
    assert configdrive.iso9660_name(name, is_dir) == expected
