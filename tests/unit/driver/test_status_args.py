"""nova-xen-split-status takes --config-file before or after `upgrade check`."""

from nova_xen_split.cmd import status


def test_config_options_after_the_subcommand_move_in_front():
    argv = ["upgrade", "check", "--config-file", "a.conf", "--config-dir=d"]
    assert status._config_args_first(argv) == [
        "--config-file", "a.conf", "--config-dir=d", "upgrade", "check"]


def test_oslo_order_is_kept():
    argv = ["--config-file", "a.conf", "upgrade", "check", "--json"]
    assert status._config_args_first(argv) == argv
