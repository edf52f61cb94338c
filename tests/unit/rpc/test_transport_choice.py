"""Which wire ``[DEFAULT] transport_url`` selects."""

import pytest
from oslo_config import cfg

from nova_xen_split.xenhost import conf as nxs_conf
from rpc import transports


def _conf(transport_url):
    conf = cfg.ConfigOpts()
    nxs_conf.register_opts(conf)
    transports.register_opts(conf)
    conf(args=[], default_config_files=[], default_config_dirs=[])
    conf.set_override("state_path", "/var/lib/nxs")
    conf.set_override("transport_url", transport_url)
    return conf


@pytest.mark.parametrize("url, path", [
    (None, "/var/lib/nxs/agent.sock"),
    ("unix:///run/nxs/agent.sock", "/run/nxs/agent.sock"),
    ("unix://", "/var/lib/nxs/agent.sock"),
    ("rabbit://guest:guest@127.0.0.1:5672/", None),
])
def test_transport_url_selects_the_socket_or_the_broker(url, path):
    assert transports.socket_path(_conf(url)) == path


def test_registering_options_twice_is_harmless_and_adds_tracing_options():
    conf = _conf(None)
    transports.register_opts(conf)
    assert conf.oslo_messaging_tracing.tracing_enabled is False
    assert conf.oslo_messaging_metrics.metrics_enabled is False


def test_an_unconfigured_transport_url_means_the_embedded_socket(tmp_path):
    # oslo.messaging's own default is "rabbit://"; a config file that says
    # nothing about transport_url must still select the Unix socket.
    config_file = tmp_path / "agent.conf"
    config_file.write_text("[DEFAULT]\nstate_path = %s\n" % tmp_path)
    conf = cfg.ConfigOpts()
    nxs_conf.register_opts(conf)
    transports.register_opts(conf)
    conf(args=["--config-file", str(config_file)], default_config_files=[],
         default_config_dirs=[])
    assert transports.socket_path(conf) == str(tmp_path / "agent.sock")


def test_oslo_messaging_can_still_register_its_options_after_ours():
    import oslo_messaging
    conf = _conf("rabbit://guest:guest@127.0.0.1:5672/")
    transport = oslo_messaging.get_rpc_transport(conf)
    transport.cleanup()
