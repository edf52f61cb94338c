"""``--sr-type ext|lvm``: an LVM SR as SM's LVHD makes it (dom0/simulator/storage.py,
after xapi-project/sm libs/sm/lvhdutil.py calcSizeVHDLV and libs/sm/vhdutil.py
validate_and_round_vhd_size, calcOverheadEmpty, calcOverheadBitmap)."""

import http.client
import os
import subprocess
import sys
import urllib.parse

import pytest

from tests.functional.simulator.simhelpers import new_vdi, vdi_path, wait_task

MiB = 1 << 20


@pytest.fixture
def lvm(make_sim):
    return make_sim(extra_args=["--sr-type", "lvm", "--no-loop-devices"])


def _sr(xapi):
    return xapi.pool.get_default_SR(xapi.pool.get_all()[0])


def _put(sim, session_ref, vdi_ref, body, **query):
    parts = urllib.parse.urlsplit(sim.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    query = dict(query, session_id=session_ref, vdi=vdi_ref)
    try:
        conn.request("PUT", "/import_raw_vdi?" + urllib.parse.urlencode(query), body=body,
                     headers={"Content-Length": str(len(body))})
        response = conn.getresponse()
        return response.status, response.getheader("task-id")
    finally:
        conn.close()


def test_an_lvm_sr_has_no_directory_only_a_device(lvm):
    xapi = lvm.session().xenapi
    sr = _sr(xapi)
    assert xapi.SR.get_type(sr) == "lvm"
    assert xapi.SR.get_sm_config(sr)["allocation"] == "thick"
    configs = [xapi.PBD.get_device_config(pbd) for pbd in xapi.SR.get_PBDs(sr)]
    assert configs and all("path" not in c and "device" in c for c in configs)


def test_lvm_vdi_sizes_go_in_2_mib_steps_and_use_a_thick_volume(lvm):
    xapi = lvm.session().xenapi
    sr = _sr(xapi)
    vdi = new_vdi(xapi, sr, 3 * MiB + 1)
    assert xapi.VDI.get_virtual_size(vdi) == str(4 * MiB)
    # calcSizeVHDLV(4 MiB): 4 MiB + 4.13 MiB of metadata for 2 TiB
    # (calcOverheadEmpty) + two 4 KiB bitmaps, rounded up to the 4 MiB extent.
    assert xapi.VDI.get_physical_utilisation(vdi) == str(12 * MiB)
    assert xapi.SR.get_physical_utilisation(sr) == str(12 * MiB)
    tiny = new_vdi(xapi, sr, 1)
    assert xapi.VDI.get_virtual_size(tiny) == str(2 * MiB)  # MIN_VHD_SIZE
    xapi.VDI.resize(vdi, str(9 * MiB))
    assert xapi.VDI.get_virtual_size(vdi) == str(10 * MiB)
    assert xapi.VDI.get_physical_utilisation(vdi) == str(16 * MiB)
    assert xapi.SR.get_physical_utilisation(sr) == str(24 * MiB)  # and tiny's 8
    xapi.VDI.destroy(tiny)
    assert xapi.SR.get_physical_utilisation(sr) == str(16 * MiB)


def test_lvm_physical_utilisation_does_not_follow_the_data(lvm):
    xs = lvm.session()
    vdi = new_vdi(xs.xenapi, _sr(xs.xenapi), 8 * MiB)
    before = xs.xenapi.VDI.get_physical_utilisation(vdi)
    status, task = _put(lvm, xs._session, vdi, os.urandom(MiB), format="raw")
    assert status == 200 and wait_task(xs.xenapi, task) == "success"
    assert xs.xenapi.VDI.get_physical_utilisation(vdi) == before


@pytest.mark.parametrize("sr_type,allocated", [("ext", False), ("lvm", True)])
def test_a_raw_import_of_zeros_is_written_only_on_lvm(make_sim, sr_type, allocated):
    sim = make_sim(extra_args=["--sr-type", sr_type, "--no-loop-devices"])
    xs = sim.session()
    vdi = new_vdi(xs.xenapi, _sr(xs.xenapi), 4 * MiB)
    status, task = _put(sim, xs._session, vdi, bytes(4 * MiB), format="raw")
    assert status == 200 and wait_task(xs.xenapi, task) == "success"
    written = os.stat(vdi_path(sim, xs.xenapi, vdi)).st_blocks * 512
    assert (written >= 4 * MiB) is allocated


def test_an_ext_sr_keeps_its_directory_and_exact_sizes(make_sim):
    sim = make_sim(extra_args=["--no-loop-devices"])
    xapi = sim.session().xenapi
    sr = _sr(xapi)
    assert xapi.SR.get_type(sr) == "ext"
    [pbd] = xapi.SR.get_PBDs(sr)
    assert os.path.isdir(xapi.PBD.get_device_config(pbd)["path"])
    assert xapi.VDI.get_virtual_size(new_vdi(xapi, sr, 3 * MiB + 1)) == str(3 * MiB + 1)


def test_a_state_directory_keeps_its_sr_type(make_sim, tmp_path):
    sim = make_sim(state_dir=tmp_path / "kept", extra_args=["--no-loop-devices"])
    sim.stop()
    out = subprocess.run(
        [sys.executable, "-m", "dom0.simulator.server", "--state-dir", str(tmp_path / "kept"),
         "--sr-type", "lvm", "--no-loop-devices"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].endswith("SR is ext, not lvm")
