"""``nova-xen-split-status upgrade check --config-file F``.

Checks a configuration before deployment, as ``nova-status upgrade check``
does (``oslo.upgradecheck``): XAPI answers the configured credentials, the
agent answers on the configured transport and speaks our interface, which
mode it chose, and whether that mode can serve the options set. The exit
code is the worst result: 0 success, 1 warning, 2 failure.
"""

import sys

from oslo_config import cfg
from oslo_upgradecheck import upgradecheck

from nova_xen_split import driver as nxs_driver
from nova_xen_split.xenhost import conf as nxs_conf
from nova_xen_split.xenhost import xapi
from rpc import exceptions, methods

Code = upgradecheck.Code
Result = upgradecheck.Result
# A status check should answer quickly even when the agent is down.
CHECK_RPC_TIMEOUT = 10.0


class Checks(upgradecheck.UpgradeCommands):
    """The checks, in the order they are shown."""

    def __init__(self, conf):
        self.conf = conf
        self._description = None
        self._agent_error = None

    def _describe(self):
        if self._description is None and self._agent_error is None:
            from rpc import client
            timeout = min(self.conf.agent.rpc_timeout, CHECK_RPC_TIMEOUT)
            agent = None
            try:
                agent = client.AgentAPI(self.conf, host=self.conf.host)
                self.conf.set_override("rpc_timeout", timeout, group="agent")
                self._description = agent.check_version(need=nxs_driver.REQUIRED_AGENT_VERSION)
            except (exceptions.NovaXenSplitError, OSError) as e:
                self._agent_error = e
            finally:
                self.conf.clear_override("rpc_timeout", group="agent")
                if agent is not None:
                    agent.close()
        return self._description

    def _check_xapi(self):
        url = xapi.redacted_url(self.conf.xenserver.connection_url)
        try:
            session = xapi.session_from_conf(self.conf)
        except exceptions.XapiFailure as e:
            return Result(Code.FAILURE, "XAPI at %s refused or did not answer: %s. Check "
                          "[xenserver] connection_url, connection_username and "
                          "connection_password." % (url, " ".join(e.details)))
        try:
            name = session.call("host.get_name_label", session.host_ref)
        finally:
            session.logout()
        return Result(Code.SUCCESS, "XAPI at %s answers as host %s." % (url, name))

    def _check_agent(self):
        description = self._describe()
        if description is None:
            return Result(Code.FAILURE, "The agent for host %s did not answer: %s. Start "
                          "nova-xen-split-agent with this configuration (same [DEFAULT] "
                          "host and transport_url)." % (self.conf.host, self._agent_error))
        if not methods.version_serves(description["version"], methods.VERSION):
            return Result(Code.WARNING, "The agent for host %s answers, interface %s, older "
                          "than this driver's %s: upgrade nova-xen-split-agent. Until then "
                          "calls that need %s are not made (with flat_injected, the SSH key "
                          "and metadata are not written into images)." % (
                              self.conf.host, description["version"], methods.VERSION,
                              methods.VERSION))
        return Result(Code.SUCCESS, "The agent for host %s answers, interface %s." % (
            self.conf.host, description["version"]))

    def _check_mode(self):
        description = self._describe()
        if description is None:
            return Result(Code.WARNING, "Mode unknown: the agent did not answer.")
        capabilities = description.get("capabilities") or {}
        lacking = sorted(name for name in methods.CAPABILITIES if not capabilities.get(name))
        detail = "%s (VM %s)" % (description["mode"], description["vm_uuid"] or "none")
        if lacking:
            detail += "; it cannot serve %s: %s" % (
                ", ".join(lacking), description.get("limitation") or "no reason published")
        return Result(Code.SUCCESS, "Mode %s on hypervisor host %s." % (
            detail, description["host_uuid"]))

    def _check_options(self):
        description = self._describe()
        if description is None:
            return Result(Code.WARNING, "Cannot tell which options the mode serves: the "
                          "agent did not answer.")
        refused = nxs_conf.options_refused(self.conf, description.get("capabilities"))
        if refused:
            return Result(Code.FAILURE, "The agent's %s mode cannot serve %s = True (%s); "
                          "set it to False (the driver refuses to start otherwise)." % (
                              description["mode"],
                              ", ".join(option for option, _ in refused),
                              "; ".join(methods.CAPABILITIES[cap] for _, cap in refused)))
        return Result(Code.SUCCESS, "No option set that the agent's %s mode cannot serve."
                      % description["mode"])

    _upgrade_checks = (
        ("XAPI reachable", _check_xapi),
        ("Agent reachable", _check_agent),
        ("Agent mode", _check_mode),
        ("Options the mode cannot serve", _check_options),
    )


def _config_args_first(argv):
    """Accept ``upgrade check --config-file F`` as well as oslo's order.

    oslo.config takes ``--config-file``/``--config-dir`` only before the
    sub-command; operators write them after it too.
    """
    front, rest = [], []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("--config-file", "--config-dir") and args:
            front += [arg, args.pop(0)]
        elif arg.startswith(("--config-file=", "--config-dir=")):
            front.append(arg)
        else:
            rest.append(arg)
    return front + rest


PROG = "nova-xen-split-status"
EXIT_FAILURE = 2  # upgradecheck's own code for a failed check


def main(argv=None):
    conf = cfg.ConfigOpts()
    nxs_conf.register_opts(conf)
    argv = _config_args_first(sys.argv[1:] if argv is None else argv)
    checks = Checks(conf)

    def add_parsers(subparsers):
        upgrade = subparsers.add_parser(
            "upgrade", help="check that this configuration can be served")
        upgrade.add_argument("check", help="run the checks")
        upgrade.add_argument("--json", action="store_true",
                             help="print the results as JSON instead of a table")
        upgrade.set_defaults(action_fn=checks.check)

    # oslo.upgradecheck's own registration leaves the sub-command heading
    # empty (a bare ':' in --help); the same command, with words.
    conf.register_cli_opt(cfg.SubCommandOpt(
        "command", title="commands", handler=add_parsers,
        help="'upgrade check' is the only one"))
    try:
        conf(args=argv, project="nova-xen-split", default_config_files=None,
             description="Checks a nova-xen-split configuration as nova-status upgrade "
             "check does: XAPI, the agent, its mode and the options it can serve. Exit "
             "status 0 (all passed), 1 (a warning), 2 (a failure).")
        return upgradecheck.run(conf)
    except cfg.Error as e:  # a missing or unreadable config file, a bad value
        sys.stderr.write("%s: %s\n" % (PROG, (str(e).splitlines() or [""])[0]))
    except KeyboardInterrupt:
        sys.stderr.write("%s: interrupted\n" % PROG)
    return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
