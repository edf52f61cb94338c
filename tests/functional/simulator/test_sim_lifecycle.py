"""Restarts, shutdown hygiene and the degraded device modes."""

import os
import signal
import subprocess
import time

from tests.functional.simulator.conftest import loops_under
from tests.functional.simulator.simhelpers import (
    new_vbd, new_vdi, new_vm, vdi_path, wait_for)

MiB = 1 << 20


def _plugged_dom0_disk(sim):
    xapi = sim.session().xenapi
    host = xapi.pool.get_master(xapi.pool.get_all()[0])
    dom0 = xapi.host.get_control_domain(host)
    sr = xapi.pool.get_default_SR(xapi.pool.get_all()[0])
    vdi = new_vdi(xapi, sr, 8 * MiB)
    vbd = new_vbd(xapi, dom0, vdi)
    xapi.VBD.plug(vbd)
    return xapi, vdi, vbd


def test_restart_keeps_vdis_vms_and_their_data(loop_devices, make_sim):
    sim = make_sim()
    xapi = sim.session().xenapi
    sr = xapi.pool.get_default_SR(xapi.pool.get_all()[0])
    vdi = new_vdi(xapi, sr, 8 * MiB, name="kept", other_config={"state": "ready"})
    with open(vdi_path(sim, xapi, vdi), "r+b") as f:
        f.seek(MiB)
        f.write(b"persistent bytes")
    vm = new_vm(xapi, "kept-vm")
    vdi_uuid, vm_uuid = xapi.VDI.get_uuid(vdi), xapi.VM.get_uuid(vm)
    sim.restart()
    xapi = sim.session().xenapi
    vdi = xapi.VDI.get_by_uuid(vdi_uuid)
    assert xapi.VDI.get_name_label(vdi) == "kept"
    assert xapi.VDI.get_other_config(vdi) == {"state": "ready"}
    assert xapi.VM.get_name_label(xapi.VM.get_by_uuid(vm_uuid)) == "kept-vm"
    with open(vdi_path(sim, xapi, vdi), "rb") as f:
        f.seek(MiB)
        assert f.read(16) == b"persistent bytes"


def test_sigterm_detaches_every_loop_device_and_exits_zero(loop_devices, make_sim):
    sim = make_sim()
    xapi, vdi, vbd = _plugged_dom0_disk(sim)
    assert len(loops_under(sim.state_dir)) == 1
    proc = sim.proc
    sim.stop(signal.SIGTERM)
    assert proc.returncode == 0
    assert loops_under(sim.state_dir) == []


def test_after_sigkill_the_next_start_detaches_and_marks_vbds_unplugged(loop_devices, make_sim):
    sim = make_sim()
    xapi, vdi, vbd = _plugged_dom0_disk(sim)
    vbd_uuid = xapi.VBD.get_uuid(vbd)
    sim.stop(signal.SIGKILL)
    assert len(loops_under(sim.state_dir)) == 1  # SIGKILL leaves the device behind
    sim.start()
    assert loops_under(sim.state_dir) == []
    xapi = sim.session().xenapi
    vbd = xapi.VBD.get_by_uuid(vbd_uuid)
    assert xapi.VBD.get_currently_attached(vbd) is False
    dom0 = xapi.VBD.get_VM(vbd)
    assert os.listdir(sim.vm_dev_dir(xapi.VM.get_uuid(dom0))) == []
    xapi.VBD.plug(vbd)  # and it can be plugged again
    xapi.VBD.unplug(vbd)


def test_without_loop_devices_the_device_is_the_plain_file(loop_devices, make_sim):
    sim = make_sim(extra_args=["--no-loop-devices"])
    xapi, vdi, vbd = _plugged_dom0_disk(sim)
    dom0 = xapi.VBD.get_VM(vbd)
    link = os.path.join(sim.vm_dev_dir(xapi.VM.get_uuid(dom0)), xapi.VBD.get_device(vbd))
    assert os.readlink(link) == vdi_path(sim, xapi, vdi)
    assert loops_under(sim.state_dir) == []
    xapi.VBD.unplug(vbd)
    assert not os.path.lexists(link)


def test_no_partition_devices_leaves_partitions_to_the_caller(loop_devices, make_sim):
    sim = make_sim(extra_args=["--no-partition-devices"])
    xapi, vdi, vbd = _plugged_dom0_disk(sim)
    dom0 = xapi.VBD.get_VM(vbd)
    dev_dir = sim.vm_dev_dir(xapi.VM.get_uuid(dom0))
    device = os.path.join(dev_dir, xapi.VBD.get_device(vbd))
    subprocess.run(["sfdisk", "-q", device], input="2048,;\n", text=True, check=True,
                   capture_output=True, timeout=60)
    time.sleep(0.3)  # several watcher periods: nothing may appear
    assert sorted(os.listdir(dev_dir)) == [xapi.VBD.get_device(vbd)]
    xapi.VBD.unplug(vbd)


def test_partition_links_follow_the_table_while_plugged(loop_devices, make_sim):
    sim = make_sim()
    xapi, vdi, vbd = _plugged_dom0_disk(sim)
    dom0 = xapi.VBD.get_VM(vbd)
    dev_dir = sim.vm_dev_dir(xapi.VM.get_uuid(dom0))
    name = xapi.VBD.get_device(vbd)
    device = os.path.join(dev_dir, name)
    subprocess.run(["sfdisk", "-q", device], input="2048,4096\n8192,;\n", text=True,
                   check=True, capture_output=True, timeout=60)
    assert wait_for(lambda: sorted(os.listdir(dev_dir)) == [name, name + "1", name + "2"])
    subprocess.run(["sfdisk", "-q", "--delete", device, "2"], check=True,
                   capture_output=True, timeout=60)
    assert wait_for(lambda: sorted(os.listdir(dev_dir)) == [name, name + "1"])
    xapi.VBD.unplug(vbd)
    assert os.listdir(dev_dir) == []
