"""The driver's options inside nova.conf, and the configuration it runs on.

Under Nova the driver registers only options Nova does not own:

* ``[xenserver]``: the old in-tree XenAPI driver's names where they mean the
  same (Nova dropped the group, so an operator's old section still works):
  the XAPI connection, ``login_timeout``, ``check_host`` and
  ``ovs_integration_bridge``;
* ``[xensplit]``: how to reach the agent (``transport_url``, by default
  Nova's own broker, on the agent's topic) and the call timeouts.

Everything else it reads from Nova's own options (``[DEFAULT] host``,
``flat_injected``, ``default_ephemeral_format``, ``state_path``,
``transport_url``, ``[image_cache]`` and oslo.messaging's groups). :func:`driver_conf` builds
from them the private ``ConfigOpts`` the Nova-free driver underneath reads,
so nothing of ours is ever registered where Nova keeps its own.

The agent keeps its own config file (``etc/nova-xen-split.conf.sample``);
its ``[DEFAULT] host`` must be nova-compute's ``[DEFAULT] host``.
"""

from oslo_config import cfg

from nova_xen_split.xenhost import conf as nxs_conf
from rpc import transports

XENSERVER_GROUP = "xenserver"
XENSPLIT_GROUP = "xensplit"

# Our [xenserver] options the driver reads, by their (old in-tree) names.
XENSERVER_NAMES = ("connection_url", "connection_username", "connection_password",
                   "login_timeout", "check_host", "ovs_integration_bridge")
XENSERVER_OPTS = [opt for opt in nxs_conf.XENSERVER_OPTS if opt.name in XENSERVER_NAMES]

XENSPLIT_OPTS = [
    cfg.StrOpt(
        "transport_url",
        secret=True,
        help="How nova-compute reaches its nova-xen-split-agent. Unset: Nova's own "
        "[DEFAULT] transport_url, on the agent's topic (nova-xen-split-agent, "
        "server = [DEFAULT] host), so the agent's config file names the same "
        "broker and host. Or a broker of its own (rabbit://...), or "
        "unix:///path/to/agent.sock for an agent on the same machine "
        "listening on that socket ([agent] socket_path in its file).",
    ),
    cfg.FloatOpt(
        "rpc_timeout",
        default=60.0,
        min=0.1,
        help="Seconds to wait for an answer to a short agent call; during a "
        "long call, the longest silence of the agent accepted.",
    ),
    cfg.FloatOpt(
        "long_rpc_timeout",
        default=1800.0,
        min=0.1,
        help="Seconds to wait for long agent calls (image fetches, disk "
        "creation and copies), and for XAPI calls that last as long as a "
        "guest takes (clean shutdown).",
    ),
    cfg.FloatOpt(
        "startup_timeout",
        default=60.0,
        min=0.0,
        help="Seconds nova-compute's start waits for the agent to answer "
        "before it refuses to start.",
    ),
]

# Nova's options the driver reads, copied into its private configuration:
# (group, name) in Nova → (group, name) of ours.
FROM_NOVA = (
    (None, "host"),
    (None, "flat_injected"),
    (None, "state_path"),
    ("image_cache", "remove_unused_base_images"),
    ("image_cache", "remove_unused_original_minimum_age_seconds"),
)
_AGENT_FROM_XENSPLIT = ("rpc_timeout", "long_rpc_timeout", "startup_timeout")
# oslo.messaging's options that only one side may set: the URL is chosen
# above, and the exchange is named by our targets (rpc.transports.EXCHANGE).
_NOT_COPIED = frozenset({"transport_url", "control_exchange"})
# Nova's default_ephemeral_format unset means, for a Linux guest, ext4.
DEFAULT_EPHEMERAL_FORMAT = "ext4"


def register_opts(conf):
    """Register the driver's options on Nova's ``conf``."""
    conf.register_opts(XENSERVER_OPTS, group=XENSERVER_GROUP)
    conf.register_opts(XENSPLIT_OPTS, group=XENSPLIT_GROUP)


def list_opts():
    """The options for ``oslo-config-generator`` (``etc/nova.conf.sample-xensplit``)."""
    return [(XENSERVER_GROUP, XENSERVER_OPTS), (XENSPLIT_GROUP, XENSPLIT_OPTS)]


def driver_conf(nova_conf):
    """The private ``ConfigOpts`` of the driver, read from Nova's ``nova_conf``.

    Raises ``cfg.ConfigFileValueError`` naming the option when one of
    Nova's values is one the driver cannot serve (an ephemeral format it
    cannot make, say).
    """
    conf = cfg.ConfigOpts()
    nxs_conf.register_opts(conf)
    transports.register_opts(conf)
    conf([], project="nova-xen-split", default_config_files=[], default_config_dirs=[])
    for group, name in FROM_NOVA:
        conf.set_override(name, _read(nova_conf, group, name), group=group)
    ephemeral = nova_conf.default_ephemeral_format or DEFAULT_EPHEMERAL_FORMAT
    choices = list(next(opt for opt in nxs_conf.DEFAULT_OPTS
                        if opt.name == "default_ephemeral_format").type.choices)
    if ephemeral not in choices:
        raise cfg.ConfigFileValueError(
            "[DEFAULT] default_ephemeral_format = %s: nova-xen-split makes %s ephemeral "
            "disks" % (ephemeral, ", ".join(choices)))
    conf.set_override("default_ephemeral_format", ephemeral)
    for name in XENSERVER_NAMES:
        conf.set_override(name, nova_conf[XENSERVER_GROUP][name], group="xenserver")
    for name in _AGENT_FROM_XENSPLIT:
        conf.set_override(name, nova_conf[XENSPLIT_GROUP][name], group="agent")
    _copy_messaging_opts(nova_conf, conf)
    conf.set_override("transport_url",
                      nova_conf[XENSPLIT_GROUP].transport_url or _nova_transport_url(nova_conf))
    return conf


def _read(conf, group, name):
    return conf[name] if group is None else conf[group][name]


def _nova_transport_url(nova_conf):
    """Nova's ``[DEFAULT] transport_url``. nova-compute has registered it
    with its RPC before it loads a driver; a tool loading the driver before
    that gets it registered here, as oslo.messaging itself would."""
    try:
        return nova_conf.transport_url
    except cfg.NoSuchOptError:
        import oslo_messaging.opts

        for group, opts in oslo_messaging.opts.list_opts():
            if group in (None, "DEFAULT"):
                nova_conf.register_opts([opt for opt in opts if opt.dest == "transport_url"])
        return nova_conf.transport_url


def _copy_messaging_opts(nova_conf, conf):
    """oslo.messaging's options as nova.conf sets them (heartbeats, TLS,
    retries...), so the agent's broker is used as Nova uses its own."""
    import oslo_messaging.opts

    for group, opts in oslo_messaging.opts.list_opts():
        group_name = None if group in (None, "DEFAULT") else str(group)
        for opt in opts:
            if opt.dest in _NOT_COPIED:
                continue
            try:
                value = _read(nova_conf, group_name, opt.dest)
            except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
                continue  # Nova has not registered it: the default stands
            conf.set_override(opt.dest, value, group=group_name)
