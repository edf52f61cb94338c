"""VDI.clone on an SR that shares blocks (XFS with reflink): it costs what
XAPI's VHD clone costs, metadata and no data, and a plugged clone reads its
parent's data with its own writes on top while the parent stays as it was."""

import hashlib
import os

import pytest

from tests.functional.simulator.simhelpers import new_vbd, new_vdi, vdi_path

MiB = 1 << 20


@pytest.fixture
def xfs_xapi(make_xfs_sim):
    sim = make_xfs_sim()
    session = sim.session()
    yield sim, session.xenapi
    session.xenapi.session.logout()


def _free_bytes(path):
    st = os.statvfs(os.path.dirname(path))
    return st.f_bfree * st.f_frsize


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_a_fresh_clone_owns_no_blocks_and_reads_its_parent(xfs_xapi):
    sim, xapi = xfs_xapi
    sr_ref = xapi.pool.get_default_SR(xapi.pool.get_all()[0])
    parent = new_vdi(xapi, sr_ref, 256 * MiB)
    parent_path = vdi_path(sim, xapi, parent)
    with open(parent_path, "r+b") as f:
        for offset in range(0, 256 * MiB, 16 * MiB):  # 64 MiB of data, holes between
            f.seek(offset)
            f.write(os.urandom(4 * MiB))
    before = _sha(parent_path)
    assert int(xapi.VDI.get_physical_utilisation(parent)) == 64 * MiB
    free_before = _free_bytes(parent_path)

    clone = xapi.VDI.clone(parent, {})

    # Blocks now shared count for neither (as a VHD clone's parent data moves
    # to a hidden base copy); the SR lost metadata, not 64 MiB.
    assert int(xapi.VDI.get_physical_utilisation(clone)) < MiB
    assert free_before - _free_bytes(parent_path) < 4 * MiB
    assert _sha(vdi_path(sim, xapi, clone)) == before
    for ref in (clone, parent):
        xapi.VDI.destroy(ref)


def test_a_plugged_clone_reads_its_parent_with_its_own_writes_on_top(xfs_xapi):
    sim, xapi = xfs_xapi
    sr_ref = xapi.pool.get_default_SR(xapi.pool.get_all()[0])
    host_ref = xapi.host.get_all()[0]
    dom0_ref = xapi.host.get_control_domain(host_ref)
    parent = new_vdi(xapi, sr_ref, 32 * MiB)
    with open(vdi_path(sim, xapi, parent), "r+b") as f:
        f.write(b"parent" * (MiB // 6))
    before = _sha(vdi_path(sim, xapi, parent))
    clone = xapi.VDI.clone(parent, {})
    vbd = new_vbd(xapi, dom0_ref, clone)
    xapi.VBD.plug(vbd)
    try:
        dev = os.path.join(sim.state_dir, "vms", xapi.VM.get_uuid(dom0_ref), "dev",
                           xapi.VBD.get_device(vbd))
        fd = os.open(dev, os.O_RDWR)
        try:
            assert os.pread(fd, 12, 0) == b"parentparent"
            os.pwrite(fd, b"CLONE!", 6)
            os.fsync(fd)
            assert os.pread(fd, 18, 0) == b"parentCLONE!parent"
        finally:
            os.close(fd)
    finally:
        xapi.VBD.unplug(vbd)
        xapi.VBD.destroy(vbd)

    assert _sha(vdi_path(sim, xapi, parent)) == before
    with open(vdi_path(sim, xapi, clone), "rb") as f:
        assert f.read(18) == b"parentCLONE!parent"
    assert 0 < int(xapi.VDI.get_physical_utilisation(clone)) <= MiB
    for ref in (clone, parent):
        xapi.VDI.destroy(ref)
