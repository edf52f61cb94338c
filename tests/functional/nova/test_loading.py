"""nova-compute 34 loads the driver by the name nova.conf gives it."""

import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest

DRIVER_NAME = "xensplit.XenSplitDriver"


@pytest.fixture
def nova_conf():
    """Nova's global configuration, parsed with no file, reset afterwards."""
    import nova.conf
    from nova.virt import fake

    conf = nova.conf.CONF
    conf([], project="nova", default_config_files=[], default_config_dirs=[])
    yield conf, fake.FakeVirtAPI()
    conf.reset()
    conf.clear_override("host")


def test_nova_loads_the_driver_by_its_compute_driver_name(nova_conf):
    from nova.virt import driver as nova_driver

    from nova_xen_split.virt.driver import XenSplitDriver

    conf, virtapi = nova_conf
    loaded = nova_driver.load_compute_driver(virtapi, DRIVER_NAME)
    assert type(loaded) is XenSplitDriver
    assert isinstance(loaded, nova_driver.ComputeDriver)


def test_every_method_takes_what_nova_34_passes():
    """Each method we define takes exactly the base class's parameters
    (names, order, defaults), so the compute manager's calls cannot raise
    TypeError: spawn with accel_info, power_on and reboot with share_info."""
    from nova.virt import driver as nova_driver

    from nova_xen_split.virt.driver import XenSplitDriver

    checked = []
    for name, ours in vars(XenSplitDriver).items():
        theirs = getattr(nova_driver.ComputeDriver, name, None)
        if name.startswith("_") or not callable(ours) or not callable(theirs):
            continue
        assert _parameters(ours) == _parameters(theirs), name
        checked.append(name)
    assert {"spawn", "power_on", "reboot", "destroy", "init_host", "rescue", "unrescue",
            "update_provider_tree"} <= set(checked)


def _parameters(function):
    """What a call can pass: names, kinds and defaults (annotations aside)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_capabilities_are_novas_with_ours_over_them():
    from nova.virt import driver as nova_driver

    from nova_xen_split.virt.driver import XenSplitDriver

    caps = XenSplitDriver.capabilities
    assert set(nova_driver.ComputeDriver.capabilities) <= set(caps)
    assert caps["supports_migrate_to_same_host"] is True
    assert caps["supports_image_type_vhd"] is True
    assert caps["supports_attach_interface"] is False


def test_the_driver_registers_no_option_nova_owns():
    """In a fresh process set up as nova-compute is (Nova's options, its
    RPC's), loading the driver adds exactly the groups [xenserver] and
    [xensplit], and no option to any group Nova has."""
    script = textwrap.dedent("""
        import json, oslo_messaging
        import nova.conf
        from nova.virt import driver, fake
        conf = nova.conf.CONF
        conf([], project="nova", default_config_files=[], default_config_dirs=[])
        oslo_messaging.get_rpc_transport(conf, url="fake:/")  # as nova.rpc.init does
        def options():
            found = {"DEFAULT": sorted(conf)}
            for group in conf.list_all_sections():
                try:
                    found[group] = sorted(conf[group])
                except Exception:
                    pass
            return found
        before = options()
        driver.load_compute_driver(fake.FakeVirtAPI(), "%s")
        print(json.dumps([before, options()]))
    """ % DRIVER_NAME)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, OS_NOVA_DISABLE_EVENTLET_PATCHING="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    before, after = json.loads(out.stdout.splitlines()[-1])
    assert set(after["DEFAULT"]) - set(before["DEFAULT"]) == {"xenserver", "xensplit"}
    for group, names in before.items():
        if group != "DEFAULT":
            assert after.get(group) == names, group


def test_the_driver_reads_novas_own_options(nova_conf):
    from nova.virt import driver as nova_driver

    conf, virtapi = nova_conf
    conf.set_override("host", "hv-17")
    conf.set_override("flat_injected", True)
    conf.set_override("transport_url", "rabbit://nova:secret@broker:5672/")
    conf.set_override("connection_url", "http://xen.example", group="xenserver")
    conf.set_override("remove_unused_base_images", False, group="image_cache")
    conf.set_override("remove_unused_original_minimum_age_seconds", 1234, group="image_cache")
    driver = nova_driver.load_compute_driver(virtapi, DRIVER_NAME)
    ours = driver._core._conf
    assert ours.image_cache.remove_unused_base_images is False
    assert ours.image_cache.remove_unused_original_minimum_age_seconds == 1234
    assert ours.host == "hv-17"
    assert ours.flat_injected is True
    assert ours.default_ephemeral_format == "ext4"  # Nova's unset: ext4 for Linux guests
    assert ours.transport_url == "rabbit://nova:secret@broker:5672/"
    assert ours.xenserver.connection_url == "http://xen.example"


def test_an_own_transport_url_wins_over_novas(nova_conf):
    from nova.virt import driver as nova_driver

    conf, virtapi = nova_conf
    conf.set_override("transport_url", "rabbit://nova@broker:5672/")
    conf.set_override("transport_url", "unix:///run/nxs/agent.sock", group="xensplit")
    driver = nova_driver.load_compute_driver(virtapi, DRIVER_NAME)
    assert driver._core._conf.transport_url == "unix:///run/nxs/agent.sock"


def test_an_ephemeral_format_the_driver_cannot_make_is_refused_naming_it(nova_conf):
    from oslo_config import cfg

    from nova_xen_split.virt import conf as virt_conf

    conf, _ = nova_conf
    virt_conf.register_opts(conf)
    conf.set_override("default_ephemeral_format", "xfs")
    with pytest.raises(cfg.ConfigFileValueError, match="default_ephemeral_format = xfs"):
        virt_conf.driver_conf(conf)


def test_novas_broker_settings_reach_the_agents_client(nova_conf):
    """oslo.messaging's options as nova.conf sets them (heartbeats, TLS...)
    are the driver's too."""
    import oslo_messaging.opts

    from nova.virt import driver as nova_driver

    conf, virtapi = nova_conf
    # What loading the rabbit driver registers in nova-compute.
    for group, opts in oslo_messaging.opts.list_opts():
        if group == "oslo_messaging_rabbit":
            conf.register_opts(opts, group=group)
    conf.set_override("heartbeat_timeout_threshold", 17, group="oslo_messaging_rabbit")
    conf.set_override("ssl", True, group="oslo_messaging_rabbit")
    driver = nova_driver.load_compute_driver(virtapi, DRIVER_NAME)
    ours = driver._core._conf.oslo_messaging_rabbit
    assert (ours.heartbeat_timeout_threshold, ours.ssl) == (17, True)
