"""The endpoint validates the whole request before the backend sees it."""

import uuid

import pytest

from agent import endpoint
from rpc import exceptions

# Image ids are Glance's: uuids.
IMAGE_ID = "0c2c5cf8-5b3f-4d2c-9a53-6e1d7f7d5a11"


class RecordingBackend:
    """Stands in for a backend: records what reached it (the real backends
    are exercised against xapi-sim in tests/functional/agent)."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def verb(**kwargs):
            self.calls.append((name, kwargs))
            return {}
        return verb


@pytest.fixture
def recorded():
    backend = RecordingBackend()
    return endpoint.AgentEndpoint(backend), backend


INSTANCE = str(uuid.uuid4())
BAD = [
    ("generate_disk", dict(instance_uuid=INSTANCE, kind="ephemeral", size_mb=0,
                           fs_type="ext4", label="e0"), "size_mb"),
    ("generate_disk", dict(instance_uuid=INSTANCE, kind="ephemeral", size_mb=2,
                           fs_type="ext4", label="e0"), "size_mb"),
    ("generate_disk", dict(instance_uuid=INSTANCE, kind="ephemeral", size_mb=64,
                           fs_type="ext4", label="$(reboot)"), "label"),
    ("generate_disk", dict(instance_uuid=INSTANCE, kind="ephemeral", size_mb=64,
                           fs_type="vfat", label="twelve-chars"), "label"),
    ("generate_disk", dict(instance_uuid=INSTANCE, kind="ephemeral", size_mb=64,
                           fs_type="swap", label="swap"), "fs_type"),
    ("generate_disk", dict(instance_uuid="not-a-uuid", kind="swap", size_mb=64,
                           fs_type="swap", label="swap"), "instance_uuid"),
    ("fetch_image", dict(instance_uuid=INSTANCE, image_id=IMAGE_ID, disk_format="raw",
                         kernel_id="k"), "kernel_id"),
    ("generate_configdrive", dict(instance_uuid=INSTANCE, metadata={"uuid": "other"}),
     "metadata"),
    ("generate_configdrive", dict(instance_uuid=INSTANCE, metadata={"uuid": INSTANCE},
                                  files=[["../etc/shadow", b"x"]]), "files[0][0]"),
    ("preconfigure_instance", dict(vdi_uuid=INSTANCE, files=[["/a/../../b", b"x"]]),
     "files[0][0]"),
    ("preconfigure_instance", dict(vdi_uuid=INSTANCE, network_config="auto lo\n",
                                   files=[["/a", b""], ["/etc/network/interfaces", b"x"]]),
     "files[1]"),
    ("preconfigure_instance", dict(vdi_uuid=INSTANCE, ssh_key="ssh-rsa A k",
                                   files=[["/root/.ssh", b"x"]]), "files[0]"),
    ("preconfigure_instance", dict(vdi_uuid=INSTANCE, metadata={},
                                   files=[["/meta.js/x", b"x"]]), "files[0]"),
    ("destroy_vdis", dict(vdi_uuids=[INSTANCE, INSTANCE]), "vdi_uuids"),
    ("destroy_vdis", dict(vdi_uuids=[]), "vdi_uuids"),
    ("resize_disk", dict(instance_uuid=INSTANCE, vdi_uuid=INSTANCE, new_gb=65537),
     "new_gb"),
]


@pytest.mark.parametrize("method,args,field", BAD)
def test_bad_requests_raise_invalid_request_and_never_reach_the_backend(
        recorded, method, args, field):
    ep, backend = recorded

    with pytest.raises(exceptions.InvalidRequest) as caught:
        getattr(ep, method)(**args)

    assert caught.value.kwargs["field"] == field
    assert backend.calls == []


def test_a_good_request_reaches_the_backend_with_every_argument(recorded):
    ep, backend = recorded

    ep.generate_disk(instance_uuid=INSTANCE, kind="swap", size_mb=64, fs_type="swap",
                     label="swap")

    assert backend.calls == [("generate_disk", dict(
        instance_uuid=INSTANCE, kind="swap", size_mb=64, fs_type="swap", label="swap"))]
