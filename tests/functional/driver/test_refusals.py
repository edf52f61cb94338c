"""What independent mode cannot serve is refused through the driver, clearly.

The agent runs as its own process on the local socket (the embedded default
transport); the driver is in the test process.
"""

import base64
import time

import pytest

from nova_xen_split import driver as nxs_driver
from nova_xen_split import driver_errors
from nova_xen_split import objects
from nova_xen_split import vm_utils
from rpc import exceptions, methods
from rpc import server as rpc_server
from tests.functional.driver.conftest import (full_flavor, image_meta, leftovers, load_conf,
                                              make_instance, spawn, wait_for_agent)


def test_independent_mode_with_check_host_refuses_to_start(xapi_sim, make_pair):
    pair = make_pair(xapi_sim, init=False,
                     driver_overrides={("xenserver", "check_host"): True})
    with pytest.raises(exceptions.NotSupportedWithOption) as err:
        wait_for_agent(pair)
    assert "[xenserver] check_host" in str(err.value)
    assert "independent mode" in str(err.value)


def test_independent_mode_with_flat_injected_refuses_to_start(xapi_sim, make_pair):
    pair = make_pair(xapi_sim, init=False,
                     driver_overrides={("DEFAULT", "flat_injected"): True})
    with pytest.raises(exceptions.NotSupportedWithOption) as err:
        wait_for_agent(pair)
    assert "flat_injected" in str(err.value)


def test_pool_join_is_refused_in_independent_mode_with_the_reason(xapi_sim, make_pair):
    pair = make_pair(xapi_sim)
    with pytest.raises(exceptions.UnsupportedInIndependentMode) as err:
        pair.driver.add_to_aggregate(None, {"name": "pool-a"}, "hv-2")
    assert "pool aggregate" in str(err.value) and "independent_compute" in str(err.value)


def test_resize_down_surfaces_the_agents_error_and_leaves_the_vm_running(xapi_sim, make_pair):
    pair = make_pair(xapi_sim)
    instance = make_instance(objects.Flavor(root_gb=2), config_drive="")
    spawn(pair, instance)
    disks_before = pair.counts()

    with pytest.raises(exceptions.UnsupportedInIndependentMode) as err:
        pair.driver.migrate_disk_and_power_off(
            None, instance, "hv-2", objects.Flavor(root_gb=1), [])

    assert "independent" in str(err.value)
    assert pair.driver.get_info(instance).state == vm_utils.RUNNING  # on again
    assert pair.counts() == disks_before
    pair.driver.destroy(None, instance)


def test_kernel_and_ramdisk_images_are_refused_and_nothing_is_made(xapi_sim, make_pair):
    pair = make_pair(xapi_sim)
    baseline = pair.counts()
    instance = make_instance()
    meta = image_meta(kernel_id="a4100000-0000-4000-8000-000000000001",
                      ramdisk_id="a4200000-0000-4000-8000-000000000001")
    meta.disk_format = "ami"

    with pytest.raises(exceptions.UnsupportedInIndependentMode) as err:
        spawn(pair, instance, meta)

    assert "kernel" in str(err.value)
    assert leftovers(pair, instance.uuid, baseline) == []


def test_user_data_over_64_kib_is_refused_before_any_disk_is_made(xapi_sim, make_pair):
    pair = make_pair(xapi_sim)
    baseline = pair.counts()
    instance = make_instance(full_flavor(), user_data=base64.b64encode(b"x" * 65537).decode())

    with pytest.raises(driver_errors.InstanceUserDataTooLarge):
        spawn(pair, instance)

    assert pair.counts() == baseline
    assert "fetch_image" not in pair.agent.output_tail(200)


def test_an_agent_that_never_answers_stops_init_host_within_the_startup_timeout(
        tmp_path, xapi_sim):
    config = tmp_path / "nxs.conf"
    config.write_text("[DEFAULT]\nhost = nobody\ntransport_url = unix://%s\n"
                      "[xenserver]\nconnection_url = %s\nconnection_password = xapi-sim\n"
                      "[agent]\nstartup_timeout = 2\nrpc_timeout = 1\n"
                      % (tmp_path / "none.sock", xapi_sim.url))
    driver = nxs_driver.XenSplitDriver(load_conf(str(config)))
    started = time.monotonic()
    with pytest.raises(driver_errors.AgentStartupFailed) as err:
        driver.init_host("nobody")
    assert time.monotonic() - started < 2 + 3
    assert "startup_timeout" in str(err.value) and "nobody" in str(err.value)
    driver.cleanup_host("nobody")


class _OldAgent:
    """An agent of an older release: it speaks interface 0.9.

    Such an agent cannot exist in this tree, so it is a stand-in endpoint
    behind the real RPC server and transport.
    """

    def describe(self):
        return {"mode": "in_guest", "vm_uuid": None, "host_uuid": "h", "host": "old",
                "version": "0.9", "capabilities": {}}

    def __getattr__(self, name):
        def refuse(**kwargs):
            raise AssertionError("an old agent must not be asked %s" % name)
        return refuse


def test_an_agent_speaking_an_older_interface_is_refused_at_init_host(tmp_path, xapi_sim):
    config = tmp_path / "nxs.conf"
    config.write_text("[DEFAULT]\nhost = old\ntransport_url = unix://%s\n"
                      "[xenserver]\nconnection_url = %s\nconnection_password = xapi-sim\n"
                      % (tmp_path / "old.sock", xapi_sim.url))
    server = rpc_server.AgentServer(load_conf(str(config)), _OldAgent(), host="old")
    server.start()
    driver = nxs_driver.XenSplitDriver(load_conf(str(config)))
    try:
        with pytest.raises(exceptions.VersionTooOld) as err:
            driver.init_host("old")
        assert "0.9" in str(err.value) and "1.0" in str(err.value)
    finally:
        driver.cleanup_host("old")
        server.stop()
        server.wait()


class _PublishingAgent:
    """An agent that publishes given capabilities under a given mode name.

    The real backends always publish their own declaration; this stand-in
    shows that the driver decides from what is published, not from the
    mode's name.
    """

    def __init__(self, mode, capabilities):
        self.mode = mode
        self.capabilities = capabilities

    def describe(self):
        return {"mode": self.mode, "vm_uuid": None, "host_uuid": "h", "host": "pub",
                "version": methods.VERSION, "capabilities": self.capabilities,
                "limitation": "a limitation published by the agent"}

    def __getattr__(self, name):
        def refuse(**kwargs):
            raise AssertionError("init_host must not ask %s" % name)
        return refuse


@pytest.mark.parametrize("mode,preconfigure,refused", [
    ("independent", True, False),   # the name says independent, the agent can: served
    ("in_guest", False, True),      # the name says in_guest, the agent cannot: refused
])
def test_init_host_decides_from_the_published_capabilities_not_the_mode_name(
        tmp_path, xapi_sim, mode, preconfigure, refused):
    capabilities = dict.fromkeys(methods.CAPABILITIES, True)
    capabilities["preconfigure_instance"] = preconfigure
    config = tmp_path / "nxs.conf"
    config.write_text("[DEFAULT]\nhost = pub\nflat_injected = true\ntransport_url = unix://%s\n"
                      "[xenserver]\nconnection_url = %s\nconnection_password = xapi-sim\n"
                      % (tmp_path / "pub.sock", xapi_sim.url))
    server = rpc_server.AgentServer(load_conf(str(config)),
                                    _PublishingAgent(mode, capabilities), host="pub")
    server.start()
    driver = nxs_driver.XenSplitDriver(load_conf(str(config)))
    try:
        if refused:
            with pytest.raises(exceptions.NotSupportedWithOption) as err:
                driver.init_host("pub")
            assert "[DEFAULT] flat_injected" in str(err.value)
            assert "a limitation published by the agent" in str(err.value)
        else:
            assert driver.init_host("pub")["mode"] == mode
    finally:
        driver.cleanup_host("pub")
        server.stop()
        server.wait()
