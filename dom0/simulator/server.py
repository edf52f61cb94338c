"""``xapi-sim``: an XAPI host for development and tests.

Serves XAPI's XML-RPC API at ``/`` (POST) and its HTTP data handlers
(``PUT /import_raw_vdi``, ``GET /export_raw_vdi``) on one threaded HTTP
server. Prints ``xapi-sim listening on http://ADDRESS:PORT`` when ready.
SIGTERM/SIGINT unplug every device, detach our loop devices and exit 0.
"""

import argparse
import http.server
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
import urllib.parse
import xml.parsers.expat
import xmlrpc.client

from dom0.simulator import errors
from dom0.simulator import host as host_mod
from dom0.simulator import http_data
from dom0.simulator.api import dispatch
# Importing the message modules registers their messages.
from dom0.simulator.api import event, sr, session_host, vbd, vdi, vif, vm  # noqa: F401

LOG = logging.getLogger("xapi-sim")

DEFAULT_PASSWORD = "xapi-sim"


def xmlrpc_response(value):
    return xmlrpc.client.dumps((value,), methodresponse=True, allow_none=True).encode()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the XenAPI SDK expects
    server_version = "xapi-sim"
    host = None  # set by make_server

    def setup(self):
        super().setup()
        # Headers and body leave in separate writes; without this, Nagle and
        # the client's delayed ACK add ~40 ms to every call.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):
        # The default would log query strings, which carry session ids.
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        started = time.monotonic()
        try:
            params, method = xmlrpc.client.loads(body)
        except (xml.parsers.expat.ExpatError, ValueError, TypeError) as e:
            LOG.info("unparsable XML-RPC request: %s", e)
            payload = xmlrpc.client.dumps(xmlrpc.client.Fault(-32700, "parse error: %s" % e),
                                          methodresponse=True).encode()
            return self._send(payload)
        method = method or ""
        try:
            value = dispatch.call(self.host, method, list(params))
            response = {"Status": "Success", "Value": value}
            outcome = "ok"
        except errors.XapiError as e:
            response = {"Status": "Failure", "ErrorDescription": e.description}
            outcome = e.code
        except Exception as e:  # a bug must answer, not drop the connection
            LOG.exception("%s failed", method)
            response = {"Status": "Failure",
                        "ErrorDescription": [errors.INTERNAL_ERROR, str(e)]}
            outcome = errors.INTERNAL_ERROR
        LOG.debug("%s -> %s (%.1f ms)", method, outcome, (time.monotonic() - started) * 1e3)
        self._send(xmlrpc_response(response))

    def _send(self, payload):
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _route(self, routes):
        # http_svr.ml, handle_one: the handler registered at the longest
        # prefix of the path (Radix_tree.longest_prefix); where none is, the
        # default callback answers 403. A GET XAPI does not handle falls to
        # its web server at "/", which over plain HTTP answers 403 too
        # (fileserver.ml, send_file; xapi_globs.ml, website_https_only).
        path = urllib.parse.urlsplit(self.path).path
        for route in sorted(routes, key=len, reverse=True):
            if path.startswith(route):
                return routes[route](self.host, self)
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def do_PUT(self):
        self._route({"/import_raw_vdi": http_data.handle_import})

    def do_GET(self):
        self._route({"/export_raw_vdi": http_data.handle_export})


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


def make_server(sim_host, address, port):
    handler = type("BoundHandler", (Handler,), {"host": sim_host})
    return Server((address, port), handler)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="xapi-sim", description="An XAPI host for development and tests: the official "
        "XenAPI SDK talks to it over real HTTP. It prints 'xapi-sim listening on "
        "http://ADDRESS:PORT' when ready; SIGTERM or SIGINT unplugs every device and exits 0.")
    parser.add_argument("--state-dir", required=True,
                        help="where the database, VDI files and VM device dirs live")
    parser.add_argument("--address", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--password-file", metavar="FILE",
                        help="read the password of user root from FILE (its first line); "
                        "preferred to --password, whose value any local user sees in ps")
    secret.add_argument("--password", default=None,
                        help="password of user root (default: %s)" % DEFAULT_PASSWORD)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--compute-vm", dest="compute_vm", action="store_true",
                       help="present a running guest standing for the compute VM")
    group.add_argument("--no-compute-vm", dest="compute_vm", action="store_false")
    parser.set_defaults(compute_vm=False)
    parser.add_argument("--plugin-dir", default=None,
                        help="dom0 plugin directory (default: the project's dom0/plugins)")
    parser.add_argument("--plugin-timeout", type=float, default=600.0,
                        help="seconds a plugin may run before it is killed")
    parser.add_argument("--no-loop-devices", action="store_true",
                        help="plug VBDs as plain files even where loop devices work")
    parser.add_argument("--no-partition-devices", action="store_true",
                        help="do not mirror partitions as xvdXN (like a real dom0)")
    parser.add_argument("--import-attach-seconds", type=float, default=0.0,
                        help="seconds each PUT /import_raw_vdi waits after its 200 "
                        "before it reads the body, as real XAPI plugs the VDI into "
                        "dom0 and starts vhd-tool for every import (default: none)")
    parser.add_argument("--host-cpus", type=int, default=4,
                        help="physical CPUs the host reports (host_cpu records; default 4)")
    parser.add_argument("--host-memory-mb", type=int, default=16384,
                        help="memory the host reports (host_metrics.memory_total; "
                        "default 16384, of which the control domain holds 4096)")
    parser.add_argument("--session-idle-seconds", type=float, default=24 * 3600.0,
                        help="seconds after which a session nobody uses expires, as "
                        "XAPI's inactive_session_timeout (default: 86400, a day)")
    parser.add_argument("--sr-type", choices=("ext", "lvm"), default="ext",
                        help="the local SR: ext (VDIs are VHD files in a mounted "
                        "directory) or lvm (thick volumes, no mount, sizes in 2 MiB "
                        "steps); fixed when the state directory is first made "
                        "(default: ext)")
    parser.add_argument("--verbose", action="store_true", help="log every call")
    args = parser.parse_args(argv)
    if not 1 <= args.host_cpus <= 512:
        parser.error("--host-cpus must be between 1 and 512")
    if not 4096 < args.host_memory_mb <= 16 * 1024 * 1024:
        parser.error("--host-memory-mb must be more than the control domain's 4096")
    if not args.session_idle_seconds > 0:
        parser.error("--session-idle-seconds must be positive")
    if not 0 <= args.import_attach_seconds <= 60:
        parser.error("--import-attach-seconds must be between 0 and 60")
    if args.password_file is not None:
        try:
            args.password, args.password_file_shared = read_password_file(args.password_file)
        except (OSError, ValueError) as e:
            parser.error("--password-file: %s" % e)
    elif args.password is None:
        args.password = DEFAULT_PASSWORD
    return args


def read_password_file(path):
    """(The password in ``path``: its first line without the line end,
    whether users other than its owner may read the file)."""
    with open(path, encoding="utf-8") as f:
        mode = os.fstat(f.fileno()).st_mode
        password = f.readline().rstrip("\r\n")
    if not password:
        raise ValueError("%s: no password on its first line" % path)
    return password, bool(mode & (stat.S_IRGRP | stat.S_IROTH))


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if getattr(args, "password_file_shared", False):
        LOG.warning("%s can be read by users other than its owner", args.password_file)
    sim_host = host_mod.SimulatedHost(
        args.state_dir, args.password, compute_vm=args.compute_vm,
        plugin_dir=args.plugin_dir, plugin_timeout=args.plugin_timeout,
        loop_devices=not args.no_loop_devices,
        partition_devices=not args.no_partition_devices,
        import_attach_seconds=args.import_attach_seconds,
        host_cpus=args.host_cpus, host_memory_mb=args.host_memory_mb,
        session_idle_seconds=args.session_idle_seconds, sr_type=args.sr_type)
    try:
        sim_host.open()
    except host_mod.StateMismatch as e:
        print("xapi-sim: %s" % e, file=sys.stderr)
        return 1
    server = make_server(sim_host, args.address, args.port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    serving = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    serving.start()
    print("xapi-sim listening on http://%s:%d" % (args.address, server.server_address[1]),
          flush=True)
    try:
        while not stop.wait(1):
            pass
    finally:
        LOG.info("shutting down")
        server.shutdown()
        server.server_close()
        sim_host.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
