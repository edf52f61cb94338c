"""``nova-xen-split-agent``: detect, check, clean up, serve.

Startup: find the local VM, log in to XAPI, choose the backend, refuse
what that backend cannot serve (one line on stderr naming the option, exit
status 1, no traceback, never the password), start what the backend needs
beside it, clean up what a crash left, then serve the message interface
until SIGTERM/SIGINT.
"""

import os
import signal
import sys
import threading

from oslo_config import cfg
from oslo_log import log as logging

from agent import detect
from agent import endpoint as agent_endpoint
from agent.backends import base, make_backend
from nova_xen_split.xenhost import conf as nxs_conf
from rpc import exceptions

LOG = logging.getLogger(__name__)
PROG = "nova-xen-split-agent"
EXIT_REFUSED = 1
EXIT_BAD_CONFIG = 2


class WorkerSessions(base.Sessions):
    """Per-thread sessions whose calls may run as long as a long RPC call
    (plugin calls that fetch images take minutes; the login timeout is
    meant for the login only)."""

    def call_timeout(self):
        return self._conf.agent.long_rpc_timeout


class AgentService:
    """The agent's life: :meth:`start` (startup steps 1–6), :meth:`stop`."""

    def __init__(self, conf):
        self.conf = conf
        self.sessions = WorkerSessions(conf)
        self.backend = None
        self.server = None
        self._backend_started = False
        self._stopped = threading.Event()
        self._settler = None

    def start(self):
        """Raises detect.StartupRefused (or XapiFailure) when it cannot serve."""
        conf = self.conf
        session = detect.login(conf)
        self.sessions.adopt(session)
        ctx = detect.detect(conf, session, self.sessions)
        self.backend = make_backend(ctx)
        detect.refuse_what_backend_lacks(conf, self.backend)
        self.backend.start()  # before any thread exists: it may fork
        self._backend_started = True
        cleaned = self.backend.cleanup_attached_vdis()
        LOG.info("Startup cleanup: %(unplugged)d VBD(s) unplugged, %(destroyed)d "
                 "half-made VDI(s) destroyed", cleaned)
        from rpc import server as rpc_server
        try:
            self.server = rpc_server.AgentServer(
                conf, agent_endpoint.AgentEndpoint(self.backend), host=conf.host)
            self.server.start()
        except exceptions.TransportUnusable as e:  # it names its option already
            self.server = None
            raise detect.StartupRefused(e.kwargs["option"], e.kwargs["reason"]) from None
        except Exception as e:  # noqa: BLE001 -- whatever stops serving is a refusal
            self.server = None
            reason = (str(e).splitlines() or [""])[0] or type(e).__name__
            raise detect.StartupRefused(
                "[DEFAULT] transport_url / [agent] socket_path, socket_group",
                "cannot serve the interface: %s: %s" % (type(e).__name__, reason)) from None
        LOG.info("Serving interface %s in %s mode: VM %s, host %s (%s), server %s",
                 base.INTERFACE_VERSION, ctx.mode, ctx.vm_uuid or "none",
                 ctx.host_name, ctx.host_uuid, conf.host)
        self._settler = threading.Thread(target=self._settle_loop, name="settle",
                                         daemon=True)
        self._settler.start()

    def _settle_loop(self):
        """Every ``[agent] settle_interval``: :meth:`Backend.settle`. What an
        operation could not destroy when XAPI went away, or made after its
        caller gave up, goes once XAPI answers again."""
        failing = False
        while not self._stopped.wait(self.conf.agent.settle_interval):
            try:
                settled = self.backend.settle()
            except Exception as e:  # noqa: BLE001 -- XAPI away: try again next round
                if not failing:
                    LOG.warning("Settling failed (tried again every %ss): %s",
                                self.conf.agent.settle_interval,
                                (str(e).splitlines() or [type(e).__name__])[0])
                failing = True
                continue
            failing = False
            if any(settled.values()):
                LOG.info("Settled: %s", ", ".join(
                    "%s %d" % (key, value) for key, value in sorted(settled.items())))

    def stop(self):
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.server is not None:
            self.server.stop()

    def wait(self):
        if self.server is not None:
            self.server.wait()
        self.close()

    def close(self):
        self._stopped.set()
        if self._settler is not None:
            self._settler.join(60)
        if self._backend_started:
            self.backend.stop()
            self._backend_started = False
        self.sessions.close()


def _refuse(message, status=EXIT_REFUSED):
    sys.stderr.write("%s: refusing to start: %s\n" % (PROG, message))
    sys.stderr.flush()
    return status


DESCRIPTION = (
    "The companion agent of nova-xen-split: one per hypervisor, beside the "
    "compute driver, it does every disk-touching step the driver asks for over "
    "the message interface. It reads the same configuration file as the "
    "driver: run it as %s --config-file /etc/nova-xen-split/nova-xen-split.conf "
    "(etc/nova-xen-split.conf.sample lists every option)." % PROG)


class _Stopped(BaseException):
    """SIGTERM or SIGINT arrived before the agent was serving. A
    BaseException, like KeyboardInterrupt: no handler of an ordinary error
    on the way may take it for a failure to report."""


def _default_signals_in_child():
    # A child forked by the agent (the privsep daemon) must not run the
    # agent's handlers: it stops as its own parent tells it to.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def main(argv=None):
    conf = cfg.CONF
    nxs_conf.register_opts(conf)
    logging.register_options(conf)
    try:
        conf(sys.argv[1:] if argv is None else argv, project="nova-xen-split",
             prog=PROG, description=DESCRIPTION)
        nxs_conf.check_values(conf)
    except cfg.Error as e:
        return _refuse(str(e).splitlines()[0], EXIT_BAD_CONFIG)
    logging.setup(conf, "nova-xen-split")
    service = AgentService(conf)

    def on_signal(signum, frame):
        if service.server is None:  # still starting: stop right where it is
            raise _Stopped(signal.Signals(signum).name)
        service.stop()

    # From the start, so a signal during startup stops the agent cleanly too.
    os.register_at_fork(after_in_child=_default_signals_in_child)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    refusal = None
    try:
        service.start()
    except _Stopped as e:
        service.close()
        LOG.info("Stopped by %s during startup", e)
        return 0
    except detect.StartupRefused as e:
        refusal = str(e)
    except (cfg.Error, exceptions.NovaXenSplitError) as e:
        refusal = str(e).splitlines()[0] if str(e) else type(e).__name__
    if refusal is not None:
        service.close()
        if conf.log_file or conf.use_syslog or conf.use_journal:
            # Logged outside the except block: oslo.log would append the
            # exception to the line. Without a log file, oslo.log writes to
            # stderr, where the line below already says it once.
            LOG.error("Refusing to start: %s", refusal)
        return _refuse(refusal)
    service.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
