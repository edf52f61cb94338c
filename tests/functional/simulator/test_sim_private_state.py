"""The simulator on a shared machine: its state is its user's alone.

Not XAPI behaviour (a real dom0 keeps its database in a root-only
/var/lib/xcp); the simulator keeps its database in ``db.json`` and
every VDI's bytes under its state directory, so another local user must
not be able to read them.
"""

import contextlib
import os
import stat
import uuid

from tests.functional.simulator.simhelpers import new_vbd, new_vdi, vdi_path
from tests.functional.simulator.vhdtestlib import build_vhd

MiB = 1 << 20


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_state_dir_is_0700_and_every_file_written_is_0600(loop_devices, make_sim, tmp_path):
    state = tmp_path / "shared"
    state.mkdir()
    os.chmod(state, 0o755)
    with umask(0):  # the files' modes must not depend on the caller's umask
        sim = make_sim(compute_vm=True, state_dir=state)
    assert mode(state) == 0o700
    xapi = sim.session().xenapi
    sr = xapi.pool.get_default_SR(xapi.pool.get_all()[0])
    dom0 = xapi.host.get_control_domain(xapi.pool.get_master(xapi.pool.get_all()[0]))

    vdi = new_vdi(xapi, sr, 4 * MiB)                        # VDI.create
    copy = xapi.VDI.copy(vdi, sr)                          # VDI.copy
    vbd = new_vbd(xapi, dom0, vdi)
    xapi.VBD.plug(vbd)                                     # loop-devices.json
    sr_dir = os.path.dirname(vdi_path(sim, xapi, vdi))
    dropped = os.path.join(sr_dir, "%s.vhd" % uuid.uuid4())
    build_vhd(dropped, 2 * MiB, [(0, b"scanned".ljust(512, b"\0"))])
    xapi.SR.scan(sr)                                       # a materialised VHD

    written = []
    for root, _, files in os.walk(state):
        written += [os.path.join(root, f) for f in files if os.path.join(root, f) != dropped]
    names = {os.path.basename(p) for p in written}
    assert {"db.json", "loop-devices.json", "uuid"} <= names
    assert os.path.basename(vdi_path(sim, xapi, copy)) in names
    assert os.path.basename(dropped)[:-len(".vhd")] + ".raw" in names
    assert {p: oct(mode(p)) for p in written if not os.path.islink(p)} == {
        p: oct(0o600) for p in written if not os.path.islink(p)}

    xapi.VBD.unplug(vbd)
    xapi.VBD.destroy(vbd)
    for ref in (copy, vdi, xapi.VDI.get_by_uuid(os.path.basename(dropped)[:-len(".vhd")])):
        xapi.VDI.destroy(ref)


def test_an_existing_database_is_rewritten_private(loop_devices, make_sim, tmp_path):
    state = tmp_path / "old"
    sim = make_sim(state_dir=state)
    sim.stop()
    os.chmod(state / "db.json", 0o644)  # as an earlier simulator left it
    os.chmod(state, 0o755)
    sim.start()
    assert mode(state) == 0o700 and mode(state / "db.json") == 0o600
