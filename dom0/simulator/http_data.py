"""XAPI's HTTP data handlers: ``PUT /import_raw_vdi``, ``GET /export_raw_vdi``.

The checks run in the order of xen-api's ``import_raw_vdi.ml``: credentials
(401), the VDI, by ref or uuid (500 when it names none), format (404; the
task fails with ``INTERNAL_ERROR ['Unknown format x']``), ``chunked`` with a
non-raw format (404, ``Cannot handle chunked VHD``), then an HTTP
``Transfer-Encoding`` (404, ``Cannot handle encoding: x``). Then, like XAPI,
the handler answers ``200`` with a ``task-id`` header *before* it reads the
body; the outcome is the task's. The bytes are moved by :mod:`dataio`.
"""

import logging
import time
import urllib.parse

from dom0.simulator import errors
from dom0.simulator import faults
from dom0.simulator.api import dispatch

LOG = logging.getLogger(__name__)

# Formats XAPI knows (importexport.ml, Format) and those the simulator moves.
KNOWN_FORMATS = ("raw", "vhd", "tar", "qcow2")
FORMATS = ("raw", "vhd")


class SocketBody:
    """The request body straight from the socket, for ``dataio``'s ``readinto``.

    The handler's buffered reader (8 KiB buffer) halves the receive rate of
    large bodies; past what it has already buffered, this reads with
    ``recv_into`` directly into the caller's buffer.
    """

    def __init__(self, rfile, sock):
        self._rfile = rfile
        self._sock = sock
        self._buffered = True

    def readinto(self, view):
        if self._buffered:
            # peek() returns what is buffered (one raw read if nothing is).
            pending = len(self._rfile.peek(1))
            if pending:
                n = self._rfile.readinto(view[:min(pending, len(view))])
                self._buffered = n < pending
                return n
            self._buffered = False
        return self._sock.recv_into(view)

    @property
    def socket(self):
        """The connection, for a receive that bypasses Python buffers (``splicein``)."""
        return self._sock

    def take_buffered(self, limit):
        """Up to ``limit`` body bytes the buffered reader holds, taken out of it.

        Whatever the header parsing read past the headers is body; a receive
        straight from :attr:`socket` must write these bytes first.
        """
        if not self._buffered or limit <= 0:
            return b""
        self._buffered = False
        # peek() returns what is buffered (one raw read if nothing is).
        pending = len(self._rfile.peek(1))
        return self._rfile.read(min(pending, limit))


class Refused(Exception):
    """The request is answered with ``status`` and no task outcome but ``error``."""

    def __init__(self, status, error):
        super().__init__(status)
        self.status = status
        self.error = error


def _query(handler):
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(handler.path).query,
                                  keep_blank_values=True)
    return {k: v[0] for k, v in query.items()}


def _respond(handler, status, headers=()):
    handler.send_response(status)
    for name, value in headers:
        handler.send_header(name, value)
    if status != 200:
        handler.send_header("Content-Length", "0")
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.flush()
    handler.close_connection = True


def _vdi_of_query(host, query, importing):
    """The VDI a request names by ref or by uuid (importexport.ml, vdi_of_req).

    XAPI resolves it before anything else: a name that is neither a ref nor
    a VDI's uuid makes get_by_uuid raise out of the handler, which the HTTP
    server answers 500 (http_svr.ml, handle_one), the request's task left
    as it was. A missing ``vdi`` is a 400 and VDI_MISSING for an import
    (import_raw_vdi.ml, import) and a 500 for an export (export_raw_vdi.ml,
    handler: "Missing vdi query parameter").
    """
    name = query.get("vdi")
    if name is None:
        if not importing:
            raise Refused(500, None)
        if "sr_id" in query or "sr_uuid" in query:
            # XAPI would make a VDI in that SR for a raw import; not simulated.
            raise Refused(400, [errors.INTERNAL_ERROR,
                                "xapi-sim does not simulate imports into an SR"])
        raise Refused(400, [errors.VDI_MISSING])
    if host.store.exists("VDI", name):
        return name
    try:
        return host.store.by_uuid("VDI", name)
    except errors.XapiError:
        raise Refused(500, None) from None


def _format(query):
    """importexport.ml, Format.of_req: raw by default, names in any case."""
    given = query.get("format", "raw")
    name = given.lower()
    if name not in KNOWN_FORMATS:
        return given, None
    return given, name


def _check(host, handler, query, importing):
    """Validate a data request, in the order of XAPI's handlers
    (import_raw_vdi.ml: handler, import, localhost_handler; export_raw_vdi.ml:
    handler, localhost_handler).

    Returns (session, task_ref or None, fmt, chunked, vdi_ref, path, size).
    """
    session = query.get("session_id")
    if not session or not host.sessions.valid(session):
        raise Refused(401, None)  # xapi_http.ml, assert_credentials_ok
    with host.store.lock:
        vdi_ref = _vdi_of_query(host, query, importing)
    task_ref = query.get("task_id")
    if task_ref is not None and not host.store.exists("task", task_ref):
        raise Refused(404, None)
    given, fmt = _format(query)
    if fmt is None:
        raise Refused(404, [errors.INTERNAL_ERROR, "Unknown format %s" % given])
    chunked = "chunked" in query
    if importing:
        if chunked and fmt != "raw":
            raise Refused(404, [errors.INTERNAL_ERROR, "Cannot handle chunked VHD"])
        encoding = handler.headers.get("Transfer-Encoding")
        if encoding is not None:
            # 404 since XAPI 7.1; older versions answered 403.
            raise Refused(404, [errors.INTERNAL_ERROR, "Cannot handle encoding: %s" % encoding])
    if fmt not in FORMATS:
        raise Refused(404, [errors.INTERNAL_ERROR,
                            "xapi-sim does not simulate format %s" % fmt])
    with host.store.lock:
        if not host.store.exists("VDI", vdi_ref):
            # Destroyed since it was resolved: XAPI's database lookup fails
            # inside the task's context (exnHelper.ml: HANDLE_INVALID).
            raise Refused(500, [errors.HANDLE_INVALID, "VDI", vdi_ref])
        vdi = host.store.get("VDI", vdi_ref)
        path, size = host.vdi_path(vdi), int(vdi["virtual_size"])
    return session, task_ref, fmt, chunked, vdi_ref, path, size


def _refuse(host, handler, query, refusal):
    task_ref = query.get("task_id")
    if refusal.error and task_ref and host.store.exists("task", task_ref):
        dispatch.finish_task(host, task_ref, error=refusal.error)
    LOG.info("%s %s refused: %d", handler.command, urllib.parse.urlsplit(handler.path).path,
             refusal.status)
    _respond(handler, refusal.status)


def _run_task(host, task_ref, what, work, result=None):
    """Run ``work``; the task ends with ``result`` (XML-RPC text) or the error."""
    from dom0.simulator import dataio

    try:
        work(dataio)
    except errors.XapiError as e:
        LOG.info("%s failed: %s", what, e)
        dispatch.finish_task(host, task_ref, error=e.description)
    except dataio.ImportFailed as e:
        LOG.info("%s failed: %s", what, e)
        dispatch.finish_task(host, task_ref, error=[errors.VDI_IO_ERROR, str(e)])
    except (ConnectionError, TimeoutError) as e:
        LOG.info("%s: connection lost: %s", what, e)
        dispatch.finish_task(host, task_ref, error=[
            errors.VDI_IO_ERROR, "connection lost: %s" % (e.strerror or e)])
    except Exception as e:  # the task must end, whatever went wrong
        LOG.exception("%s failed", what)
        dispatch.finish_task(host, task_ref, error=[errors.INTERNAL_ERROR, str(e)])
    else:
        dispatch.finish_task(host, task_ref, result=result)


def handle_import(host, handler):
    query = _query(handler)
    try:
        session, task_ref, fmt, chunked, vdi_ref, path, size = _check(
            host, handler, query, True)
    except Refused as refusal:
        return _refuse(host, handler, query, refusal)
    task_ref = task_ref or dispatch.new_task(host, session, "VDI.import")
    length = handler.headers.get("Content-Length")
    content_length = int(length) if length and length.isdigit() else None
    _respond(handler, 200, [("task-id", task_ref), ("Content-Type", "application/octet-stream")])

    body = SocketBody(handler.rfile, handler.connection)

    def work(dataio):
        # Real XAPI plugs the VDI into dom0 and starts vhd-tool for each
        # import, after its 200; that takes a while, which the simulator
        # only charges for when asked to (imports of one VDI may overlap).
        time.sleep(host.import_attach_seconds)
        with host.vdi_writers.hold(path):
            if fmt == "vhd":
                dataio.import_vhd(body, content_length, path, size, host.sr_thick)
            else:
                dataio.import_raw(body, content_length, path, size, chunked, host.sr_thick)

    # import_raw_vdi.ml, localhost_handler: TaskHelper.complete with
    # API.rpc_of_ref_VDI vdi: the import's task result is the VDI's ref.
    _run_task(host, task_ref, "import of %s" % fmt, work,
              result=dispatch.task_value_text(vdi_ref))


def handle_export(host, handler):
    query = _query(handler)
    try:
        session, task_ref, fmt, _, _, path, size = _check(host, handler, query, False)
    except Refused as refusal:
        return _refuse(host, handler, query, refusal)
    from dom0.simulator import dataio

    task_ref = task_ref or dispatch.new_task(host, session, "VDI.export")
    length = size if fmt == "raw" else dataio.vhd_export_length(path, size)
    _respond(handler, 200, [("task-id", task_ref), ("Content-Length", str(length)),
                            ("Content-Type", "application/octet-stream")])

    def work(dataio):
        try:
            # Tests only: a fault armed on "export_raw_vdi" cuts the export
            # after its answer, before the first byte of its body.
            faults.check("export_raw_vdi")
        except errors.XapiError:
            handler.close_connection = True
            raise
        if fmt == "vhd":
            dataio.export_vhd(handler.wfile, path, size)
        else:
            dataio.export_raw(handler.wfile, path, size)

    _run_task(host, task_ref, "export as %s" % fmt, work)
