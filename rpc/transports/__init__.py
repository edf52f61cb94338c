"""The two wires that carry the interface, and the choice between them.

``[DEFAULT] transport_url`` unset or ``unix:///path`` → a local Unix socket
(:mod:`rpc.transports.local_server`, ``local_client``); anything ``oslo.messaging`` understands
(``rabbit://…``) → oslo.messaging RPC (:mod:`rpc.transports.rabbit`).
Both expose the same two objects: a client with ``call(method, version,
args, timeout) -> envelope`` and ``close()``, and a server with
``start()``, ``stop()``, ``wait()``.
"""

import urllib.parse

TOPIC = "nova-xen-split-agent"
# The exchange both ends name in their targets. Left to the configuration
# it is [DEFAULT] control_exchange, whose default each service sets for
# itself (oslo_messaging.set_transport_defaults; Nova sets "nova"), so a
# driver inside nova-compute and an agent outside it would publish and
# listen on different exchanges and no call would ever be answered.
EXCHANGE = "openstack"


def register_opts(conf):
    """Register oslo.messaging's options on ``conf``.

    The project's own options (``[DEFAULT] host``, ``[agent] ...``) are the
    caller's to register (``nova_xen_split.xenhost.conf.register_opts``): ``rpc``
    imports nothing of the project's.

    oslo.messaging registers most of its options lazily, on the first
    transport, but ``transport_url`` must be readable before we know
    whether a transport is wanted at all. ``list_opts()`` returns equal
    copies, and registering an equal option twice is a no-op. Its tracing
    and metrics options are registered only on the global ``cfg.CONF`` by
    oslo.messaging 18, yet read from the transport's own ``conf``.
    """
    import oslo_messaging.opts

    for group, opts in oslo_messaging.opts.list_opts():
        conf.register_opts(opts, group=group)
    for module_name, attr, group in (
            ("oslo_messaging._tracing.client", "oslo_messaging_tracing",
             "oslo_messaging_tracing"),
            ("oslo_messaging._metrics.client", "oslo_messaging_metrics",
             "oslo_messaging_metrics")):
        try:
            module = __import__(module_name, fromlist=[attr])
        except ImportError:  # older oslo.messaging: nothing to add
            continue
        conf.register_opts(getattr(module, attr), group=group)
    # oslo.messaging defaults transport_url to "rabbit://"; ours is the
    # embedded Unix socket, so "unset" must really read as unset.
    # set_default keeps the registered option itself unchanged, so
    # oslo.messaging registering its own equal copy later is still a no-op.
    conf.set_default("transport_url", None)


def redacted_url(url):
    """A transport URL fit for messages: every ``user:password@`` of its
    hosts as ``user:***@``."""
    try:
        parsed = urllib.parse.urlsplit(url)
    except ValueError:
        return "the transport URL"
    hosts = []
    for host in parsed.netloc.split(","):
        credentials, at, address = host.rpartition("@")
        user = credentials.partition(":")[0]
        hosts.append("%s:***@%s" % (user, address) if at else address)
    return urllib.parse.urlunsplit(parsed._replace(netloc=",".join(hosts)))


def socket_path(conf):
    """The Unix socket to use, or ``None`` when the URL is not ``unix:``."""
    url = conf.transport_url
    if not url:
        return conf.agent.socket_path
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "unix":
        return None
    return parsed.path or conf.agent.socket_path


def make_client(conf, host):
    """The client side of the configured transport, for agent ``host``."""
    path = socket_path(conf)
    if path is not None:
        from rpc.transports import local_client
        return local_client.LocalClient(path, host)
    from rpc.transports import rabbit
    return rabbit.RabbitClient(conf, conf.transport_url, host)


def make_server(conf, host, dispatcher):
    """The server side of the configured transport, serving ``dispatcher``."""
    path = socket_path(conf)
    if path is not None:
        from rpc.transports import local_server
        return local_server.LocalServer(path, dispatcher, workers=conf.agent.rpc_workers,
                                 group=conf.agent.socket_group)
    from rpc.transports import rabbit
    return rabbit.RabbitServer(conf, conf.transport_url, host, dispatcher,
                               workers=conf.agent.rpc_workers)
