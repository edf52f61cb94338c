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


class IndependentLocalSocket(ServerLifecycle, base.XenSplitTestCase):
    COMPUTE_VM, TRANSPORT = False, "unix"


class IndependentRabbit(ServerLifecycle, base.XenSplitTestCase):
    COMPUTE_VM, TRANSPORT = False, "rabbit"


class InGuestLocalSocket(ServerLifecycle, base.XenSplitTestCase):
    COMPUTE_VM, TRANSPORT = True, "unix"


class InGuestRabbit(ServerLifecycle, base.XenSplitTestCase):
    COMPUTE_VM, TRANSPORT = True, "rabbit"


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
