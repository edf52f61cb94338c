"""A VDI.create that fails leaves nothing behind: no file, no record."""

import os

from tests.functional.simulator.simhelpers import failure, new_vdi, small_ext2

GiB = 1 << 30


def _sr_files(sim, xapi, sr):
    return sorted(os.listdir(os.path.join(sim.state_dir, "sr", xapi.SR.get_uuid(sr))))


def test_a_size_too_large_for_the_file_system_leaves_no_file(loop_devices, make_sim,
                                                             tmp_path):
    # SM's FileSR.py, FileVDI.create: a VHD that cannot be made is VDICreate
    # (SR_BACKEND_FAILURE_78); the simulator's file for it is removed.
    with small_ext2(tmp_path / "ext2.img", tmp_path / "state") as state:
        sim = make_sim(state_dir=state)
        try:
            xapi = sim.session().xenapi
            sr = xapi.pool.get_default_SR(xapi.pool.get_all()[0])
            before = (_sr_files(sim, xapi, sr), xapi.VDI.get_all())
            assert failure(new_vdi, xapi, sr, 32 * GiB) == [
                "SR_BACKEND_FAILURE_78", "", "VDI Creation failed [opterr=error 27]", ""]
            assert (_sr_files(sim, xapi, sr), xapi.VDI.get_all()) == before
            vdi = new_vdi(xapi, sr, GiB)  # what fits still works
            xapi.VDI.destroy(vdi)
        finally:
            sim.stop()


def test_a_size_past_the_vhd_limit_is_refused_before_any_file(sim, xapi, sr_ref):
    # libs/sm/vhdutil.py, validate_and_round_vhd_size: at most MAX_VHD_SIZE
    # (2040 GiB), VDISize (SR_BACKEND_FAILURE_79) otherwise.
    before = (_sr_files(sim, xapi, sr_ref), xapi.VDI.get_all())
    assert failure(new_vdi, xapi, sr_ref, 2041 * GiB) == [
        "SR_BACKEND_FAILURE_79", "",
        "VDI Invalid size [opterr=VDI size must be between 1 MB and 2088960 MB]", ""]
    assert (_sr_files(sim, xapi, sr_ref), xapi.VDI.get_all()) == before
