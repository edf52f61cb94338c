"""A failure at any step of an operation leaves no VBD and no new VDI.

The failure is injected through ``agent.backends.base.checkpoint``, the
hook every operation calls between its steps (a no-op in production).
"""

import time
import uuid

import pytest

from agent.backends import base
from nova_xen_split.cmd import demo_env
from nova_xen_split.xenhost import marks
from rpc import dispatch, methods
from tests.functional.agent import disktools

MiB = 1 << 20


class InjectedFailure(Exception):
    pass


def _fail_at(monkeypatch, step):
    seen = []

    def checkpoint(name):
        seen.append(name)
        if name == step:
            raise InjectedFailure(step)

    monkeypatch.setattr(base, "checkpoint", checkpoint)
    return seen


def _vhd_tarball(tmp_path):
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(4 * MiB)
        f.seek(MiB)
        f.write(b"vhd data" * 512)
    tarball = tmp_path / "image.tar"
    demo_env.make_vhd_tarball(str(raw), str(tarball))
    return tarball


def _raw_disk(tmp_path):
    raw = tmp_path / "image.raw"
    with open(raw, "wb") as f:
        f.truncate(8 * MiB)
        f.write(b"raw image data" * 100)
    return raw


def _operations(agent, image_server, tmp_path):
    raw_id = image_server.add(_raw_disk(tmp_path))
    vhd_id = image_server.add(_vhd_tarball(tmp_path))
    ep = agent.endpoint
    return {
        "generate_disk": lambda inst: ep.generate_disk(
            instance_uuid=inst, kind="ephemeral", size_mb=16, fs_type="ext4",
            label="ephemeral0"),
        "generate_configdrive": lambda inst: ep.generate_configdrive(
            instance_uuid=inst, metadata={"uuid": inst}, files=[]),
        "fetch_raw": lambda inst: ep.fetch_image(
            instance_uuid=inst, image_id=raw_id, disk_format="raw"),
        "fetch_vhd": lambda inst: ep.fetch_image(
            instance_uuid=inst, image_id=vhd_id, disk_format="vhd"),
    }


STEPS = {
    ("in_guest", "generate_disk"): ["attached", "partitioned", "formatted"],
    ("independent", "generate_disk"): ["attached", "partitioned", "formatted"],
    ("in_guest", "generate_configdrive"): ["built", "attached", "written"],
    ("independent", "generate_configdrive"): ["built", "uploaded"],
    ("in_guest", "fetch_raw"): ["attached", "written"],
    ("independent", "fetch_raw"): ["created", "uploaded"],
    ("in_guest", "fetch_vhd"): ["downloaded", "scanned"],
    ("independent", "fetch_vhd"): ["downloaded", "scanned"],
}


@pytest.mark.parametrize("operation", ["generate_disk", "generate_configdrive",
                                       "fetch_raw", "fetch_vhd"])
def test_a_failure_at_every_step_leaves_nothing_and_a_retry_then_succeeds(
        agent, image_server, tmp_path, monkeypatch, operation):
    run = _operations(agent, image_server, tmp_path)[operation]
    before = agent.vdi_uuids()
    instance = str(uuid.uuid4())

    for step in STEPS[(agent.ctx.mode, operation)]:
        seen = _fail_at(monkeypatch, step)
        with pytest.raises(InjectedFailure):
            run(instance)
        assert step in seen
        assert agent.tagged_vbds() == [], step
        assert agent.vdi_uuids() == before, step

    monkeypatch.setattr(base, "checkpoint", lambda name: None)
    made = run(instance)
    assert made


def test_a_failure_while_growing_leaves_no_vbd_and_the_data_intact(
        agent, tmp_path, monkeypatch):
    made = agent.endpoint.generate_disk(
        instance_uuid=str(uuid.uuid4()), kind="ephemeral", size_mb=32,
        fs_type="ext4", label="root")
    path = disktools.vdi_file(agent.sim, made["uuid"])
    disktools.ext_write(path, 2048 * 512, "/kept.txt", b"kept\n", tmp_path)

    for step in ("inspected", "resized"):
        _fail_at(monkeypatch, step)
        with pytest.raises(InjectedFailure):
            agent.endpoint.auto_configure_disk(vdi_uuid=made["uuid"], new_gb=1)
        assert agent.tagged_vbds() == []
        clean, output = disktools.e2fsck_clean(path, 2048 * 512)
        assert clean, output

    monkeypatch.setattr(base, "checkpoint", lambda name: None)
    agent.endpoint.auto_configure_disk(vdi_uuid=made["uuid"], new_gb=1)
    assert disktools.ext_read(path, 2048 * 512, "/kept.txt") == b"kept\n"


def test_in_guest_resize_disk_failing_at_any_step_leaves_nothing(
        make_sim, loop_devices, make_agent, tmp_path, monkeypatch):
    agent = make_agent(make_sim(compute_vm=True), "in_guest")
    instance = str(uuid.uuid4())
    source = agent.endpoint.generate_disk(
        instance_uuid=instance, kind="ephemeral", size_mb=1100, fs_type="ext4",
        label="root")
    before = agent.vdi_uuids()

    for step in ("attached", "partitioned", "copied"):
        _fail_at(monkeypatch, step)
        with pytest.raises(InjectedFailure):
            agent.endpoint.resize_disk(instance_uuid=instance, vdi_uuid=source["uuid"],
                                       new_gb=1)
        assert agent.tagged_vbds() == [], step
        assert agent.vdi_uuids() == before, step


def test_cleanup_attached_vdis_removes_tagged_vbds_and_half_made_vdis(agent):
    from agent import vdis
    session = agent.session
    sr = vdis.default_sr(session)
    half_made = vdis.create(session, sr, 8 * MiB, str(uuid.uuid4()), "root", agent.ctx.tag,
                            {"image_id": "half-made"})
    vm_ref = agent.ctx.vm_ref or agent.ctx.dom0_ref
    vbd = session.call("VBD.create", {
        "VM": vm_ref, "VDI": half_made, "userdevice": "autodetect", "bootable": False,
        "mode": "RW", "type": "Disk", "unpluggable": True, "empty": False,
        "other_config": marks.vbd_marks(agent.ctx.tag), "qos_algorithm_type": "",
        "qos_algorithm_params": {}})
    session.call("VBD.plug", vbd)
    foreign = vdis.create(session, sr, 8 * MiB, str(uuid.uuid4()), "root", "another-agent",
                          {"image_id": "foreign"})

    cleaned = agent.endpoint.cleanup_attached_vdis()

    assert cleaned == {"unplugged": 1, "destroyed": 1}
    assert agent.tagged_vbds() == []
    assert agent.agent_vdis(state="in-progress") == []
    assert session.call("VDI.get_uuid", foreign)  # another agent's work stays


def test_a_snapshot_waiting_for_its_upload_outlives_cleanup_until_it_is_old(agent):
    # The driver marks its VDI.snapshot in-progress for this agent before
    # it sends upload_snapshot; a settling round in between must not
    # destroy it. Once older than twice long_rpc_timeout, no upload can
    # still be coming: it is a crash's leftover and goes.
    from agent import vdis
    session = agent.session
    sr = vdis.default_sr(session)
    instance = str(uuid.uuid4())
    root = vdis.create(session, sr, 8 * MiB, instance, "root", agent.ctx.tag,
                       {"image_id": "root"})
    snap = session.call("VDI.snapshot", root, {})
    session.call("VDI.set_other_config", snap, marks.snapshot_marks(instance, agent.ctx.tag))
    session.call("VDI.destroy", root)
    taken = vdis.xapi_time(session.call("VDI.get_snapshot_time", snap))
    assert taken is not None and abs(time.time() - taken) < 600

    cleaned = agent.endpoint.cleanup_attached_vdis()
    assert cleaned["destroyed"] == 0
    assert session.call("VDI.get_is_a_snapshot", snap)      # still there

    grace = 2 * agent.conf.agent.long_rpc_timeout
    vms = [ref for ref in (agent.ctx.vm_ref, agent.ctx.dom0_ref) if ref]
    assert vdis.cleanup(session, vms, agent.ctx.tag, set(), snapshot_grace=grace,
                        now=taken + grace + 1)["destroyed"] == 1
    assert snap not in session.call("VDI.get_all")


def test_xapi_times_read_as_xapi_writes_them():
    import xmlrpc.client

    from agent import vdis
    assert vdis.xapi_time("20261206T02:40:00Z") == 1796524800
    assert vdis.xapi_time(xmlrpc.client.DateTime("20261206T02:40:00")) == 1796524800
    assert vdis.xapi_time("19700101T00:00:00Z") is None     # XAPI's "never"
    assert vdis.xapi_time("") is None
    assert vdis.xapi_time("yesterday") is None


@pytest.mark.parametrize("method", ["generate_disk", "fetch_vhd", "fetch_raw"])
def test_a_disk_finished_after_its_caller_gave_up_is_destroyed_not_handed_over(
        agent, image_server, tmp_path, monkeypatch, method):
    # The caller's call timed out while the disk was being made; its undo
    # has swept the instance already, so a disk handed over now would be
    # kept by nobody. The transport tells the dispatcher the caller is gone
    # (a closed socket, a passed deadline); here the test does, from the
    # operation's first step on, through a real Dispatcher.
    instance = str(uuid.uuid4())
    args = {
        "generate_disk": ("generate_disk", dict(instance_uuid=instance, kind="swap",
                                                size_mb=64, fs_type="swap", label="swap")),
        "fetch_vhd": ("fetch_image", dict(
            instance_uuid=instance, image_id=image_server.add(_vhd_tarball(tmp_path)),
            disk_format="vhd")),
        "fetch_raw": ("fetch_image", dict(
            instance_uuid=instance, image_id=image_server.add(_raw_disk(tmp_path)),
            disk_format="raw")),
    }[method]
    gone = []
    monkeypatch.setattr(base, "checkpoint", gone.append)
    dispatcher = dispatch.Dispatcher(agent.endpoint, workers=1, host="test")
    name, call_args = args
    before = agent.vdi_uuids()

    envelope = dispatcher.run(methods.METHODS[name], methods.validate(name, call_args),
                              lambda: "it timed out" if gone else None)

    assert gone, "the operation passed no step"
    assert envelope["error"]["type"] == "CallExpired", envelope
    assert "its caller gave up (it timed out), so the VDI is destroyed" in \
        envelope["error"]["message"]
    assert agent.vdi_uuids() == before
    assert agent.tagged_vbds() == []
    # The same call from a caller still waiting hands its disk over.
    kept = dispatcher.run(methods.METHODS[name], methods.validate(name, call_args),
                          lambda: None)
    assert "result" in kept, kept
