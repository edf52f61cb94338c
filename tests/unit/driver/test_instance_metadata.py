"""The config drive's content as the driver builds it, before any disk exists."""

import base64

import pytest

from nova_xen_split import driver_errors
from nova_xen_split import instance_metadata
from nova_xen_split import objects


def _instance(**kwargs):
    return objects.Instance(uuid="6f1d3c2e-8a4b-4c1d-9e2f-0a1b2c3d4e5f", hostname="web-1",
                            **kwargs)


def test_user_data_is_decoded_from_base64():
    instance = _instance(user_data=base64.b64encode(b"#!/bin/sh\necho hi\n").decode())
    assert instance_metadata.decode_user_data(instance) == b"#!/bin/sh\necho hi\n"


def test_user_data_of_exactly_64_kib_is_accepted():
    instance = _instance(user_data=base64.b64encode(b"x" * 65536).decode())
    assert len(instance_metadata.decode_user_data(instance)) == 65536


def test_user_data_one_byte_over_64_kib_is_a_typed_error_naming_the_sizes():
    instance = _instance(user_data=base64.b64encode(b"x" * 65537).decode())
    with pytest.raises(driver_errors.InstanceUserDataTooLarge) as err:
        instance_metadata.decode_user_data(instance)
    assert "65537" in str(err.value) and "65536" in str(err.value)
    assert instance.uuid in str(err.value)


def test_user_data_that_is_not_base64_is_a_typed_error():
    with pytest.raises(driver_errors.InstanceUserDataMalformed):
        instance_metadata.decode_user_data(_instance(user_data="not base64 !!"))


def test_no_user_data_is_none():
    assert instance_metadata.decode_user_data(_instance()) is None


def test_meta_data_has_the_openstack_fields():
    instance = _instance(project_id="p1", availability_zone="az1", launch_index=2,
                         key_name="k", key_data="ssh-ed25519 AAAA k@h",
                         metadata={"role": "web"})
    files = instance_metadata.injected_files_list([("/etc/a", "A"), ("/etc/b", b"B")])
    meta = instance_metadata.build_meta_data(instance, files)
    assert meta["uuid"] == instance.uuid
    assert meta["hostname"] == "web-1" and meta["name"] == "web-1"
    assert meta["launch_index"] == 2 and meta["availability_zone"] == "az1"
    assert meta["project_id"] == "p1"
    assert meta["public_keys"] == {"k": "ssh-ed25519 AAAA k@h"}
    assert meta["meta"] == {"role": "web"}
    assert meta["files"] == [{"path": "/etc/a", "content_path": "/content/0000"},
                             {"path": "/etc/b", "content_path": "/content/0001"}]
    assert files == [["/etc/a", b"A"], ["/etc/b", b"B"]]
