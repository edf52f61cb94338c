"""Servers through Nova's API on our driver: boot, delete, placement."""

from tests.functional.nova import base

GiB = 1024 ** 3


class IndependentLocalSocket(base.XenSplitTestCase):
    COMPUTE_VM = False
    TRANSPORT = "unix"
    SIM_ARGS = ("--host-cpus", "6", "--host-memory-mb", "12288")

    def test_a_server_boots_active_and_its_delete_leaves_nothing(self):
        before = self._left_on_the_simulator()
        server = self._boot(self._flavor("nxs.tiny"))
        self.assertEqual(self.host, server["OS-EXT-SRV-ATTR:host"])
        (vm,) = self._guest_vms()
        self.assertEqual("Running", vm["power_state"])
        self.assertEqual(server["OS-EXT-SRV-ATTR:instance_name"], vm["name_label"])
        self._delete_server(server)
        self.assertEqual(before, self._left_on_the_simulator())

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
