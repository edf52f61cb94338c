"""Downloading images from a real HTTP server on loopback.

The image service is an ``http.server`` in a thread that serves a few
behaviours Glance shows: the image, 404, 401, 5xx, a missing Content-Length
and a body cut short.
"""

import http.server
import os
import socket
import threading

import pytest
from oslo_config import cfg

from agent import images
from nova_xen_split import conf as nxs_conf
from rpc import exceptions

TOKEN = "gAAAAAB-very-secret-token"
IMAGE = os.urandom(3 * 1024 * 1024 + 17)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, dict(self.headers)))
        behaviour = server.behaviour
        if behaviour == "ok":
            if self.path != "/v2/images/img-1/file" or self.headers["X-Auth-Token"] != TOKEN:
                return self._status(404)
            self.send_response(200)
            self.send_header("Content-Length", str(len(IMAGE)))
            self.end_headers()
            self.wfile.write(IMAGE)
        elif behaviour == "no-length":
            self.protocol_version = "HTTP/1.0"
            self.send_response(200)
            self.end_headers()
            self.wfile.write(IMAGE)
            self.close_connection = True
        elif behaviour == "short":
            self.send_response(200)
            self.send_header("Content-Length", str(len(IMAGE)))
            self.end_headers()
            self.wfile.write(IMAGE[:1000])
            self.wfile.flush()
            self.close_connection = True
        else:
            self._status(int(behaviour))

    def _status(self, code):
        body = b"error " + str(code).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def image_server():
    """Factory: ``image_server(behaviour)`` → base URL of a started server."""
    servers = []

    def start(behaviour="ok"):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.behaviour = behaviour
        server.requests = []
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        servers.append((server, thread))
        return server, "http://127.0.0.1:%d" % server.server_address[1]

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(10)


def make_conf(servers, num_retries=0):
    conf = cfg.ConfigOpts()
    nxs_conf.register_opts(conf)
    conf([], default_config_files=[])
    conf.set_override("api_servers", servers, group="glance")
    conf.set_override("num_retries", num_retries, group="glance")
    return conf


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return "http://127.0.0.1:%d" % s.getsockname()[1]


def test_reader_streams_the_image_with_its_size_known_first(image_server):
    server, url = image_server()

    with images.open_image(make_conf([url]), "img-1", TOKEN) as reader:
        assert reader.size_bytes == len(IMAGE)
        first = reader.read(4096)
        buffer = bytearray(1024 * 1024)
        rest = bytearray()
        while True:
            got = reader.readinto(buffer)
            if not got:
                break
            rest += buffer[:got]

    assert first + rest == IMAGE
    assert server.requests[0][1]["X-Auth-Token"] == TOKEN


def test_unknown_image_is_reported_as_not_found_without_retrying(image_server):
    server, url = image_server("404")

    with pytest.raises(exceptions.ImageFetchFailed) as err:
        images.open_image(make_conf([url, url], num_retries=3), "img-9", TOKEN)

    assert "image not found" in str(err.value) and "img-9" in str(err.value)
    assert len(server.requests) == 1


def test_refused_token_is_reported_without_the_token(image_server):
    _, url = image_server("401")

    with pytest.raises(exceptions.ImageFetchFailed) as err:
        images.open_image(make_conf([url]), "img-1", TOKEN)

    assert "not authorised" in str(err.value)
    assert TOKEN not in str(err.value) and TOKEN not in repr(err.value.kwargs)


def test_failing_endpoints_are_skipped_in_turn(image_server):
    broken, broken_url = image_server("503")
    _, good_url = image_server("ok")
    dead_url = closed_port_url()

    conf = make_conf([dead_url, broken_url, good_url], num_retries=2)
    with images.open_image(conf, "img-1", TOKEN) as reader:
        assert reader.read() == IMAGE
    assert len(broken.requests) == 1


def test_retries_are_bounded_by_num_retries(image_server):
    broken, url = image_server("500")

    with pytest.raises(exceptions.ImageFetchFailed) as err:
        images.open_image(make_conf([url], num_retries=2), "img-1", TOKEN)

    assert len(broken.requests) == 3
    assert "3 attempt(s) failed" in str(err.value) and "HTTP 500" in str(err.value)


def test_unreachable_service_names_the_endpoint_not_the_token(caplog):
    url = closed_port_url()

    with pytest.raises(exceptions.ImageFetchFailed) as err:
        images.open_image(make_conf([url], num_retries=1), "img-1", TOKEN)

    assert url in str(err.value)
    assert TOKEN not in str(err.value) and TOKEN not in caplog.text


def test_a_response_without_content_length_is_refused(image_server):
    _, url = image_server("no-length")

    with pytest.raises(exceptions.ImageFetchFailed, match="no valid Content-Length"):
        images.open_image(make_conf([url]), "img-1", TOKEN)


def test_a_body_cut_short_raises_instead_of_ending_quietly(image_server):
    _, url = image_server("short")

    reader = images.open_image(make_conf([url]), "img-1", TOKEN)
    with pytest.raises(exceptions.ImageFetchFailed) as err:
        reader.read()

    assert "broke after 1000 of %d bytes" % len(IMAGE) in str(err.value)


def test_the_image_id_cannot_escape_the_image_path(image_server):
    server, url = image_server("404")

    with pytest.raises(exceptions.ImageFetchFailed):
        images.open_image(make_conf([url]), "../../v1/x?y", None)

    assert server.requests[0][0] == "/v2/images/..%2F..%2Fv1%2Fx%3Fy/file"
    assert "X-Auth-Token" not in server.requests[0][1]
