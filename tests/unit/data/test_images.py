"""Downloading images from a real HTTP server on loopback.

The image service (``nova_xen_split.cmd.image_service``) runs in a thread
and is set to show a few behaviours Glance shows: the image, 404, 401, 5xx,
a missing Content-Length and a body cut short.
"""

import base64
import hashlib
import logging
import os
import socket
import threading

import pytest
from oslo_config import cfg

from agent import images
from nova_xen_split.cmd.image_service import ImageService
from nova_xen_split.xenhost import conf as nxs_conf
from rpc import exceptions

TOKEN = "gAAAAAB-very-secret-token"
IMAGE = os.urandom(3 * 1024 * 1024 + 17)
IMAGE_MD5 = hashlib.md5(IMAGE).hexdigest()     # Glance sends the checksum as hex


@pytest.fixture
def image_server():
    """Factory: ``image_server(behaviour, record, content_md5)`` → (service,
    base URL) of a started image service holding IMAGE as img-1, whose
    downloads need TOKEN. ``behaviour``: ``ok``; ``empty`` (img-1 has no
    bytes); ``no-length`` (no Content-Length, nor Content-MD5); ``short``
    (the body stops after 1000 bytes); or an HTTP status answered to every
    request. ``record``: img-1's record (None: 404)."""
    services = []

    def start(behaviour="ok", record=None, content_md5=IMAGE_MD5):
        service = ImageService(
            token=TOKEN, fail_status=int(behaviour) if behaviour.isdigit() else None)
        service.add(b"" if behaviour == "empty" else IMAGE, "img-1", record=record,
                    content_md5=None if behaviour == "no-length" else content_md5,
                    unsized=behaviour == "no-length",
                    cut_after=1000 if behaviour == "short" else None)
        services.append(service.start())
        return service, service.url

    yield start
    for service in services:
        service.stop()


def make_conf(servers, num_retries=0, mounts=None, verify_checksum=True):
    conf = cfg.ConfigOpts()
    nxs_conf.register_opts(conf)
    conf([], default_config_files=[])
    conf.set_override("api_servers", servers, group="glance")
    conf.set_override("num_retries", num_retries, group="glance")
    conf.set_override("verify_checksum", verify_checksum, group="glance")
    if mounts is not None:
        conf.set_override("file_url_mounts", mounts, group="glance")
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


def read_in_pieces(reader, piece=1024 * 1024):
    data = bytearray()
    buffer = bytearray(piece)
    while True:
        got = reader.readinto(buffer)
        if not got:
            return bytes(data)
        data += buffer[:got]


@pytest.mark.parametrize("form", ["hex", "HEX", "base64"])
def test_a_download_matching_its_checksum_reads_whole(image_server, form):
    digest = hashlib.md5(IMAGE).digest()
    value = {"hex": digest.hex(), "HEX": digest.hex().upper(),
             "base64": base64.b64encode(digest).decode()}[form]
    _, url = image_server(content_md5=value)

    with images.open_image(make_conf([url]), "img-1", TOKEN) as reader:
        assert read_in_pieces(reader) == IMAGE


def test_a_download_not_matching_its_checksum_raises_at_its_last_byte(image_server):
    wrong = hashlib.md5(IMAGE + b"x").hexdigest()
    _, url = image_server(content_md5=wrong)

    with images.open_image(make_conf([url]), "img-1", TOKEN) as reader:
        head = reader.read(len(IMAGE) - 1)           # all but the last byte: no verdict yet
        with pytest.raises(exceptions.ImageFetchFailed) as err:
            reader.read(1)

    assert head == IMAGE[:-1]
    assert "MD5 %s expected, %s read" % (wrong, IMAGE_MD5) in str(err.value)
    assert TOKEN not in str(err.value)


def test_with_verify_checksum_off_a_mismatch_goes_unchecked(image_server):
    _, url = image_server(content_md5=hashlib.md5(b"other").hexdigest())

    with images.open_image(make_conf([url], verify_checksum=False), "img-1", TOKEN) as r:
        assert read_in_pieces(r) == IMAGE


def test_a_download_without_a_checksum_is_read_unchecked_and_said_so(image_server, caplog):
    _, url = image_server(content_md5=None)

    with caplog.at_level(logging.WARNING, logger="agent.images"):
        with images.open_image(make_conf([url]), "img-1", TOKEN) as reader:
            assert read_in_pieces(reader) == IMAGE

    assert ("gave no checksum (no os_hash_value in its record, no Content-MD5); "
            "downloading it unchecked") in caplog.text


def test_an_empty_download_is_checked_too(image_server):
    _, url = image_server("empty", content_md5=hashlib.md5(b"").hexdigest())
    with images.open_image(make_conf([url]), "img-1", TOKEN) as reader:
        assert reader.read() == b""

    _, url = image_server("empty", content_md5=IMAGE_MD5)
    with pytest.raises(exceptions.ImageFetchFailed, match="do not match"):
        images.open_image(make_conf([url]), "img-1", TOKEN)


# -- the record's multihash (Glance since Rocky) -----------------------------------

def multihash_record(algorithm, value=None):
    if value is None:
        value = hashlib.new(algorithm, IMAGE).hexdigest()
    return {"id": "img-1", "size": len(IMAGE), "checksum": IMAGE_MD5,
            "os_hash_algo": algorithm, "os_hash_value": value}


@pytest.mark.parametrize("algorithm", ["sha512", "sha256", "SHA3_256"])
def test_a_download_is_checked_against_its_records_multihash(image_server, caplog,
                                                             algorithm):
    # The download's Content-MD5 is wrong: only the multihash is checked.
    server, url = image_server(record=multihash_record(algorithm.lower()),
                               content_md5=hashlib.md5(b"other").hexdigest())
    # Glance's names are lower-case; any case is read
    server.records["img-1"]["os_hash_algo"] = algorithm

    with caplog.at_level(logging.INFO, logger="agent.images"):
        with images.open_image(make_conf([url]), "img-1", TOKEN) as reader:
            assert read_in_pieces(reader) == IMAGE

    assert "%s %s to check" % (algorithm.upper(), server.records["img-1"]["os_hash_value"]) \
        in caplog.text
    # Asked once the download had answered, with the token, as glanceclient does.
    assert [path for path, _ in server.requests] == ["/v2/images/img-1/file",
                                                     "/v2/images/img-1"]
    assert server.requests[1][1]["X-Auth-Token"] == TOKEN


def test_a_download_not_matching_its_multihash_raises_though_its_md5_matches(
        image_server):
    wrong = hashlib.sha512(IMAGE + b"x").hexdigest()
    _, url = image_server(record=multihash_record("sha512", wrong))

    with images.open_image(make_conf([url]), "img-1", TOKEN) as reader:
        head = reader.read(len(IMAGE) - 1)
        with pytest.raises(exceptions.ImageFetchFailed) as err:
            reader.read(1)

    assert head == IMAGE[:-1]
    assert "SHA512 %s expected, %s read; from os_hash_value" % (
        wrong, hashlib.sha512(IMAGE).hexdigest()) in str(err.value)
    for thread in hash_threads():
        thread.join(5)
    assert hash_threads() == []


def test_an_algorithm_this_host_lacks_leaves_the_md5_check(image_server, caplog):
    server, url = image_server(record=multihash_record("sha512", "ab" * 64),
                               content_md5=hashlib.md5(b"other").hexdigest())
    server.records["img-1"]["os_hash_algo"] = "whirlpool9"

    with caplog.at_level(logging.WARNING, logger="agent.images"):
        with images.open_image(make_conf([url]), "img-1", TOKEN) as reader:
            with pytest.raises(exceptions.ImageFetchFailed, match="MD5 .* expected"):
                read_in_pieces(reader)
    assert "os_hash_algo 'whirlpool9' is no hash this host can compute" in caplog.text


@pytest.mark.parametrize("algorithm, value, says", [
    ("sha512", "abc", "os_hash_value that is not a sha512 digest"),
    ("sha512", "g" * 128, "os_hash_value that is not a sha512 digest"),
    ("sha256", "ab" * 64, "os_hash_value that is not a sha256 digest"),
    ("sha512", None, "both must be text"),
    (None, "ab" * 64, "both must be text"),
    ("sha512", 12, "both must be text"),
])
def test_a_malformed_multihash_fails_before_a_byte_is_read(image_server, algorithm,
                                                           value, says):
    record = multihash_record("sha512")
    record["os_hash_algo"], record["os_hash_value"] = algorithm, value
    server, url = image_server(record=record)

    with pytest.raises(exceptions.ImageFetchFailed, match=says):
        images.open_image(make_conf([url]), "img-1", TOKEN)
    assert hash_threads() == []
    assert len(server.requests) == 2                 # not retried elsewhere


def test_a_record_that_cannot_be_read_leaves_the_md5_check(image_server, caplog):
    # The stand-in answers 404 for the record (no ``record``), 200 for the data.
    _, url = image_server(content_md5=hashlib.md5(b"other").hexdigest())

    with caplog.at_level(logging.WARNING, logger="agent.images"):
        with images.open_image(make_conf([url]), "img-1", TOKEN) as reader:
            with pytest.raises(exceptions.ImageFetchFailed, match="MD5 .* expected"):
                read_in_pieces(reader)
    assert "its record could not be read" in caplog.text
    assert TOKEN not in caplog.text


def test_with_verify_checksum_off_the_record_is_not_asked_for(image_server):
    server, url = image_server(record=multihash_record("sha512", "ab" * 64))

    with images.open_image(make_conf([url], verify_checksum=False), "img-1", TOKEN) as r:
        assert read_in_pieces(r) == IMAGE
    assert [path for path, _ in server.requests] == ["/v2/images/img-1/file"]


def test_expected_checksum_reads_the_multihash_for_dom0(image_server):
    server, url = image_server(record=multihash_record("sha256"))

    checksum = images.expected_checksum(make_conf([url]), "img-1", TOKEN)

    assert checksum == images.Checksum("sha256", hashlib.sha256(IMAGE).hexdigest(),
                                       "os_hash_value")
    assert [path for path, _ in server.requests] == ["/v2/images/img-1"]
    assert images.expected_checksum(make_conf([url], verify_checksum=False), "img-1",
                                    TOKEN) is None
    assert len(server.requests) == 1


def test_expected_checksum_without_a_readable_multihash(image_server, caplog):
    _, no_record = image_server()
    server, old_image = image_server(record={"id": "img-1", "size": len(IMAGE),
                                             "checksum": IMAGE_MD5})
    _, broken = image_server(record=multihash_record("sha512", "xyz"))

    with caplog.at_level(logging.WARNING, logger="agent.images"):
        assert images.expected_checksum(make_conf([no_record]), "img-1", TOKEN) is None
    assert "its record could not be read" in caplog.text
    assert images.expected_checksum(make_conf([old_image]), "img-1", TOKEN) is None
    with pytest.raises(exceptions.ImageFetchFailed, match="not a sha512 digest"):
        images.expected_checksum(make_conf([broken]), "img-1", TOKEN)


@pytest.mark.parametrize("value", ["not-a-checksum", "0123456789abcdef", "AAAA",
                                   "0123456789abcdef0123456789abcdeg"])
def test_a_content_md5_that_is_no_md5_is_refused_before_reading(image_server, value):
    server, url = image_server(content_md5=value)

    with pytest.raises(exceptions.ImageFetchFailed,
                       match="Content-MD5 that is not an MD5 checksum"):
        images.open_image(make_conf([url]), "img-1", TOKEN)
    # Not retried: the answer is the answer.
    assert [path for path, _ in server.requests].count("/v2/images/img-1/file") == 1


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


# -- file locations ---------------------------------------------------------------
# Glance's filesystem store seen at /var/lib/glance/images by the image
# service and mounted at tmp_path/"store" here.

GLANCE_DIR = "/var/lib/glance/images"


@pytest.fixture
def store(tmp_path):
    local = tmp_path / "store"
    local.mkdir()
    (local / "img-1").write_bytes(IMAGE)
    return local


def record(*urls, size=len(IMAGE)):
    return {"id": "img-1", "size": size, "direct_url": urls[0] if urls else None,
            "locations": [{"url": u, "metadata": {}} for u in urls]}


def test_an_image_in_a_shared_store_is_read_from_its_file(image_server, store):
    server, url = image_server(record=record("file://%s/img-1" % GLANCE_DIR))
    conf = make_conf([url], mounts={GLANCE_DIR: str(store)})

    with images.open_image(conf, "img-1", TOKEN) as reader:
        assert isinstance(reader, images.LocalImageFile)
        assert reader.path == str(store / "img-1")
        assert reader.size_bytes == len(IMAGE)
        assert reader.read(10) + reader.read() == IMAGE

    # The record was asked for, with the token; the data never was.
    assert [path for path, _ in server.requests] == ["/v2/images/img-1"]
    assert server.requests[0][1]["X-Auth-Token"] == TOKEN


def test_without_mounts_the_location_is_not_used(image_server, store):
    server, url = image_server(record=record("file://%s/img-1" % GLANCE_DIR))

    with images.open_image(make_conf([url]), "img-1", TOKEN) as reader:
        assert isinstance(reader, images.ImageReader)
        assert reader.read() == IMAGE
    # The record is asked for its checksum only, once the download answered.
    assert [path for path, _ in server.requests] == ["/v2/images/img-1/file",
                                                     "/v2/images/img-1"]


@pytest.mark.parametrize("case", [
    "no-location", "other-scheme", "outside-mounts", "dot-dot", "symlink-out",
    "other-host", "wrong-size", "missing", "directory", "no-size", "not-json"])
def test_an_unusable_location_falls_back_to_the_download(image_server, store, tmp_path,
                                                         caplog, case):
    secret = tmp_path / "secret"
    secret.write_bytes(IMAGE)  # same size as the image: only the path may refuse it
    (store / "link").symlink_to(secret)
    (store / "dir").mkdir()
    locations = {
        "no-location": record(),
        "other-scheme": record("rbd://fsid/images/img-1/snap"),
        "outside-mounts": record("file:///srv/other/img-1"),
        "dot-dot": record("file://%s/../../../%s" % (GLANCE_DIR, secret)),
        "symlink-out": record("file://%s/link" % GLANCE_DIR),
        "other-host": record("file://glance-host%s/img-1" % GLANCE_DIR),
        "wrong-size": record("file://%s/img-1" % GLANCE_DIR, size=len(IMAGE) + 1),
        "missing": record("file://%s/img-2" % GLANCE_DIR),
        "directory": record("file://%s/dir" % GLANCE_DIR),
        "no-size": record("file://%s/img-1" % GLANCE_DIR, size=None),
        "not-json": b"<html>no</html>",
    }
    server, url = image_server(record=locations[case])
    conf = make_conf([url], mounts={GLANCE_DIR: str(store)})

    with caplog.at_level(logging.INFO, logger="agent.images"):
        with images.open_image(conf, "img-1", TOKEN) as reader:
            assert isinstance(reader, images.ImageReader)
            assert reader.read() == IMAGE

    assert [path for path, _ in server.requests] == ["/v2/images/img-1",
                                                     "/v2/images/img-1/file"]
    assert "downloading it" in caplog.text
    assert TOKEN not in caplog.text


def test_the_first_usable_location_is_taken(image_server, store):
    _, url = image_server(record=record("file:///elsewhere/img-1",
                                        "file://%s/img-1" % GLANCE_DIR))
    conf = make_conf([url], mounts={GLANCE_DIR: str(store)})

    with images.open_image(conf, "img-1", None) as reader:
        assert reader.path == str(store / "img-1")


@pytest.mark.parametrize("url, mounts, expected", [
    ("file:///g/a/b.raw", {"/g": "L"}, "L/a/b.raw"),
    ("file://localhost/g/x%20y", {"/g/": "L"}, "L/x y"),
    ("file:///g/deeper/x", {"/g": "L", "/g/deeper": "M"}, "M/x"),
])
def test_local_path_maps_the_store_directory(tmp_path, url, mounts, expected):
    mounts = {k: str(tmp_path / v) for k, v in mounts.items()}

    assert images.local_path(url, mounts) == str(tmp_path / expected)


@pytest.mark.parametrize("url", ["file:///g", "file:///gx/a", "file://h/g/a",
                                 "file:///g/../etc/passwd", "http:///g/a"])
def test_local_path_refuses_what_is_not_inside_a_mount(tmp_path, url):
    with pytest.raises(ValueError):
        images.local_path(url, {"/g": str(tmp_path)})


def test_a_file_that_shrinks_while_read_raises(store):
    reader = images.LocalImageFile.open("img-1", str(store / "img-1"), len(IMAGE))
    os.truncate(store / "img-1", 1000)

    with reader, pytest.raises(exceptions.ImageFetchFailed,
                               match="broke after 1000 of %d" % len(IMAGE)):
        reader.read()


def test_a_copy_from_a_store_file_skips_its_holes_unread(tmp_path):
    from agent.backends import in_guest

    size = 64 * 1024 * 1024 + 4096 + 7
    runs = [(1024 * 1024 + 5, os.urandom(100_000)), (40 * 1024 * 1024 - 3, os.urandom(9)),
            (size - 7, b"\x01" * 7)]
    source = tmp_path / "image.raw"
    with open(source, "wb") as f:
        f.truncate(size)
        for offset, data in runs:
            f.seek(offset)
            f.write(data)
    reader = images.LocalImageFile.open("img-1", str(source), size)
    read = []
    real_readinto = reader.readinto
    reader.readinto = lambda buffer: read.append(real_readinto(buffer)) or read[-1]
    target_path = tmp_path / "disk"

    with reader, open(target_path, "w+b") as target:
        target.truncate(size)
        copied = in_guest._copy_skipping_zeros(reader, target, size, "test copy", None)

    assert copied == size
    assert target_path.read_bytes() == source.read_bytes()
    # Three pieces around the three runs, not the 64 MiB of holes.
    assert sum(read) <= 3 * in_guest.WRITE_PIECE_BYTES


def hash_threads():
    return [t for t in threading.enumerate()
            if t.name == images._HashThread.THREAD_NAME and t.is_alive()]


def test_the_hash_thread_sums_updates_of_any_size_as_hashlib_does():
    data = os.urandom(3 * 1024 * 1024 + 4097)
    summer = images._HashThread("md5")
    offset = 0
    for size in (1, 4095, 1024 * 1024, 5, 2 * 1024 * 1024 - 3, 7000):
        summer.update(memoryview(data)[offset:offset + size])
        offset += size
    summer.update(data[offset:])

    assert summer.hexdigest() == hashlib.md5(data).hexdigest()
    assert hash_threads() == []


def test_a_download_cut_short_leaves_no_hash_thread(image_server):
    _, url = image_server("short", content_md5=IMAGE_MD5)

    reader = images.open_image(make_conf([url]), "img-1", TOKEN)
    with pytest.raises(exceptions.ImageFetchFailed):
        reader.read()

    for thread in hash_threads():
        thread.join(5)
    assert hash_threads() == []


def test_updates_after_a_close_from_another_thread_neither_block_nor_sum():
    summer = images._HashThread("md5")
    summer.close()                          # as when a fetch is given up
    done = threading.Event()

    def feed():
        summer.update(bytes(5 * 1024 * 1024))   # more than both buffers
        done.set()

    threading.Thread(target=feed, daemon=True).start()
    assert done.wait(10)
    for thread in hash_threads():
        thread.join(5)
    assert hash_threads() == []


def test_a_token_that_is_no_header_value_is_refused_without_quoting_it(image_server,
                                                                      caplog):
    # The interface refuses such a token first (auth_token's pattern); this
    # is the agent's own guard: http.client's error would quote it.
    server, url = image_server()
    token = "SECRET-TOKEN\r\nX-Injected: 1"
    with caplog.at_level(logging.DEBUG), \
            pytest.raises(exceptions.ImageFetchFailed) as caught:
        images.open_image(make_conf([url]), "img-1", token)
    assert "not a valid HTTP header value" in str(caught.value)
    assert "SECRET" not in str(caught.value) and "SECRET" not in caplog.text
    assert server.requests == []
