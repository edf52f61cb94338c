"""``AgentServer``: the agent's side of the interface.

The agent hands over a plain endpoint object with one method per entry of
:data:`rpc.methods.METHODS`, taking the arguments as keywords. The server
picks the transport from the configuration, validates every call before
the endpoint sees it, runs at most ``[agent] rpc_workers`` calls at once
(``describe`` is answered even when all are busy) and sends typed errors
back as typed errors.
"""

from rpc import dispatch, methods, transports


class AgentServer:
    """Serves ``endpoint`` for hypervisor ``host`` (default ``[DEFAULT] host``).

    ``conf`` must have the project's options registered
    (``nova_xen_split.xenhost.conf.register_opts``); oslo.messaging's are added here.
    Raises ``TypeError`` when ``endpoint`` lacks a declared method.

    ``version`` is the interface version this server announces and accepts
    (default: the current one); a call pinned at a newer minor version is
    refused with ``VersionTooOld``.
    """

    def __init__(self, conf, endpoint, host=None, version=methods.VERSION):
        transports.register_opts(conf)
        missing = [name for name in methods.METHODS if not callable(getattr(endpoint, name, None))]
        if missing:
            raise TypeError("endpoint %r lacks %s" % (type(endpoint).__name__, ", ".join(missing)))
        self.host = host or conf.host
        self.dispatcher = dispatch.Dispatcher(endpoint, conf.agent.rpc_workers, self.host,
                                              version=version)
        self._transport = transports.make_server(conf, self.host, self.dispatcher)

    def start(self):
        """Start listening (the socket or the broker queue) and serving."""
        self._transport.start()

    def stop(self):
        """Stop taking new calls; calls in progress run to their end and are answered."""
        self._transport.stop()

    def wait(self):
        """Block until every call in progress has been answered."""
        self._transport.wait()
