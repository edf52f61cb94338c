"""``PUT /import_raw_vdi`` and ``GET /export_raw_vdi`` of xapi-sim over real HTTP.

The XAPI side is the official ``XenAPI`` SDK; the data requests are made with
``http.client`` the way a careful client talks to XAPI: send the headers
(with a Content-Length), read the ``200`` and its ``task-id``, only then send
the body, and judge the outcome by the task. Contents are checked against
independent tools (``qemu-img``) and the VDI file's allocated size.
"""

import http.client
import os
import re
import struct
import time
import urllib.parse

import pytest

from tests.functional.simulator.vhdtestlib import qemu_img

MiB = 1 << 20


class Host:
    """A started simulator, its XenAPI session and the default SR."""

    def __init__(self, sim):
        self.sim = sim
        self.session = sim.session()
        self.x = self.session.xenapi
        self.sr = self.x.pool.get_default_SR(self.x.pool.get_all()[0])
        split = urllib.parse.urlsplit(sim.url)
        self.address = (split.hostname, split.port)

    def new_vdi(self, size):
        return self.x.VDI.create({"name_label": "data", "SR": self.sr,
                                  "virtual_size": str(size), "type": "user",
                                  "sharable": False, "read_only": False,
                                  "other_config": {}})

    def vdi_file(self, vdi):
        return os.path.join(self.sim.state_dir, "sr", self.x.SR.get_uuid(self.sr),
                            self.x.VDI.get_uuid(vdi) + ".raw")

    def allocated(self, vdi):
        return os.stat(self.vdi_file(vdi)).st_blocks * 512

    def query(self, vdi, **params):
        params.setdefault("session_id", self.session.handle)
        params["vdi"] = vdi
        chunked = params.pop("chunked", False)
        query = urllib.parse.urlencode(params)
        return query + "&chunked" if chunked else query

    def put(self, vdi, body, content_length=None, headers=(), send=None, **params):
        """PUT; returns (status, task-id). ``send`` overrides the bytes sent."""
        conn = http.client.HTTPConnection(*self.address, timeout=30)
        try:
            conn.putrequest("PUT", "/import_raw_vdi?" + self.query(vdi, **params))
            conn.putheader("Content-Length",
                           str(len(body) if content_length is None else content_length))
            for name, value in headers:
                conn.putheader(name, value)
            conn.endheaders()
            # The answer must come before any body byte: a server that waited
            # for the body would time this read out.
            response = http.client.HTTPResponse(conn.sock, method="PUT")
            response.begin()
            if response.status == 200:
                try:
                    conn.sock.sendall(body if send is None else send)
                except OSError:
                    pass  # the server gave up on a bad body; the task says why
            return response.status, response.getheader("task-id")
        finally:
            conn.close()

    def export(self, vdi, fmt="raw"):
        conn = http.client.HTTPConnection(*self.address, timeout=60)
        try:
            conn.request("GET", "/export_raw_vdi?" + self.query(vdi, format=fmt))
            response = conn.getresponse()
            assert response.status == 200
            data = response.read()
            assert len(data) == int(response.getheader("Content-Length"))
            return data
        finally:
            conn.close()

    def outcome(self, task, timeout=60):
        deadline = time.monotonic() + timeout
        while self.x.task.get_status(task) == "pending":
            assert time.monotonic() < deadline, "task still pending"
            time.sleep(0.02)
        return self.x.task.get_status(task), self.x.task.get_error_info(task)


@pytest.fixture
def host(make_sim):
    h = Host(make_sim())
    yield h
    h.session.xenapi.session.logout()


def make_raw(path, size, extents):
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in extents:
            f.seek(offset)
            f.write(os.urandom(length))
    return str(path)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def chunk(offset, data):
    return struct.pack("<QI", offset, len(data)) + data


END = struct.pack("<QI", 0, 0)


# -- success -------------------------------------------------------------------


def test_qemu_img_vhd_uploaded_then_exported_raw_is_identical_and_sparse(host, tmp_path):
    size = 48 * MiB
    src = make_raw(tmp_path / "src.raw", size,
                   [(0, 64 * 1024), (7 * MiB, 3 * MiB), (47 * MiB, MiB)])
    image = tmp_path / "disk.vhd"
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size=on",
             src, str(image))
    vdi = host.new_vdi(size)

    status, task = host.put(vdi, read(image), format="vhd")

    assert status == 200
    assert host.outcome(task) == ("success", [])
    assert host.export(vdi) == read(src)
    assert host.allocated(vdi) <= 64 * 1024 + 4 * MiB + 128 * 1024
    assert int(host.x.VDI.get_physical_utilisation(vdi)) == host.allocated(vdi)


def test_answer_200_with_task_id_arrives_before_the_body_is_sent(host):
    vdi = host.new_vdi(MiB)
    conn = http.client.HTTPConnection(*host.address, timeout=10)
    try:
        conn.putrequest("PUT", "/import_raw_vdi?" + host.query(vdi, format="raw"))
        conn.putheader("Content-Length", str(MiB))
        conn.endheaders()
        response = http.client.HTTPResponse(conn.sock, method="PUT")
        response.begin()  # no body byte sent yet
        task = response.getheader("task-id")
        assert response.status == 200 and task.startswith("OpaqueRef:")
        assert host.x.task.get_status(task) == "pending"
        conn.sock.sendall(b"\x01" * MiB)
    finally:
        conn.close()
    assert host.outcome(task) == ("success", [])
    assert host.export(vdi) == b"\x01" * MiB


def test_an_import_can_be_charged_for_its_dom0_attach(make_sim):
    # Real XAPI plugs the VDI into dom0 after the 200 and before reading;
    # the simulator does so when asked, and the import still lands.
    host = Host(make_sim(extra_args=["--import-attach-seconds", "0.4"]))
    disk = os.urandom(MiB)
    vdi = host.new_vdi(len(disk))

    start = time.monotonic()
    status, task = host.put(vdi, disk, format="raw")
    assert status == 200 and host.outcome(task) == ("success", [])
    assert time.monotonic() - start >= 0.4
    assert host.export(vdi) == disk


def test_plain_raw_round_trips_and_zero_regions_stay_holes(host):
    disk = os.urandom(MiB) + bytes(6 * MiB) + os.urandom(MiB)
    vdi = host.new_vdi(len(disk))

    status, task = host.put(vdi, disk, format="raw")

    assert status == 200 and host.outcome(task) == ("success", [])
    assert host.export(vdi) == disk
    assert host.allocated(vdi) == 2 * MiB


def test_chunked_raw_round_trips_and_only_the_chunks_sent_are_allocated(host):
    size = 32 * MiB
    first, second = os.urandom(256 * 1024), os.urandom(MiB)
    body = chunk(2 * MiB, first) + chunk(20 * MiB, second) + END
    vdi = host.new_vdi(size)
    task_ref = host.x.task.create("upload", "")

    status, task = host.put(vdi, body, format="raw", chunked=True, task_id=task_ref)

    assert (status, task) == (200, task_ref)
    assert host.outcome(task) == ("success", [])
    expected = bytearray(size)
    expected[2 * MiB:2 * MiB + len(first)] = first
    expected[20 * MiB:21 * MiB] = second
    assert host.export(vdi) == expected
    assert host.allocated(vdi) == len(first) + len(second)


def test_overlapping_imports_into_one_vdi_take_turns_and_both_land(host):
    # The agent overlaps the PUTs of one image; the simulator writes one of
    # them at a time. B arrives whole while A is half sent: B's task waits
    # for A, and neither is refused.
    vdi = host.new_vdi(8 * MiB)
    a_data, b_data = os.urandom(2 * MiB), os.urandom(MiB)
    a_body = chunk(0, a_data) + END
    b_body = chunk(4 * MiB, b_data) + END

    def start(body):
        conn = http.client.HTTPConnection(*host.address, timeout=30)
        conn.putrequest("PUT", "/import_raw_vdi?" + host.query(vdi, format="raw",
                                                                 chunked=True))
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        response = http.client.HTTPResponse(conn.sock, method="PUT")
        response.begin()
        assert response.status == 200
        return conn, response.getheader("task-id")

    a_conn, a_task = start(a_body)
    b_conn = None
    try:
        a_conn.sock.sendall(a_body[:MiB])
        time.sleep(0.2)  # A holds the VDI now
        b_conn, b_task = start(b_body)
        b_conn.sock.sendall(b_body)
        time.sleep(0.5)
        assert host.x.task.get_status(b_task) == "pending"
        a_conn.sock.sendall(a_body[MiB:])
        assert host.outcome(a_task) == ("success", [])
        assert host.outcome(b_task) == ("success", [])
    finally:
        a_conn.close()
        if b_conn is not None:
            b_conn.close()
    expected = bytearray(8 * MiB)
    expected[:2 * MiB] = a_data
    expected[4 * MiB:5 * MiB] = b_data
    assert read(host.vdi_file(vdi)) == expected


def test_vhd_export_is_read_back_identically_by_qemu_img(host, tmp_path):
    disk = bytes(3 * MiB) + os.urandom(MiB + 512)
    vdi = host.new_vdi(len(disk))
    status, task = host.put(vdi, disk, format="raw")
    assert host.outcome(task) == ("success", [])

    (tmp_path / "export.vhd").write_bytes(host.export(vdi, fmt="vhd"))

    qemu_img("convert", "-f", "vpc", "-O", "raw", str(tmp_path / "export.vhd"),
             str(tmp_path / "back.raw"))
    assert read(tmp_path / "back.raw") == disk


# -- failures seen through the task ------------------------------------------


def expect_io_error(host, task, pattern):
    status, error_info = host.outcome(task)
    assert status == "failure"
    assert error_info[0] == "VDI_IO_ERROR"
    assert re.search(pattern, error_info[1]), error_info


def test_body_larger_than_the_vdi_fails_its_task_and_writes_nothing(host):
    vdi = host.new_vdi(MiB)

    status, task = host.put(vdi, os.urandom(2 * MiB), format="raw")

    assert status == 200
    expect_io_error(host, task, "larger than the VDI")
    assert host.allocated(vdi) == 0


def test_malformed_vhd_fails_its_task_and_writes_nothing(host, tmp_path):
    src = make_raw(tmp_path / "src.raw", 4 * MiB, [(0, MiB)])
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size=on",
             src, str(tmp_path / "d.vhd"))
    body = bytearray(read(tmp_path / "d.vhd"))
    body[512 + 100] ^= 0xFF  # the dynamic header's checksum no longer holds
    vdi = host.new_vdi(4 * MiB)

    status, task = host.put(vdi, bytes(body), format="vhd")

    assert status == 200
    expect_io_error(host, task, "malformed VHD: dynamic header: bad checksum")
    assert host.allocated(vdi) == 0


def test_bad_chunk_stream_fails_its_task(host):
    vdi = host.new_vdi(4 * MiB)
    body = chunk(3 * MiB, os.urandom(2 * MiB)) + END  # passes the VDI's end

    status, task = host.put(vdi, body, format="raw", chunked=True)

    assert status == 200
    expect_io_error(host, task, "passes the VDI's end")
    assert host.allocated(vdi) == 0


def test_connection_cut_mid_body_fails_its_task(host):
    vdi = host.new_vdi(8 * MiB)
    body = os.urandom(8 * MiB)

    status, task = host.put(vdi, body, format="raw", send=body[:3 * MiB])

    assert status == 200
    expect_io_error(host, task, r"connection closed after \d+ of 8388608 body bytes")
    assert host.allocated(vdi) == 0


# -- refused before any task work ----------------------------------------------


def test_transfer_encoding_header_is_refused_with_404(host):
    # import_raw_vdi.ml, localhost_handler: 404 since XAPI 7.1 (403 before).
    vdi = host.new_vdi(MiB)
    status, _ = host.put(vdi, b"", headers=[("Transfer-Encoding", "chunked")], format="raw")
    assert status == 404


def test_unknown_format_is_refused_with_404(host):
    # import_raw_vdi.ml, localhost_handler: `Unknown x (importexport.ml, Format).
    vdi = host.new_vdi(MiB)
    status, _ = host.put(vdi, b"x" * 512, format="zip")
    assert status == 404


def test_bad_session_is_refused_with_401(host):
    vdi = host.new_vdi(MiB)
    status, _ = host.put(vdi, b"x" * 512, format="raw", session_id="OpaqueRef:nonsense")
    assert status == 401
