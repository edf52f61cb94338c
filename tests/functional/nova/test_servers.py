"""Servers through Nova's API on our driver, in both agent modes and over
both transports: boot, VIFs, stop/start, reboots, delete; placement."""

from nova_xen_split.xenhost import marks
from tests.functional.nova import base

GiB = 1024 ** 3


class ServerLifecycle:
    """The same operations for every mode and transport."""

    def test_a_server_boots_with_its_port_and_its_delete_leaves_nothing(self):
        before = self._left_on_the_simulator()
        server = self._boot(self._flavor("nxs.tiny"))
        self.assertEqual(self.host, server["OS-EXT-SRV-ATTR:host"])
        (vm,) = self._guest_vms()
        self.assertEqual("Running", vm["power_state"])
        self.assertEqual(server["OS-EXT-SRV-ATTR:instance_name"], vm["name_label"])
        xapi = self._xapi()
        (vif_ref,) = vm["VIFs"]
        vif = xapi.VIF.get_record(vif_ref)
        port = self.neutron.port_1
        self.assertEqual((port["mac_address"], "0", True),
                         (vif["MAC"], vif["device"], vif["currently_attached"]))
        self.assertEqual(port["id"], marks.vif_port(vif["other_config"]))
        self.assertEqual("br-int", xapi.network.get_bridge(vif["network"]))
        self._delete_server(server)
        self.assertEqual(before, self._left_on_the_simulator())

    def test_stop_start_and_soft_and_hard_reboots(self):
        server = self._boot(self._flavor("nxs.tiny"))
        (vm,) = self._guest_vms()
        xapi = self._xapi()
        vm_ref = xapi.VM.get_by_uuid(vm["uuid"])
        server = self._stop_server(server)
        self.assertEqual("Halted", xapi.VM.get_power_state(vm_ref))
        self.assertEqual(4, server["OS-EXT-STS:power_state"])  # SHUTDOWN, from get_info
        server = self._start_server(server)
        self.assertEqual("Running", xapi.VM.get_power_state(vm_ref))
        domids = [xapi.VM.get_domid(vm_ref)]
        for hard in (False, True):
            self.api.post_server_action(
                server["id"], {"reboot": {"type": "HARD" if hard else "SOFT"}})
            self.notifier.wait_for_versioned_notifications("instance.reboot.end")
            server = self._wait(server, "ACTIVE")
            domids.append(xapi.VM.get_domid(vm_ref))
        # Each reboot made a new domain of the same VM.
        self.assertEqual(3, len(set(domids)))
        self.assertEqual("Running", xapi.VM.get_power_state(vm_ref))
        self._delete_server(server)
        self.assertEqual([], self._guest_vms())


    def test_the_console_log_comes_from_dom0_through_the_agent(self):
        server = self._boot(self._flavor("nxs.tiny"))
        (vm,) = self._guest_vms()
        output = self.api.post_server_action(
            server["id"], {"os-getConsoleOutput": {"length": 20}})["output"]
        self.assertIn("domain %s started for VM %s" % (vm["domid"], vm["uuid"]), output)
        self.assertTrue(output.rstrip().endswith("login:"))
        self._delete_server(server)


    def test_resize_with_confirm_and_with_revert(self):
        server = self._boot(self._flavor("nxs.tiny"))
        (original,) = self._guest_vms()
        bigger = self._flavor("nxs.bigger", memory_mb=512, vcpus=2, disk=2)
        server = self._resize(server, bigger)
        vms = {vm["uuid"]: vm for vm in self._guest_vms()}
        self.assertEqual("Halted", vms.pop(original["uuid"])["power_state"])
        (resized,) = vms.values()
        self.assertEqual(("Running", "2", str(512 * 1024 * 1024)), (
            resized["power_state"], resized["VCPUs_max"], resized["memory_static_max"]))
        self.assertEqual(2 * GiB, self._root_bytes(resized))
        self.api.post_server_action(server["id"], {"confirmResize": None})
        server = self._wait(server, "ACTIVE")
        self._wait_for_migration_status(server, ["confirmed"])
        self.assertEqual([resized["uuid"]], [vm["uuid"] for vm in self._guest_vms()])

        even_bigger = self._flavor("nxs.biggest", memory_mb=768, vcpus=2, disk=3)
        server = self._resize(server, even_bigger)
        self.api.post_server_action(server["id"], {"revertResize": None})
        server = self._wait(server, "ACTIVE")
        self._wait_for_migration_status(server, ["reverted"])
        self.notifier.wait_for_versioned_notifications("instance.resize_revert.end",
                                                       timeout=60)
        (reverted,) = self._guest_vms()
        self.assertEqual((resized["uuid"], "Running"),
                         (reverted["uuid"], reverted["power_state"]))
        self.assertEqual(2 * GiB, self._root_bytes(reverted))
        self.assertEqual("nxs.bigger", server["flavor"]["original_name"])
        before_delete = self._left_on_the_simulator()
        self.assertEqual(1, before_delete["VM"])
        self._delete_server(server)
        self.assertEqual([], self._guest_vms())

    def _resize(self, server, flavor_id):
        self.api.post_server_action(server["id"], {"resize": {"flavorRef": flavor_id}})
        self.notifier.wait_for_versioned_notifications("instance.resize.end", timeout=60)
        return self._wait(server, "VERIFY_RESIZE")

    def _root_bytes(self, vm):
        xapi = self._xapi()
        for vbd in vm["VBDs"]:
            if xapi.VBD.get_userdevice(vbd) == "0":
                return int(xapi.VDI.get_virtual_size(xapi.VBD.get_VDI(vbd)))
        return None


class ResizeDown:
    """Resize down: it depends on the agent's mode, not on the transport."""

    def test_resize_down_where_the_mode_can_and_a_fault_where_it_cannot(self):
        # Nova never shrinks a root below the flavor the server was booted
        # with (its image_min_disk): grow it first, then shrink it back.
        server = self._boot(self._flavor("nxs.one", disk=1))
        server = self._resize(server, self._flavor("nxs.three", disk=3))
        self.api.post_server_action(server["id"], {"confirmResize": None})
        server = self._wait(server, "ACTIVE")
        self._wait_for_migration_status(server, ["confirmed"])
        (original,) = self._guest_vms()
        smaller = self._flavor("nxs.two", disk=2)
        if self.COMPUTE_VM:
            # in_guest: the agent copies the root's filesystem into a smaller disk.
            server = self._resize(server, smaller)
            resized = next(vm for vm in self._guest_vms() if vm["uuid"] != original["uuid"])
            self.assertEqual(2 * GiB, self._root_bytes(resized))
            self.api.post_server_action(server["id"], {"confirmResize": None})
            server = self._wait(server, "ACTIVE")
            self._wait_for_migration_status(server, ["confirmed"])
        else:
            self.api.post_server_action(server["id"], {"resize": {"flavorRef": smaller}})
            event = self._wait_for_action_fail_completion(
                server, "resize", "compute_resize_instance")
            self.assertIn("independent mode", event["details"])
            server = self._wait(server, "ACTIVE")
            self.assertEqual("nxs.three", server["flavor"]["original_name"])
            (vm,) = self._guest_vms()
            self.assertEqual((original["uuid"], "Running"), (vm["uuid"], vm["power_state"]))
        self._delete_server(server)
        self.assertEqual([], self._guest_vms())


class IndependentLocalSocket(ServerLifecycle, ResizeDown, base.XenSplitTestCase):
    COMPUTE_VM, TRANSPORT = False, "unix"


class IndependentRabbit(ServerLifecycle, base.XenSplitTestCase):
    COMPUTE_VM, TRANSPORT = False, "rabbit"


class InGuestLocalSocket(ServerLifecycle, ResizeDown, base.XenSplitTestCase):
    COMPUTE_VM, TRANSPORT = True, "unix"


class InGuestRabbit(ServerLifecycle, base.XenSplitTestCase):
    COMPUTE_VM, TRANSPORT = True, "rabbit"


# The same on an LVM SR (thick, no SR directory, VHD sizes in 2 MiB steps),
# as many hosts' local storage is.
class IndependentLvm(ServerLifecycle, base.XenSplitTestCase):
    COMPUTE_VM, TRANSPORT, SIM_ARGS = False, "unix", ("--sr-type", "lvm")


class InGuestLvm(ServerLifecycle, base.XenSplitTestCase):
    COMPUTE_VM, TRANSPORT, SIM_ARGS = True, "unix", ("--sr-type", "lvm")


class Placement(base.XenSplitTestCase):
    SIM_ARGS = ("--host-cpus", "6", "--host-memory-mb", "12288")

    def test_placement_has_the_hosts_inventory_and_the_servers_allocation(self):
        xapi = self._xapi()
        # The node is named as the old driver named it: the host's hostname in XAPI.
        nodename = xapi.host.get_hostname(xapi.host.get_all()[0])
        rp_uuid = self._get_provider_uuid_by_host(nodename)
        inventory = self._get_provider_inventory(rp_uuid)
        sr = xapi.SR.get_record(xapi.pool.get_default_SR(xapi.pool.get_all()[0]))
        self.assertEqual(6, inventory["VCPU"]["total"])
        self.assertEqual(12288, inventory["MEMORY_MB"]["total"])
        # Nova's reserve (512 MiB by default) and the control domain's 4 GiB.
        self.assertEqual(512 + 4096, inventory["MEMORY_MB"]["reserved"])
        self.assertEqual(int(sr["physical_size"]) // GiB, inventory["DISK_GB"]["total"])
        # Ratios are Nova's: its initial_*_allocation_ratio defaults.
        self.assertEqual(base.CONF.initial_cpu_allocation_ratio,
                         inventory["VCPU"]["allocation_ratio"])
        server = self._boot(self._flavor("nxs.small", memory_mb=1024, vcpus=2))
        usages = self._get_provider_usages(rp_uuid)
        self.assertEqual({"VCPU": 2, "MEMORY_MB": 1024, "DISK_GB": 1}, usages)
        self._delete_server(server)

    def test_a_flavor_larger_than_the_host_is_refused_by_the_scheduler(self):
        # 12288 MiB in all, 4608 reserved: 8 GiB is more than the host has.
        server = self._boot(self._flavor("nxs.huge", memory_mb=8192), expected_state="ERROR")
        self.assertIn("No valid host", server["fault"]["message"])
        self.assertEqual([], self._guest_vms())


class ConfigDrive(base.XenSplitTestCase):

    def test_force_config_drive_gives_the_server_a_config_drive(self):
        self.flags(force_config_drive=True)
        server = self._boot(self._flavor("nxs.tiny"))
        (vm,) = self._guest_vms()
        xapi = self._xapi()
        purposes = {}
        for vbd in vm["VBDs"]:
            mark = marks.read_vdi(xapi.VDI.get_other_config(xapi.VBD.get_VDI(vbd)))
            purposes[xapi.VBD.get_userdevice(vbd)] = mark.purpose
        self.assertEqual({"0": marks.ROOT, "3": marks.CONFIGDRIVE}, purposes)
        self._delete_server(server)


class Rescue(base.XenSplitTestCase):

    def test_rescue_boots_the_image_with_the_root_as_disk_1_and_unrescue_restores(self):
        server = self._boot(self._flavor("nxs.tiny"))
        (vm,) = self._guest_vms()
        xapi = self._xapi()
        root = next(xapi.VBD.get_VDI(vbd) for vbd in vm["VBDs"]
                    if xapi.VBD.get_userdevice(vbd) == "0")
        self.api.post_server_action(server["id"], {"rescue": {"adminPass": "s3cret"}})
        server = self._wait(server, "RESCUE")
        vms = {rec["uuid"]: rec for rec in self._guest_vms()}
        self.assertEqual("Halted", vms.pop(vm["uuid"])["power_state"])
        (rescuer,) = vms.values()
        self.assertEqual("Running", rescuer["power_state"])
        disks = {xapi.VBD.get_userdevice(vbd): xapi.VBD.get_VDI(vbd) for vbd in rescuer["VBDs"]}
        self.assertEqual(root, disks["1"])
        self.assertNotEqual(root, disks["0"])
        self.api.post_server_action(server["id"], {"unrescue": None})
        server = self._wait(server, "ACTIVE")
        (after,) = self._guest_vms()
        self.assertEqual((vm["uuid"], "Running"), (after["uuid"], after["power_state"]))
        before_delete = self._left_on_the_simulator()
        self.assertEqual(1, before_delete["VM"])
        self._delete_server(server)
        self.assertEqual([], self._guest_vms())

    def test_deleting_a_rescued_server_leaves_nothing(self):
        before = self._left_on_the_simulator()
        server = self._boot(self._flavor("nxs.tiny"))
        self.api.post_server_action(server["id"], {"rescue": None})
        server = self._wait(server, "RESCUE")
        self.assertEqual(2, len(self._guest_vms()))
        self._delete_server(server)
        self.assertEqual(before, self._left_on_the_simulator())
