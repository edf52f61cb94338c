"""The HTTP data handlers' protocol: refusals, the early 200, tasks, export length.

The byte-level import/export paths are covered by test_dataio*/test_http_import*;
these tests check what the handler itself promises, over a real socket.
"""

import http.client
import os
import socket
import urllib.parse

import pytest

from tests.functional.simulator.simhelpers import new_vdi, vdi_path, wait_task

MiB = 1 << 20


def _connection(sim):
    parts = urllib.parse.urlsplit(sim.url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)


class RawPut:
    """A PUT on a bare socket: headers first, the body whenever the test says."""

    def __init__(self, sim, query, content_length):
        parts = urllib.parse.urlsplit(sim.url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        self.sock.sendall((
            "PUT %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n"
            % (_path("/import_raw_vdi", **query), parts.netloc, content_length)).encode())
        self.reader = self.sock.makefile("rb")

    def response_head(self):
        status = int(self.reader.readline().split()[1])
        headers = {}
        for line in iter(self.reader.readline, b"\r\n"):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError:  # the server may stop reading once it has failed the task
            pass

    def close(self):
        self.reader.close()
        self.sock.close()


def _path(route, **query):
    return "%s?%s" % (route, urllib.parse.urlencode(query))


def _put(sim, query, body=b"", headers=None, route="/import_raw_vdi"):
    conn = _connection(sim)
    all_headers = {"Content-Length": str(len(body))}
    all_headers.update(headers or {})
    conn.putrequest("PUT", _path(route, **query))
    for name, value in all_headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    if "Transfer-Encoding" not in all_headers:
        conn.send(body)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


@pytest.fixture
def vdi(xapi, sr_ref):
    ref = new_vdi(xapi, sr_ref, 4 * MiB)
    yield ref
    xapi.VDI.destroy(ref)


def test_bad_session_is_401(sim, vdi):
    assert _put(sim, {"session_id": "OpaqueRef:bad", "vdi": vdi, "format": "raw"}).status == 401


def _task_error(xapi, task):
    assert xapi.task.get_status(task) == "failure"
    info = xapi.task.get_error_info(task)
    xapi.task.destroy(task)
    return info


def test_unknown_format_is_404_and_fails_the_given_task(sim, session, xapi, vdi):
    # import_raw_vdi.ml, localhost_handler: `Unknown x -> 404, INTERNAL_ERROR.
    task = xapi.task.create("import", "")
    response = _put(sim, {"session_id": session._session, "vdi": vdi, "format": "zip",
                          "task_id": task})
    assert response.status == 404
    assert _task_error(xapi, task) == ["INTERNAL_ERROR", "Unknown format zip"]


def test_format_names_are_read_in_any_case(sim, session, xapi, vdi):
    # importexport.ml, Format.of_string lowercases the name.
    response = _put(sim, {"session_id": session._session, "vdi": vdi, "format": "RAW"},
                    body=b"abc")
    assert response.status == 200
    assert wait_task(xapi, response.getheader("task-id")) == "success"


def test_http_transfer_encoding_is_404_and_fails_the_task(sim, session, xapi, vdi):
    # import_raw_vdi.ml, localhost_handler: any Transfer-Encoding is refused
    # with 404 (XAPI >= 7.1; 403 before) and INTERNAL_ERROR
    # ["Cannot handle encoding: x"].
    task = xapi.task.create("import", "")
    response = _put(sim, {"session_id": session._session, "vdi": vdi, "format": "raw",
                          "task_id": task}, headers={"Transfer-Encoding": "chunked"})
    assert response.status == 404
    assert _task_error(xapi, task) == ["INTERNAL_ERROR", "Cannot handle encoding: chunked"]


def test_chunked_framing_with_vhd_is_404_before_the_encoding_check(sim, session, xapi, vdi):
    # import_raw_vdi.ml, localhost_handler: a non-raw format with chunked is
    # matched before the Transfer-Encoding header is looked at.
    task = xapi.task.create("import", "")
    query = {"session_id": session._session, "vdi": vdi, "format": "vhd", "chunked": "",
             "task_id": task}
    response = _put(sim, query, headers={"Transfer-Encoding": "chunked"})
    assert response.status == 404
    assert _task_error(xapi, task) == ["INTERNAL_ERROR", "Cannot handle chunked VHD"]


def test_unknown_vdi_is_500_and_leaves_the_task_alone(sim, session, xapi):
    # importexport.ml, vdi_of_req: not a ref, so get_by_uuid, which raises
    # out of the handler; http_svr.ml, handle_one answers 500. The task of
    # the request was never reached.
    task = xapi.task.create("import", "")
    for name in ("OpaqueRef:gone", "6b1c7e4e-0000-4000-8000-000000000000"):
        query = {"session_id": session._session, "vdi": name, "format": "raw",
                 "task_id": task}
        assert _put(sim, query).status == 500
    assert xapi.task.get_status(task) == "pending"
    xapi.task.destroy(task)


def test_missing_vdi_is_400_and_vdi_missing(sim, session, xapi):
    # import_raw_vdi.ml, import: no VDI and no SR -> fail_task_in_request
    # with VDI_MISSING, answered 400.
    task = xapi.task.create("import", "")
    response = _put(sim, {"session_id": session._session, "format": "raw", "task_id": task})
    assert response.status == 400
    assert _task_error(xapi, task) == ["VDI_MISSING"]


def test_a_vdi_may_be_named_by_its_uuid(sim, session, xapi, vdi):
    # importexport.ml, vdi_of_req: a name that is not a ref is a VDI uuid,
    # for imports and exports alike.
    uuid = xapi.VDI.get_uuid(vdi)
    response = _put(sim, {"session_id": session._session, "vdi": uuid, "format": "raw"},
                    body=b"by uuid")
    task = response.getheader("task-id")
    assert response.status == 200 and wait_task(xapi, task) == "success"
    assert xapi.task.get_result(task) == "<value>%s</value>" % vdi
    conn = _connection(sim)
    conn.request("GET", _path("/export_raw_vdi", session_id=session._session, vdi=uuid))
    response = conn.getresponse()
    assert response.status == 200 and response.read(7) == b"by uuid"
    conn.close()


def test_unknown_paths_are_403(sim, session):
    # http_svr.ml: no handler for the path -> default_callback, 403; an
    # unknown GET reaches XAPI's web server, which refuses plain HTTP with
    # 403 (fileserver.ml, send_file; xapi_globs.ml, website_https_only).
    assert _put(sim, {"session_id": session._session}, route="/no_such_handler").status == 403
    conn = _connection(sim)
    conn.request("GET", "/no_such_handler")
    assert conn.getresponse().status == 403
    conn.close()


def test_import_task_result_is_the_vdi_ref_and_export_has_none(sim, session, xapi, vdi):
    # import_raw_vdi.ml, localhost_handler: TaskHelper.complete with
    # API.rpc_of_ref_VDI vdi; export_raw_vdi.ml completes its task with no
    # result (xapi_http.ml, with_context; taskHelper.ml, complete None).
    response = _put(sim, {"session_id": session._session, "vdi": vdi, "format": "raw"},
                    body=b"abc")
    task = response.getheader("task-id")
    assert wait_task(xapi, task) == "success"
    assert xapi.task.get_result(task) == "<value>%s</value>" % vdi
    conn = _connection(sim)
    conn.request("GET", _path("/export_raw_vdi", session_id=session._session, vdi=vdi))
    response = conn.getresponse()
    response.read()
    conn.close()
    task = response.getheader("task-id")
    assert wait_task(xapi, task) == "success"
    assert xapi.task.get_result(task) == ""


def test_import_answers_200_with_the_task_before_reading_the_body(sim, session, xapi, vdi):
    task = xapi.task.create("import", "")
    body = b"\x5a" * MiB
    put = RawPut(sim, {"session_id": session._session, "vdi": vdi, "format": "raw",
                       "task_id": task}, len(body))
    status, headers = put.response_head()  # no body byte sent yet
    assert status == 200 and headers["task-id"] == task
    assert xapi.task.get_status(task) == "pending"
    put.send(body)
    assert wait_task(xapi, task) == "success"
    put.close()
    with open(vdi_path(sim, xapi, vdi), "rb") as f:
        assert f.read(len(body) + 1) == body + b"\0"
    xapi.task.destroy(task)


def test_import_without_task_id_makes_a_task(sim, session, xapi, vdi):
    response = _put(sim, {"session_id": session._session, "vdi": vdi, "format": "raw"},
                    body=b"abc")
    task = response.getheader("task-id")
    assert task and wait_task(xapi, task) == "success"


def test_body_larger_than_the_vdi_fails_the_task(sim, session, xapi, vdi):
    put = RawPut(sim, {"session_id": session._session, "vdi": vdi, "format": "raw"},
                 4 * MiB + 512)
    status, headers = put.response_head()
    put.send(b"x" * (4 * MiB + 512))
    task = headers["task-id"]
    assert wait_task(xapi, task) == "failure"
    assert xapi.task.get_error_info(task)[0] == "VDI_IO_ERROR"
    put.close()


def test_cut_connection_fails_the_task(sim, session, xapi, vdi):
    task = xapi.task.create("import", "")
    put = RawPut(sim, {"session_id": session._session, "vdi": vdi, "format": "raw",
                       "task_id": task}, MiB)
    assert put.response_head()[0] == 200
    put.send(b"y" * 1000)
    put.close()
    assert wait_task(xapi, task) == "failure"
    assert xapi.task.get_error_info(task)[0] == "VDI_IO_ERROR"
    xapi.task.destroy(task)


def test_raw_export_has_the_vdi_size_as_content_length(sim, session, xapi, vdi):
    with open(vdi_path(sim, xapi, vdi), "r+b") as f:
        f.seek(MiB)
        f.write(b"exported")
    conn = _connection(sim)
    conn.request("GET", _path("/export_raw_vdi", session_id=session._session, vdi=vdi,
                              format="raw"))
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Length") == str(4 * MiB)
    data = response.read()
    conn.close()
    assert len(data) == 4 * MiB and data[MiB:MiB + 8] == b"exported"
    assert wait_task(xapi, response.getheader("task-id")) == "success"
    assert os.path.getsize(vdi_path(sim, xapi, vdi)) == 4 * MiB


def test_export_with_a_bad_session_is_401(sim, vdi):
    conn = _connection(sim)
    conn.request("GET", _path("/export_raw_vdi", session_id="OpaqueRef:x", vdi=vdi))
    assert conn.getresponse().status == 401
    conn.close()
