"""Uploads into VDIs of the real simulator over HTTP, each checked on its task.

The VDI's bytes are read back both from its file in the SR directory and
through ``GET /export_raw_vdi``; holes are checked on the SR file's allocation.
"""

import hashlib
import os
import tracemalloc
import urllib.request

import pytest

from agent import upload, vdi_import
from nova_xen_split.xenhost import xapi
from rpc import exceptions
from tests.diskfiles import allocated_bytes, make_disk

KiB = 1024
MiB = 1024 * KiB


@pytest.fixture
def session(xapi_sim):
    s = xapi.XapiSession(xapi_sim.url, "root", xapi_sim.password).login()
    yield s
    s.logout()


def new_vdi(session, size_bytes):
    sr = session.call("SR.get_all")[0]
    return session.call("VDI.create", {
        "name_label": "upload-test", "name_description": "", "SR": sr,
        "virtual_size": str(size_bytes), "type": "user", "sharable": False,
        "read_only": False, "other_config": {}, "sm_config": {}, "xenstore_data": {},
        "tags": []})


def vdi_file(sim, session, vdi_ref):
    sr_uuid = session.call("SR.get_uuid", session.call("VDI.get_SR", vdi_ref))
    return os.path.join(sim.state_dir, "sr", sr_uuid,
                        session.call("VDI.get_uuid", vdi_ref) + ".raw")


def export_raw(session, vdi_ref):
    url = session.http_url("/export_raw_vdi", vdi=vdi_ref, format="raw")
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def sparse_source(tmp_path, size=64 * MiB):
    return make_disk(tmp_path / "src.raw", size, [
        (4 * KiB, b"boot sector"), (17 * MiB + 3, os.urandom(300 * KiB)),
        (size - 512, b"last sector")])


@pytest.mark.parametrize("fmt", ["vhd", "chunked", "raw"])
def test_each_format_round_trips_through_the_vdi(xapi_sim, session, tmp_path, fmt):
    source = sparse_source(tmp_path)
    vdi = new_vdi(session, 64 * MiB)

    upload.upload_file(session, vdi, source, fmt)

    assert session.call("task.get_all") == []       # the import's task was checked and gone
    with open(source, "rb") as f:
        expected = f.read()
    with open(vdi_file(xapi_sim, session, vdi), "rb") as f:
        assert f.read() == expected
    assert export_raw(session, vdi) == expected


@pytest.mark.parametrize("fmt", ["vhd", "chunked"])
def test_holes_stay_holes_in_the_vdi(xapi_sim, session, tmp_path, fmt):
    source = sparse_source(tmp_path, size=256 * MiB)
    vdi = new_vdi(session, 256 * MiB)

    upload.upload_file(session, vdi, source, fmt)

    assert allocated_bytes(vdi_file(xapi_sim, session, vdi)) < 8 * MiB


@pytest.mark.parametrize("fmt", ["chunked", "raw"])
def test_an_open_file_is_sent_even_when_its_path_names_another_by_then(
        xapi_sim, session, tmp_path, fmt):
    source = sparse_source(tmp_path)
    with open(source, "rb") as f:
        expected = f.read()
    vdi = new_vdi(session, 64 * MiB)

    with open(source, "rb", buffering=0) as opened:
        # Swapped after the caller checked it, as a store could be.
        impostor = make_disk(tmp_path / "impostor.raw", 64 * MiB, [(0, b"X" * MiB)])
        os.replace(impostor, source)
        upload.upload_file(session, vdi, source, fmt, opened=opened)
        assert not opened.closed          # the caller's to close

    with open(vdi_file(xapi_sim, session, vdi), "rb") as f:
        assert f.read() == expected


def test_an_open_file_cannot_be_sent_as_vhd(session, tmp_path):
    source = sparse_source(tmp_path)
    vdi = new_vdi(session, 64 * MiB)
    with open(source, "rb", buffering=0) as opened, pytest.raises(ValueError, match="vhd"):
        upload.upload_file(session, vdi, source, "vhd", opened=opened)
    assert session.call("task.get_all") == []


def test_progress_callback_reaches_the_body_length(session, tmp_path):
    source = make_disk(tmp_path / "src.raw", 16 * MiB, [(0, os.urandom(9 * MiB))])
    vdi = new_vdi(session, 16 * MiB)
    seen = []

    upload.upload_file(session, vdi, source, "chunked",
                       progress=lambda done, total: seen.append((done, total)))

    assert seen[-1][0] == seen[-1][1] > 9 * MiB
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


class PatternReader:
    """A deterministic stream of ``size`` bytes, never held whole in memory.

    Every 1 MiB piece is non-zero noise stamped with its offset, except the
    pieces listed in ``zero_mib`` which are zeros.
    """

    def __init__(self, size, zero_mib=()):
        self.size = size
        self.position = 0
        self.zero_mib = set(zero_mib)
        self.noise = os.urandom(MiB)
        self.reads = 0

    def piece(self, index):
        if index in self.zero_mib:
            return bytes(MiB)
        return index.to_bytes(8, "little") + self.noise[8:]

    def readinto(self, view):
        self.reads += 1
        want = min(len(view), self.size - self.position, MiB - self.position % MiB)
        if want <= 0:
            return 0
        start = self.position % MiB
        view[:want] = self.piece(self.position // MiB)[start:start + want]
        self.position += want
        return want

    def digest(self):
        h = hashlib.sha256()
        for index in range(-(-self.size // MiB)):
            h.update(self.piece(index)[:min(MiB, self.size - index * MiB)])
        return h.hexdigest()


def file_digest(path, size):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while size:
            data = f.read(min(MiB, size))
            h.update(data)
            size -= len(data)
    return h.hexdigest()


def count_calls(session):
    """Spy on a real session: the XAPI methods it calls, in order."""
    calls = []
    real_call = session.call
    session.call = lambda method, *args: calls.append(method) or real_call(method, *args)
    return calls


def test_stream_round_trips_in_windows_and_zero_windows_send_nothing(xapi_sim, session):
    size = 24 * MiB + 4 * KiB + 7                   # not a multiple of anything
    # With 16 MiB of memory: read windows of 7 MiB, a 2 MiB batch.
    reader = PatternReader(size, zero_mib=set(range(7, 14)) | {20})
    vdi = new_vdi(session, 32 * MiB)
    calls = count_calls(session)

    upload.upload_stream(session, vdi, reader, size, window_bytes=16 * MiB)

    # About 16 MiB of data (the zeros of [7, 14) and 20 MiB sent nothing): a
    # PUT of 8 MiB (half the window), then one of 16 MiB holding the rest.
    assert calls.count("task.create") == 2
    path = vdi_file(xapi_sim, session, vdi)
    assert file_digest(path, size) == reader.digest()
    with open(path, "rb") as f:
        f.seek(size)
        assert f.read() == bytes(32 * MiB - size)
    assert allocated_bytes(path) < 17 * MiB
    assert session.call("task.get_all") == []


def test_sparse_data_is_gathered_into_puts_that_grow(xapi_sim, session):
    size = 128 * MiB
    data_mib = set(range(0, 128, 4))                 # 1 MiB of data every 4 MiB
    reader = PatternReader(size, zero_mib=set(range(128)) - data_mib)
    vdi = new_vdi(session, size)
    calls = count_calls(session)

    upload.upload_stream(session, vdi, reader, size, window_bytes=16 * MiB)

    # 32 MiB of data, buffers of 8 MiB: PUTs of 8 and 16 MiB, then one
    # taking the last few MiB and filled up with zeros; whatever the
    # stream's size, and fewer than the four buffers.
    assert calls.count("task.create") == 3
    path = vdi_file(xapi_sim, session, vdi)
    assert file_digest(path, size) == reader.digest()
    assert allocated_bytes(path) <= 34 * MiB     # the zeros filling the last PUT stay holes


@pytest.mark.parametrize("largest, puts", [(8 * MiB, 3), (None, 2)],
                         ids=["fixed-windows", "growing-windows"])
def test_a_file_goes_in_one_put_per_window_of_its_data(xapi_sim, session, tmp_path,
                                                       largest, puts):
    # 20 MiB of data in three runs, 1 MiB of written zeros, holes between.
    source = make_disk(tmp_path / "src.raw", 96 * MiB, [
        (0, os.urandom(9 * MiB)), (30 * MiB, bytes(MiB)),
        (40 * MiB + 4 * KiB, os.urandom(7 * MiB)), (90 * MiB, os.urandom(4 * MiB))])
    vdi = new_vdi(session, 96 * MiB)
    calls = count_calls(session)

    upload.upload_file(session, vdi, source, "chunked", window_bytes=8 * MiB,
                       max_window_bytes=largest or upload.MAX_PUT_BYTES)

    # 20 MiB and 64 KiB of data (the 7 MiB run straddles a block boundary):
    # in windows of at most 8 MiB, three PUTs; in windows of 8 MiB, then
    # 16 MiB, two. Each is checked on its task.
    assert calls.count("task.create") == puts
    assert session.call("task.get_all") == []
    path = vdi_file(xapi_sim, session, vdi)
    assert file_digest(path, 96 * MiB) == file_digest(source, 96 * MiB)
    assert allocated_bytes(path) <= 21 * MiB


def test_a_failed_file_put_stops_the_scan_and_leaves_no_task(session, tmp_path):
    source = make_disk(tmp_path / "src.raw", 64 * MiB, [(0, os.urandom(64 * MiB))])
    vdi = new_vdi(session, 8 * MiB)                  # the second window passes its end
    calls = count_calls(session)

    with pytest.raises(exceptions.XapiFailure) as err:
        upload.upload_file(session, vdi, source, "chunked", window_bytes=8 * MiB)

    assert err.value.code == "VDI_IO_ERROR"
    assert calls.count("task.create") <= 4           # stopped, not all eight windows
    assert session.call("task.get_all") == []


def test_stream_shorter_than_announced_is_an_error(session):
    reader = PatternReader(3 * MiB)
    vdi = new_vdi(session, 8 * MiB)

    with pytest.raises(exceptions.DiskOperationFailed, match="ended after 3145728 of"):
        upload.upload_stream(session, vdi, reader, 4 * MiB, window_bytes=16 * MiB)


def test_a_failed_put_stops_the_stream_at_once_with_the_tasks_error(session):
    size = 256 * MiB
    reader = PatternReader(size)
    vdi = new_vdi(session, 8 * MiB)                  # the second buffer passes its end

    with pytest.raises(exceptions.XapiFailure) as err:
        upload.upload_stream(session, vdi, reader, size, window_bytes=16 * MiB)

    assert err.value.code == "VDI_IO_ERROR"
    assert reader.position <= 48 * MiB              # a few buffers, not the whole stream
    assert session.call("task.get_all") == []


@pytest.mark.parametrize("fmt", ["raw", "chunked", "vhd"])
def test_a_body_larger_than_the_vdi_fails_with_the_tasks_error(session, tmp_path, fmt):
    source = make_disk(tmp_path / "big.raw", 8 * MiB, [(7 * MiB, os.urandom(MiB))])
    vdi = new_vdi(session, 4 * MiB)

    with pytest.raises(exceptions.XapiFailure) as err:
        upload.upload_file(session, vdi, source, fmt)

    assert err.value.code == "VDI_IO_ERROR"
    assert session.call("task.get_all") == []


def test_a_refused_request_raises_without_sending_the_body(session, tmp_path):
    source = make_disk(tmp_path / "src.raw", 4 * MiB, [(0, b"x")])
    vdi = new_vdi(session, 4 * MiB)
    session.call("VDI.destroy", vdi)
    sent = []

    with pytest.raises(exceptions.XapiFailure) as err:
        upload.upload_file(session, vdi, source, "raw",
                           progress=lambda done, total: sent.append(done))

    # Real XAPI finds no VDI by that name and its HTTP server answers 500,
    # leaving the request's task alone.
    assert err.value.code == "IMPORT_HTTP_ERROR" and "HTTP 500" in str(err.value)
    assert sent == []
    assert session.handle not in str(err.value)
    assert session.call("task.get_all") == []


def test_stream_upload_memory_is_bounded_by_the_window(session):
    size = 256 * MiB
    window = 16 * MiB
    reader = PatternReader(size, zero_mib=range(64, 128))
    vdi = new_vdi(session, size)

    tracemalloc.start()
    try:
        upload.upload_stream(session, vdi, reader, size, window_bytes=window)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < window + 4 * MiB


def test_a_failing_body_source_raises_its_error_and_leaves_no_task(session):
    vdi = new_vdi(session, 8 * MiB)

    def pieces():
        yield [b"\1" * MiB]
        raise exceptions.DiskOperationFailed(operation="read", target="src", reason="gone")

    with pytest.raises(exceptions.DiskOperationFailed, match="gone"):
        vdi_import.put(session, vdi, {"format": "raw"}, 4 * MiB, pieces(),
                       upload.Progress("test", 4 * MiB))

    assert session.call("task.get_all") == []
