"""Agents against a running ``xapi-sim``, and a loopback image service."""

import http.server
import os
import socketserver
import threading
import time
import uuid

import pytest
from oslo_config import cfg

from agent import detect
from agent import endpoint as agent_endpoint
from agent.backends import base, make_backend
from nova_xen_split.cmd.demo_env import file_digest, file_md5
from nova_xen_split.xenhost import conf as nxs_conf
from nova_xen_split.xenhost import marks
from tests.imagerecord import send_image_record


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        server = self.server
        parts = self.path.split("/")
        if len(parts) == 4 and parts[1:3] == ["v2", "images"]:
            self._record(parts[3])
            return
        # /v2/images/<id>/file
        if len(parts) != 5 or parts[1:3] != ["v2", "images"] or parts[4] != "file":
            self.send_error(404)
            return
        path = server.images.get(parts[3])
        if path is None:
            self.send_error(404)
            return
        server.requests.append((parts[3], self.headers.get("X-Auth-Token")))
        size = os.path.getsize(path)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        md5 = server.content_md5.get(parts[3], "file")
        if md5 == "file":
            md5 = file_md5(path)
        if md5 is not None:
            self.send_header("Content-MD5", md5)    # the image's checksum, as Glance sends it
        self.end_headers()
        left = server.cut_after.get(parts[3], size)
        if left < size:
            self.close_connection = True  # the cut is a close, not a stall
        with open(path, "rb") as f:
            while left > 0:
                piece = f.read(min(1 << 20, left))
                if not piece:
                    break
                left -= len(piece)
                try:
                    self.wfile.write(piece)
                except OSError:
                    return
                if server.delay:
                    time.sleep(server.delay)

    def _record(self, image_id):
        """The image's record, with its file as location when ``show_locations``."""
        server = self.server
        path = server.images.get(image_id)
        if path is None:
            self.send_error(404)
            return
        server.record_requests.append(image_id)
        multihash = server.multihash.get(image_id)
        if isinstance(multihash, str):      # an algorithm: the file's true digest
            multihash = (multihash, file_digest(path, multihash))
        send_image_record(self, image_id, path, server.show_locations, multihash)

    def log_message(self, *args):
        pass


class ImageServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """``/v2/images/<id>/file`` from files on disk; ``delay`` seconds per MiB.

    Downloads carry the file's MD5 as ``Content-MD5``, as Glance's do;
    ``content_md5`` maps an image id to another value to send (None: none).
    ``cut_after`` maps an image id to the number of bytes after which its
    download is cut (the connection closes short of its Content-Length).

    ``/v2/images/<id>`` is the image's record; with ``show_locations`` it
    shows the file as a ``file://`` location, as Glance's filesystem store does.
    ``multihash`` maps an image id to the record's (``os_hash_algo``,
    ``os_hash_value``), or to an algorithm alone for the file's true digest;
    other records have none, as images uploaded before Glance's Rocky.
    """

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _ImageHandler)
        self.images = {}
        self.requests = []
        self.record_requests = []
        self.show_locations = False
        self.delay = 0.0
        self.content_md5 = {}
        self.cut_after = {}
        self.multihash = {}

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.server_address[1]

    def add(self, path, image_id=None):
        image_id = image_id or uuid.uuid4().hex
        self.images[image_id] = str(path)
        return image_id


@pytest.fixture
def image_server():
    server = ImageServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def agent_conf(sim, mode, tmp_path, image_server=None, overrides=None):
    """A ConfigOpts for an agent of ``sim`` in ``mode`` (in_guest|independent);
    ``overrides`` maps (group, option) to a value."""
    conf = cfg.ConfigOpts()
    nxs_conf.register_opts(conf)
    conf([], project="nova-xen-split-test")
    host_tag = "agent-test-%s" % uuid.uuid4().hex[:8]
    conf.set_override("host", host_tag)
    conf.set_override("state_path", str(tmp_path))
    xs = {"connection_url": sim.url, "connection_password": sim.password,
          "xenstore_read_command": ["false"], "login_timeout": 10}
    if mode == "in_guest":
        vm_uuid = sim.compute_vm_uuid
        xs.update(vm_uuid_file=os.path.join(sim.state_dir, "vms", vm_uuid, "sys",
                                            "hypervisor", "uuid"),
                  device_dir=sim.vm_dev_dir(vm_uuid), independent_compute="false")
    else:
        xs.update(vm_uuid_file=str(tmp_path / "no-such-uuid-file"),
                  independent_compute="true")
    for key, value in xs.items():
        conf.set_override(key, value, group="xenserver")
    conf.set_override("privsep_start_method", "fork", group="agent")
    conf.set_override("socket_path", str(tmp_path / "agent.sock"), group="agent")
    if image_server is not None:
        conf.set_override("api_servers", [image_server.url], group="glance")
    for (group, key), value in (overrides or {}).items():
        conf.set_override(key, value, group=group)
    return conf


class Harness:
    """One agent backend in this process (privsep daemon forked as root)."""

    def __init__(self, sim, conf):
        self.sim = sim
        self.conf = conf
        self.sessions = base.Sessions(conf)
        session = detect.login(conf)
        self.sessions.adopt(session)
        self.ctx = detect.detect(conf, session, self.sessions)
        self.backend = make_backend(self.ctx)
        self.endpoint = agent_endpoint.AgentEndpoint(self.backend)
        self.backend.start()

    @property
    def session(self):
        return self.sessions.get()

    def close(self):
        self.backend.stop()
        self.sessions.close()

    # -- what the simulator holds ------------------------------------------

    def tagged_vbds(self):
        return [ref for ref, rec in self.session.call("VBD.get_all_records").items()
                if marks.vbd_agent(rec.get("other_config")) == self.ctx.tag]

    def agent_vdis(self, state=None):
        found = []
        for rec in self.session.call("VDI.get_all_records").values():
            mark = marks.read_vdi(rec.get("other_config"))
            if mark and mark.agent == self.ctx.tag and state in (None, mark.state):
                found.append(rec)
        return found

    def vdi_uuids(self):
        return {rec["uuid"] for rec in self.session.call("VDI.get_all_records").values()}


@pytest.fixture
def make_agent(tmp_path):
    """``make_agent(sim, mode, image_server=None)`` → Harness, closed afterwards."""
    harnesses = []

    def factory(sim, mode, image_server=None, overrides=None):
        conf = agent_conf(sim, mode, tmp_path, image_server, overrides)
        harness = Harness(sim, conf)
        harnesses.append(harness)
        return harness

    yield factory
    for harness in harnesses:
        harness.close()


@pytest.fixture(params=["in_guest", "independent"])
def agent(request, make_sim, loop_devices, image_server, make_agent):
    """An agent in each mode, against its own simulator."""
    mode = request.param
    sim = make_sim(compute_vm=(mode == "in_guest"))
    return make_agent(sim, mode, image_server)
