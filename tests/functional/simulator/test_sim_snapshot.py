"""VDI.snapshot and VDI.clone: XAPI's fields and errors, data copied sparsely."""

import datetime
import os

from tests.diskfiles import allocated_bytes
from tests.functional.simulator.simhelpers import (
    failure, new_vbd, new_vdi, small_ext2, vdi_path, wait_task)

MiB = 1 << 20
NULL = "OpaqueRef:NULL"


def _write(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _snapshot_time(xapi, vdi):
    value = xapi.VDI.get_snapshot_time(vdi)  # an XML-RPC dateTime.iso8601
    return datetime.datetime.strptime(value.value, "%Y%m%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc)


def test_snapshot_has_xapis_fields_and_keeps_data_and_holes(sim, xapi, sr_ref):
    vdi = new_vdi(xapi, sr_ref, 32 * MiB, name="root", other_config={"purpose": "root"},
                  sm_config={"k": "v"}, xenstore_data={"x": "y"}, tags=["t"])
    src = vdi_path(sim, xapi, vdi)
    _write(src, 0, b"head" * 1024)
    _write(src, 20 * MiB, b"tail" * 1024)
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    snap = xapi.VDI.snapshot(vdi)
    record = xapi.VDI.get_record(snap)
    assert snap != vdi and record["uuid"] != xapi.VDI.get_uuid(vdi)
    assert record["is_a_snapshot"] is True and record["snapshot_of"] == vdi
    assert xapi.VDI.get_snapshots(vdi) == [snap] and record["snapshots"] == []
    assert before <= _snapshot_time(xapi, snap) <= datetime.datetime.now(
        datetime.timezone.utc)
    # xapi_vdi.ml, snapshot_and_clone copies names, type, sharable,
    # other_config, xenstore_data, on_boot, allow_caching and tags; SM makes
    # the leaf read-write with its own sm_config.
    assert (record["name_label"], record["type"], record["other_config"],
            record["xenstore_data"], record["tags"]) == (
        "root", "user", {"purpose": "root"}, {"x": "y"}, ["t"])
    assert record["read_only"] is False and record["sm_config"] == {}
    assert record["virtual_size"] == str(32 * MiB) and record["SR"] == sr_ref
    assert snap in xapi.SR.get_VDIs(sr_ref)
    dst = vdi_path(sim, xapi, snap)
    assert _read(dst) == _read(src)
    assert allocated_bytes(dst) <= allocated_bytes(src) < MiB
    # The snapshot is its own data: a later write to the VDI does not reach it.
    _write(src, 0, b"HEAD")
    assert _read(dst)[:4] == b"head"
    # The source is unchanged by being snapshotted.
    assert xapi.VDI.get_is_a_snapshot(vdi) is False
    assert xapi.VDI.get_snapshot_of(vdi) == NULL
    xapi.VDI.destroy(snap)
    assert xapi.VDI.get_snapshots(vdi) == [] and not os.path.exists(dst)
    xapi.VDI.destroy(vdi)


def test_clone_is_a_copy_that_is_not_a_snapshot(sim, xapi, sr_ref):
    vdi = new_vdi(xapi, sr_ref, 8 * MiB, read_only=True, sharable=True)
    _write(vdi_path(sim, xapi, vdi), 3 * MiB, b"data" * 256)
    clone = xapi.VDI.clone(vdi, {"base_mirror": "m", "other": "dropped"})
    record = xapi.VDI.get_record(clone)
    assert record["is_a_snapshot"] is False and record["snapshot_of"] == NULL
    assert xapi.VDI.get_snapshots(vdi) == []
    assert _snapshot_time(xapi, clone).year >= 2024  # storage_smapiv1.ml: "now"
    # storage_smapiv1.ml, sm_config_keys_to_preserve_on_clone: base_mirror only.
    assert record["sm_config"] == {"base_mirror": "m"}
    assert record["read_only"] is False and record["sharable"] is True
    assert _read(vdi_path(sim, xapi, clone)) == _read(vdi_path(sim, xapi, vdi))
    for ref in (clone, vdi):
        xapi.VDI.destroy(ref)


def test_snapshot_of_a_plugged_vdi_holds_what_was_written_to_the_device(
        sim, xapi, sr_ref, dom0_ref):
    # xapi_vdi.ml, check_operation_error: snapshot and clone may run while
    # a VBD is plugged read-write. What the device has taken must be in the
    # snapshot, unsynced writes included (SM pauses the tapdisk first).
    vdi = new_vdi(xapi, sr_ref, 4 * MiB)
    vbd = new_vbd(xapi, dom0_ref, vdi)
    xapi.VBD.plug(vbd)
    try:
        dev = os.path.join(sim.state_dir, "vms", xapi.VM.get_uuid(dom0_ref), "dev",
                           xapi.VBD.get_device(vbd))
        fd = os.open(dev, os.O_WRONLY)
        try:
            os.pwrite(fd, b"unsynced" * 512, MiB)  # buffered, no fsync
            snap = xapi.VDI.snapshot(vdi)
            clone = xapi.VDI.clone(vdi)
        finally:
            os.close(fd)
    finally:
        xapi.VBD.unplug(vbd)
        xapi.VBD.destroy(vbd)
    for ref in (snap, clone):
        with open(vdi_path(sim, xapi, ref), "rb") as f:
            f.seek(MiB)
            assert f.read(4096) == b"unsynced" * 512
    for ref in (snap, clone, vdi):
        xapi.VDI.destroy(ref)


def test_snapshot_refusals_follow_check_operation_error(xapi, sr_ref):
    sharable = new_vdi(xapi, sr_ref, MiB, sharable=True)
    assert failure(xapi.VDI.snapshot, sharable) == ["VDI_IS_SHARABLE", sharable]
    reset = new_vdi(xapi, sr_ref, MiB)
    xapi.VDI.set_on_boot(reset, "reset")
    assert failure(xapi.VDI.snapshot, reset) == [
        "VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION"]
    cbt = new_vdi(xapi, sr_ref, MiB, type="cbt_metadata")
    for op in (xapi.VDI.snapshot, xapi.VDI.clone):
        assert failure(op, cbt) == ["VDI_INCOMPATIBLE_TYPE", cbt, "cbt_metadata"]
    assert failure(xapi.VDI.snapshot, "OpaqueRef:missing") == [
        "HANDLE_INVALID", "VDI", "OpaqueRef:missing"]
    assert failure(xapi.VDI.clone, sharable, {"k": 1})[0] == "INTERNAL_ERROR"
    vdis = xapi.VDI.get_all()
    assert failure(xapi.VDI.clone, "OpaqueRef:missing")[0] == "HANDLE_INVALID"
    assert xapi.VDI.get_all() == vdis  # nothing made by a refused call
    for ref in (sharable, reset, cbt):
        xapi.VDI.destroy(ref)


def test_async_snapshot_task_result_is_the_snapshot(xapi, sr_ref):
    vdi = new_vdi(xapi, sr_ref, 4 * MiB)
    task = xapi.Async.VDI.snapshot(vdi)
    assert wait_task(xapi, task) == "success"
    result = xapi.task.get_result(task)
    snap = result[len("<value>"):-len("</value>")]
    assert xapi.VDI.get_snapshot_of(snap) == vdi
    xapi.task.destroy(task)
    for ref in (snap, vdi):
        xapi.VDI.destroy(ref)


def test_snapshot_that_runs_out_of_space_leaves_nothing(loop_devices, make_sim, tmp_path):
    # FileSR.py, FileVDI._snapshot: a failed vhd-util is VDIClone
    # (SR_BACKEND_FAILURE_81); no file or record of the new VDI is left.
    with small_ext2(tmp_path / "ext2.img", tmp_path / "state") as state:
        sim = make_sim(state_dir=state)
        try:
            xapi = sim.session().xenapi
            sr = xapi.pool.get_default_SR(xapi.pool.get_all()[0])
            vdi = new_vdi(xapi, sr, 12 * MiB)
            _write(vdi_path(sim, xapi, vdi), 0, b"\x5a" * 9 * MiB)
            files = sorted(os.listdir(os.path.dirname(vdi_path(sim, xapi, vdi))))
            details = failure(xapi.VDI.snapshot, vdi)
            assert details[0] == "SR_BACKEND_FAILURE_81"
            assert details[2] == "Failed to clone VDI [opterr=VDI clone failed error 28]"
            assert xapi.VDI.get_all() == [vdi] and xapi.VDI.get_snapshots(vdi) == []
            assert sorted(os.listdir(os.path.dirname(vdi_path(sim, xapi, vdi)))) == files
        finally:
            sim.stop()
