"""nova-xen-split-status takes --config-file before or after `upgrade check`."""

from nova_xen_split.cmd import status


def test_config_options_after_the_subcommand_move_in_front():
    argv = ["upgrade", "check", "--config-file", "a.conf", "--config-dir=d"]
    assert status._config_args_first(argv) == [
        "--config-file", "a.conf", "--config-dir=d", "upgrade", "check"]


def test_oslo_order_is_kept():
    argv = ["--config-file", "a.conf", "upgrade", "check", "--json"]
    assert status._config_args_first(argv) == argv


def test_help_names_the_command_heading_and_says_what_the_tool_does(capsys):
    import pytest
    with pytest.raises(SystemExit):
        status.main(["--help"])
    out = capsys.readouterr().out
    assert "\n:\n" not in out  # no bare heading
    assert "commands:" in out and "upgrade check" in out
