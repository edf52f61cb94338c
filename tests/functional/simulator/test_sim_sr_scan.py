"""SR.scan introduces VHD chains dropped into the SR directory, as the image plugin does."""

import os
import subprocess
import uuid

from tests.diskfiles import allocated_bytes
from tests.functional.simulator.simhelpers import failure, new_vbd, vdi_path
from tests.functional.simulator.vhdtestlib import apply_writes, build_vhd

MiB = 1 << 20


def _sr_dir(xapi, sr_ref):
    (pbd,) = xapi.SR.get_PBDs(sr_ref)
    return xapi.PBD.get_device_config(pbd)["path"]


def test_scan_introduces_a_qemu_made_vhd_with_its_content(sim, xapi, sr_ref, tmp_path):
    source = tmp_path / "disk.raw"
    with open(source, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(3 * MiB)
        f.write(b"image data" * 100)
    leaf_uuid = str(uuid.uuid4())
    vhd = os.path.join(_sr_dir(xapi, sr_ref), leaf_uuid + ".vhd")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic",
                    str(source), vhd], check=True, capture_output=True, timeout=60)
    xapi.SR.scan(sr_ref)
    vdi = xapi.VDI.get_by_uuid(leaf_uuid)
    record = xapi.VDI.get_record(vdi)
    assert record["managed"] is True and record["SR"] == sr_ref
    size = int(record["virtual_size"])
    assert size >= 8 * MiB  # qemu-img rounds to its CHS geometry
    with open(vdi_path(sim, xapi, vdi), "rb") as f:
        data = f.read()
    assert data[:8 * MiB] == source.read_bytes() and data[8 * MiB:].count(0) == size - 8 * MiB
    assert allocated_bytes(vdi_path(sim, xapi, vdi)) < 2 * MiB
    xapi.SR.scan(sr_ref)  # a second scan introduces nothing new
    assert xapi.VDI.get_by_uuid(leaf_uuid) == vdi
    xapi.VDI.destroy(vdi)
    assert not os.path.exists(vhd)


def test_scan_links_a_chain_and_destroying_the_leaf_collects_the_base(
        sim, xapi, sr_ref, dom0_ref, tmp_path):
    sr_dir = _sr_dir(xapi, sr_ref)
    base_uuid, leaf_uuid = str(uuid.uuid4()), str(uuid.uuid4())
    base = os.path.join(sr_dir, base_uuid + ".vhd")
    leaf = os.path.join(sr_dir, leaf_uuid + ".vhd")
    base_writes = [(0, b"B" * 4096), (5 * MiB, b"b" * 512)]
    leaf_writes = [(512, b"L" * 1024)]
    build_vhd(base, 6 * MiB, base_writes)
    build_vhd(leaf, 6 * MiB, leaf_writes, parent_path=base)
    xapi.SR.scan(sr_ref)
    leaf_vdi = xapi.VDI.get_by_uuid(leaf_uuid)
    base_vdi = xapi.VDI.get_by_uuid(base_uuid)
    assert xapi.VDI.get_managed(leaf_vdi) is True
    assert xapi.VDI.get_managed(base_vdi) is False
    assert xapi.VDI.get_sm_config(leaf_vdi)["vhd-parent"] == base_uuid
    expected = tmp_path / "expected.raw"
    with open(expected, "wb") as f:
        f.truncate(6 * MiB)
    apply_writes(str(expected), base_writes + leaf_writes)
    assert open(vdi_path(sim, xapi, leaf_vdi), "rb").read() == expected.read_bytes()
    # A base is not for use: XAPI refuses to plug an unmanaged VDI.
    vbd = new_vbd(xapi, dom0_ref, base_vdi, mode="RO")
    assert failure(xapi.VBD.plug, vbd) == ["VDI_NOT_MANAGED", vbd]
    xapi.VBD.destroy(vbd)
    xapi.VDI.destroy(leaf_vdi)
    assert failure(xapi.VDI.get_record, base_vdi)[0] == "HANDLE_INVALID"
    assert not os.path.exists(base) and not os.path.exists(leaf)


def test_scan_of_a_corrupt_vhd_is_an_sr_backend_failure(xapi, sr_ref):
    bad_uuid = str(uuid.uuid4())
    path = os.path.join(_sr_dir(xapi, sr_ref), bad_uuid + ".vhd")
    with open(path, "wb") as f:
        f.write(b"not a vhd" * 100)
    try:
        details = failure(xapi.SR.scan, sr_ref)
        assert details[0] == "SR_BACKEND_FAILURE_40"
        assert bad_uuid in details[2]
        assert failure(xapi.VDI.get_by_uuid, bad_uuid)[0] == "UUID_INVALID"
    finally:
        os.unlink(path)


def test_scan_forgets_vdis_whose_file_is_gone(sim, xapi, sr_ref):
    from tests.functional.simulator.simhelpers import new_vdi
    vdi = new_vdi(xapi, sr_ref, MiB)
    os.unlink(vdi_path(sim, xapi, vdi))
    xapi.SR.scan(sr_ref)
    assert failure(xapi.VDI.get_record, vdi)[0] == "HANDLE_INVALID"
