"""The agent's endpoint behind a real ``rpc`` transport (local Unix socket).

Bad requests get typed errors and change nothing; good ones work end to end.
"""

import uuid

import pytest

from nova_xen_split.xenhost import xapi
from rpc import client as rpc_client
from rpc import exceptions
from rpc import server as rpc_server
from rpc import transports
from tests.functional.agent import disktools

# Image ids are Glance's: uuids.
IMAGE_ID = "0c2c5cf8-5b3f-4d2c-9a53-6e1d7f7d5a11"


@pytest.fixture(params=["in_guest", "independent"])
def served(request, make_sim, loop_devices, image_server, make_agent, tmp_path):
    mode = request.param
    agent = make_agent(make_sim(compute_vm=(mode == "in_guest")), mode, image_server)
    transports.register_opts(agent.conf)
    agent.conf.set_override("transport_url", "unix://%s" % (tmp_path / "agent.sock"))
    server = rpc_server.AgentServer(agent.conf, agent.endpoint, host=agent.conf.host)
    server.start()
    api = rpc_client.AgentAPI(agent.conf, host=agent.conf.host)
    yield agent, api
    api.close()
    server.stop()
    server.wait()


BAD_REQUESTS = [
    ("generate_disk", dict(kind="ephemeral", size_mb=0, fs_type="ext4", label="e0"),
     "size_mb"),
    ("generate_disk", dict(kind="ephemeral", size_mb=1 << 40, fs_type="ext4", label="e0"),
     "size_mb"),
    ("generate_disk", dict(kind="ephemeral", size_mb=64, fs_type="ext4",
                           label="x;rm -rf /"), "label"),
    ("generate_disk", dict(kind="ephemeral", size_mb=64, fs_type="xfs", label="e0"),
     "fs_type"),
    ("generate_disk", dict(kind="swap", size_mb=64, fs_type="ext4", label="swap"),
     "fs_type"),
    ("auto_configure_disk", dict(new_gb=0), "new_gb"),
    ("auto_configure_disk", dict(new_gb=10 ** 9), "new_gb"),
    ("auto_configure_disk", dict(new_gb=2), "vdi_uuid"),
    ("destroy_vdis", dict(), "vdi_uuids"),
    ("fetch_image", dict(image_id="../../etc/passwd", disk_format="raw"), "image_id"),
    ("fetch_image", dict(image_id="..", disk_format="raw"), "image_id"),
    ("fetch_image", dict(image_id=".", disk_format="vhd"), "image_id"),
    # Glance's form of an id is a uuid; nothing else reaches the image service.
    ("fetch_image", dict(image_id="cirros-0.6.2", disk_format="raw"), "image_id"),
    ("fetch_image", dict(image_id=IMAGE_ID.replace("-", ""), disk_format="raw"), "image_id"),
    ("fetch_image", dict(image_id=IMAGE_ID + "\n", disk_format="raw"), "image_id"),
    ("fetch_image", dict(image_id=IMAGE_ID + "0", disk_format="raw"), "image_id"),
    ("fetch_image", dict(image_id="%2e%2e", disk_format="raw"), "image_id"),
    ("fetch_image", dict(image_id=IMAGE_ID, disk_format="ami", kernel_id="k"), "kernel_id"),
    ("fetch_image", dict(image_id=IMAGE_ID, disk_format="qcow2"), "disk_format"),
]


@pytest.mark.parametrize("method,args,field", BAD_REQUESTS)
def test_a_bad_request_gets_invalid_request_naming_the_field_and_changes_nothing(
        served, image_server, method, args, field):
    agent, api = served
    args = dict(args)
    if method in ("generate_disk", "fetch_image"):
        args["instance_uuid"] = str(uuid.uuid4())
    if method == "auto_configure_disk":
        args["vdi_uuid"] = str(uuid.uuid4())  # exists nowhere
    if method == "destroy_vdis":
        args["vdi_uuids"] = [str(uuid.uuid4())]
    before = agent.vdi_uuids()

    with pytest.raises(exceptions.InvalidRequest) as caught:
        getattr(api, method)(**args)

    assert field in str(caught.value)
    assert agent.vdi_uuids() == before
    assert agent.tagged_vbds() == []
    assert image_server.requests == []  # nothing reached the image service


def test_generate_disk_through_the_socket_makes_a_labelled_swap_disk(served):
    agent, api = served

    made = api.generate_disk(instance_uuid=str(uuid.uuid4()), kind="swap", size_mb=32,
                             fs_type="swap", label="swap")

    found = disktools.probe(disktools.vdi_file(agent.sim, made["uuid"]), 2048 * 512)
    assert (found["TYPE"], found["LABEL"]) == ("swap", "swap")
    assert api.describe()["mode"] == agent.ctx.mode


def test_a_vfat_label_with_a_dot_is_refused_by_the_client_before_any_xapi_call(
        served, monkeypatch):
    """The table's rule for vfat labels (no '.') holds on the client: the
    call is not sent, so no VDI is made, plugged or partitioned first; and
    the agent refuses it the same way when a client sends it anyway."""
    agent, api = served
    xapi_calls = []
    real_call = xapi.XapiSession.call
    monkeypatch.setattr(xapi.XapiSession, "call", lambda self, method, *args: (
        xapi_calls.append(method), real_call(self, method, *args))[1])
    args = dict(instance_uuid=str(uuid.uuid4()), kind="ephemeral", size_mb=64,
                fs_type="vfat", label="a.b")

    with pytest.raises(exceptions.InvalidRequest) as by_client:
        api.generate_disk(**args)
    with pytest.raises(exceptions.InvalidRequest) as by_agent:
        api._call("generate_disk", "1.0", args, check=False)  # sent unchecked

    assert by_client.value.kwargs["field"] == by_agent.value.kwargs["field"] == "label"
    assert xapi_calls == []
