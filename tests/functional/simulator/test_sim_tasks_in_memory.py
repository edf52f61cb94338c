"""Tasks live in memory only, as in XAPI: never written to db.json, gone after a restart."""

import os

from tests.functional.simulator.simhelpers import new_vdi

MiB = 1 << 20


def _db_stat(sim):
    st = os.stat(os.path.join(sim.state_dir, "db.json"))
    return st.st_ino, st.st_mtime_ns  # a rewrite renames a new file over the old


def test_making_and_ending_tasks_does_not_rewrite_the_database(make_sim):
    sim = make_sim()
    xapi = sim.session().xenapi
    before = _db_stat(sim)

    task = xapi.task.create("upload", "one PUT")
    xapi.task.get_record(task)
    xapi.task.destroy(task)

    assert _db_stat(sim) == before


def test_restart_forgets_tasks_but_keeps_vdis(make_sim):
    sim = make_sim()
    xapi = sim.session().xenapi
    sr = xapi.pool.get_default_SR(xapi.pool.get_all()[0])
    xapi.task.create("left behind", "")
    vdi_uuid = xapi.VDI.get_uuid(new_vdi(xapi, sr, 4 * MiB, name="kept"))

    sim.restart()
    xapi = sim.session().xenapi

    assert xapi.task.get_all() == []
    assert xapi.VDI.get_name_label(xapi.VDI.get_by_uuid(vdi_uuid)) == "kept"
