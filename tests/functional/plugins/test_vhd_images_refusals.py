"""download_vhd refuses bad requests and bad images, leaving the SR as it was.

Each refusal is a XENAPI_PLUGIN_FAILURE naming the problem; afterwards the
SR directory holds exactly what it held before (no VHD, no staging dir), and
the auth token appears in no error.
"""

import gzip
import hashlib
import os
import socket
import tarfile

import pytest

from tests.functional.plugins import vhdchain
from tests.functional.plugins.conftest import img, download_args, tarball

# Image ids are Glance's: uuids.
IMAGE_ID = "0c2c5cf8-5b3f-4d2c-9a53-6e1d7f7d5a11"
TOKEN_ECHO_IMAGE = "e0c0e0c0-7000-4000-8000-000000000001"

PLUGIN = "vhd_images.py"


def _refused(dom0, service, image_id, error_class, phrase, **overrides):
    before = sorted(os.listdir(dom0.sr_path))
    details = dom0.failure(PLUGIN, "download_vhd",
                           **download_args(dom0, service, image_id, **overrides))
    assert details[:3] == ["XENAPI_PLUGIN_FAILURE", "download_vhd", error_class], details
    assert phrase in details[3], details
    assert service.token not in " ".join(details)
    assert sorted(os.listdir(dom0.sr_path)) == before
    return details[3]


@pytest.mark.parametrize("endpoint, phrase", [
    ("ftp://127.0.0.1/images", "http:// or https://"),
    ("file:///etc/passwd", "http:// or https://"),
    ("127.0.0.1:9292", "http:// or https://"),
    ("http://", "http:// or https://"),
    ("http://user:secret@127.0.0.1:9292", "must not carry credentials"),
    ("http://127.0.0.1:9292/?x=1", "plain base URL"),
    ("http://127.0.0.1:9292/a b", "plain base URL"),
    ("http://127.0.0.1:99999", "invalid port"),
])
def test_endpoints_other_than_plain_http_urls_are_refused(dom0, image_service, endpoint,
                                                          phrase):
    _refused(dom0, image_service, IMAGE_ID, "InvalidArgument", phrase, endpoint=endpoint)


@pytest.mark.parametrize("image_id", ["../../x", "a/b", "", ".", "..", "x" * 65, "a\nb"])
def test_image_ids_outside_the_pattern_are_refused(dom0, image_service, image_id):
    _refused(dom0, image_service, image_id, "InvalidArgument", "image_id must match")


def test_a_token_that_could_inject_a_header_is_refused(dom0, image_service):
    _refused(dom0, image_service, IMAGE_ID, "InvalidArgument", "printable ASCII",
             auth_token="tok\r\nX-Injected: 1")


def test_sr_paths_outside_the_sr_root_are_refused(dom0, image_service, tmp_path):
    root = os.path.dirname(dom0.sr_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    disguised = os.path.join(root, "0b4f5e6a-1c2d-4e3f-8a9b-0c1d2e3f4a5b")
    os.symlink(str(outside), disguised)
    try:
        for sr_path in ["/tmp", root, dom0.sr_path + "/../..", str(outside), disguised,
                        "relative/sr", os.path.join(root, "not-a-uuid")]:
            _refused(dom0, image_service, IMAGE_ID, "InvalidArgument", "sr_path",
                     sr_path=sr_path)
    finally:
        os.unlink(disguised)
    assert os.listdir(str(outside)) == []
    assert image_service.requests == []  # refused before anything was fetched


def test_a_wrong_token_is_reported_as_the_services_answer(dom0, image_service):
    _refused(dom0, image_service, IMAGE_ID, "ImageFetchFailed", "HTTP 401",
             auth_token="not-the-token")


def test_the_token_is_scrubbed_even_when_the_service_repeats_it(dom0, image_service):
    message = _refused(dom0, image_service, TOKEN_ECHO_IMAGE, "ImageFetchFailed", "HTTP 403")
    assert "<token>" in message


def test_an_unknown_image_is_reported_with_its_id(dom0, image_service):
    missing = img("no-such-image")
    _refused(dom0, image_service, missing, "ImageFetchFailed",
             "HTTP 404 Not Found for image %s" % missing)


def test_an_unreachable_service_is_a_clean_failure(dom0, image_service):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _refused(dom0, image_service, IMAGE_ID, "ImageFetchFailed", "cannot reach the image service",
             endpoint="http://127.0.0.1:%d" % port)


def _link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _dir(name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


@pytest.mark.parametrize("members, phrase", [
    (lambda v: [("../0.vhd", v["1.vhd"])], "unexpected tarball member '../0.vhd'"),
    (lambda v: [("/etc/cron.d/x", b"x")], "unexpected tarball member '/etc/cron.d/x'"),
    (lambda v: [("sub/0.vhd", v["1.vhd"])], "unexpected tarball member"),
    (lambda v: [("0.vhd", v["1.vhd"]), ("evil.sh", b"rm -rf /")], "'evil.sh'"),
    (lambda v: [_link("image.vhd", "/etc/passwd")], "not a regular file"),
    (lambda v: [("1.vhd", v["1.vhd"]), _link("0.vhd", "1.vhd", tarfile.LNKTYPE)],
     "not a regular file"),
    (lambda v: [_dir("0.vhd")], "not a regular file"),
    (lambda v: [_dir("sub")], "unexpected tarball member 'sub'"),
    (lambda v: [("0.vhd", v["0.vhd"]), ("0.vhd", v["1.vhd"])], "repeated"),
    (lambda v: [("0.vhd", v["0.vhd"]), ("2.vhd", v["1.vhd"])], "no gaps"),
    (lambda v: [("1.vhd", v["1.vhd"])], "no gaps"),
    (lambda v: [("0.vhd", v["0.vhd"]), ("image.vhd", v["1.vhd"])], "expected 0.vhd"),
    (lambda v: [("snap.vhd", v["0.vhd"])], "expected 0.vhd"),
    (lambda v: [], "no VHD"),
    (lambda v: [("0.vhd", v["0.vhd"])], "differencing VHD without its parent"),
    (lambda v: [("0.vhd", v["1.vhd"]), ("1.vhd", v["1.vhd"])],
     "0.vhd is a dynamic VHD but 1.vhd follows it"),
    (lambda v: [("image.vhd", v["1.vhd"][:-488] + bytes([v["1.vhd"][-488] ^ 1])
                 + v["1.vhd"][-487:])], "footer checksum"),
    (lambda v: [("image.vhd", b"not a vhd" * 100)], "no VHD footer"),
])
def test_tarballs_with_unexpected_members_or_bad_vhds_are_refused(
        dom0, image_service, chain_files, members, phrase):
    image_service.images[img("bad")] = tarball(members(chain_files))
    _refused(dom0, image_service, img("bad"), "ImageFetchFailed", phrase)


def test_a_child_whose_parent_uuid_does_not_match_is_refused(
        dom0, image_service, chain_files, tmp_path):
    (tmp_path / "other.raw").write_bytes(chain_files["base"])
    vhdchain.make_base(str(tmp_path / "other.raw"), str(tmp_path / "other.vhd"))
    image_service.images[img("bad")] = tarball(
        [("0.vhd", chain_files["0.vhd"]), ("1.vhd", (tmp_path / "other.vhd").read_bytes())])
    _refused(dom0, image_service, img("bad"), "ImageFetchFailed", "0.vhd's parent is VHD")


def test_a_body_that_is_not_a_tarball_is_refused(dom0, image_service):
    image_service.images[img("bad")] = os.urandom(20000)
    _refused(dom0, image_service, img("bad"), "ImageFetchFailed", "not a readable tarball")


def test_a_truncated_tarball_is_refused(dom0, image_service, chain_files):
    image_service.images[img("bad")] = tarball([("image.vhd", chain_files["1.vhd"])])[:300000]
    _refused(dom0, image_service, img("bad"), "ImageFetchFailed",
             "not a readable tarball: unexpected end of data")


def test_a_connection_cut_midway_is_a_clean_failure(dom0, image_service, chain_files):
    image_service.images[img("cut")] = tarball([("image.vhd", chain_files["1.vhd"])])
    image_service.cut_after[img("cut")] = len(image_service.images[img("cut")]) // 2
    _refused(dom0, image_service, img("cut"), "ImageFetchFailed",
             "the image service sent")


def test_a_gzip_body_that_is_corrupt_is_refused(dom0, image_service, chain_files):
    body = bytearray(tarball([("image.vhd", chain_files["1.vhd"])], compress=True))
    body[len(body) // 2:len(body) // 2 + 64] = bytes(64)
    image_service.images[img("bad")] = bytes(body)
    _refused(dom0, image_service, img("bad"), "ImageFetchFailed", "CRC check failed")


def test_a_corrupt_gzip_body_with_a_long_tail_is_refused_unchecksummed(
        dom0, image_service, chain_files):
    # 4 MiB of padding after the archive's end: more than the tar reader
    # reads ahead, so only reading the gzip stream to its end checks the
    # CRC. Stored (level 0), a flipped byte changes the VHD's data and
    # nothing else; without Content-MD5 the CRC is the only check.
    vhd = chain_files["1.vhd"]
    plain = tarball([("image.vhd", vhd)]) + bytes(4 << 20)
    body = bytearray(gzip.compress(plain, compresslevel=0))
    at = bytes(body).index(vhd[-4096:-4000])   # inside the VHD, stored as is
    body[at] ^= 0xFF
    image_service.images[img("tail")] = bytes(body)
    image_service.content_md5[img("tail")] = None
    _refused(dom0, image_service, img("tail"), "ImageFetchFailed", "CRC check failed")


def test_a_body_that_does_not_match_its_checksum_lands_nothing(dom0, image_service,
                                                               chain_files):
    body = tarball([("image.vhd", chain_files["1.vhd"])])
    image_service.images[img("rot")] = body
    image_service.content_md5[img("rot")] = hashlib.md5(body + b"!").hexdigest()
    _refused(dom0, image_service, img("rot"), "ImageFetchFailed",
             "do not match the image's checksum (MD5 %s expected, %s read)"
             % (hashlib.md5(body + b"!").hexdigest(), hashlib.md5(body).hexdigest()))


def test_a_body_that_does_not_match_its_multihash_lands_nothing(dom0, image_service,
                                                               chain_files):
    body = tarball([("image.vhd", chain_files["1.vhd"])])
    image_service.images[img("rot")] = body      # its Content-MD5 is right
    wrong = hashlib.sha512(body + b"!").hexdigest()
    _refused(dom0, image_service, img("rot"), "ImageFetchFailed",
             "do not match the image's checksum (SHA512 %s expected, %s read)"
             % (wrong, hashlib.sha512(body).hexdigest()),
             hash_algo="sha512", hash_value=wrong)


@pytest.mark.parametrize("algo, value, phrase", [
    ("sha512", "", "hash_value must be a sha512 digest as 128 lower-case hex digits"),
    ("", "ab" * 64, "hash_algo must match"),
    ("sha512", "AB" * 64, "hash_value must be a sha512 digest"),
    ("sha256", "ab" * 64, "hash_value must be a sha256 digest as 64"),
    ("sha512", "ab" * 64 + "\n", "hash_value must be a sha512 digest"),
    ("SHA512", "ab" * 64, "hash_algo must match"),
    ("sha512; rm -rf /", "ab" * 64, "hash_algo must match"),
    ("shake_128", "ab" * 16, "no hash with a fixed digest size"),
    ("nohash99", "ab" * 16, "no hash with a fixed digest size"),
])
def test_a_malformed_multihash_is_refused_before_anything_is_fetched(
        dom0, image_service, chain_files, algo, value, phrase):
    image_service.images[img("1")] = tarball([("image.vhd", chain_files["1.vhd"])])
    _refused(dom0, image_service, img("1"), "InvalidArgument", phrase,
             hash_algo=algo, hash_value=value)
    assert image_service.requests == []


def test_a_change_after_the_end_of_the_archive_is_caught_too(dom0, image_service,
                                                             chain_files):
    # The checksum covers the whole body, padding the tar reader never needs included.
    body = bytearray(tarball([("image.vhd", chain_files["1.vhd"])]))
    checksum = hashlib.md5(body).hexdigest()
    assert body[-1] == 0
    body[-1] = 1
    image_service.images[img("pad")] = bytes(body)
    image_service.content_md5[img("pad")] = checksum
    _refused(dom0, image_service, img("pad"), "ImageFetchFailed",
             "do not match the image's checksum")


@pytest.mark.parametrize("value", ["not-md5", "AAAA", "g" * 32])
def test_a_content_md5_that_is_no_checksum_is_refused(dom0, image_service, chain_files,
                                                      value):
    image_service.images[img("odd")] = tarball([("image.vhd", chain_files["1.vhd"])])
    image_service.content_md5[img("odd")] = value
    _refused(dom0, image_service, img("odd"), "ImageFetchFailed",
             "Content-MD5 that is not an MD5 checksum")


@pytest.mark.parametrize("value", ["yes", "True", "1", ""])
def test_verify_checksum_must_be_true_or_false(dom0, image_service, chain_files, value):
    image_service.images[IMAGE_ID] = tarball([("image.vhd", chain_files["1.vhd"])])
    _refused(dom0, image_service, IMAGE_ID, "InvalidArgument", "must be true or false",
             verify_checksum=value)


@pytest.mark.parametrize("value", ["not-a-uuid", "3F0C7C4E-9B7A-4C59-8D0E-2A6B1F4E5D6C",
                                   "../3f0c7c4e-9b7a-4c59-8d0e-2a6b1f4e5d6c"])
def test_leaf_uuid_must_be_a_lower_case_uuid(dom0, image_service, chain_files, value):
    image_service.images[IMAGE_ID] = tarball([("image.vhd", chain_files["1.vhd"])])
    _refused(dom0, image_service, IMAGE_ID, "InvalidArgument", "leaf_uuid must be",
             leaf_uuid=value)


def test_a_leaf_uuid_already_in_the_sr_is_refused(dom0, image_service, chain_files):
    image_service.images[IMAGE_ID] = tarball([("image.vhd", chain_files["1.vhd"])])
    taken = "3f0c7c4e-9b7a-4c59-8d0e-2a6b1f4e5d6c"
    with open(os.path.join(dom0.sr_path, taken + ".vhd"), "wb") as f:
        f.write(b"someone else's")
    try:
        _refused(dom0, image_service, IMAGE_ID, "ImageFetchFailed", "already exists in the SR",
                 leaf_uuid=taken)
        with open(os.path.join(dom0.sr_path, taken + ".vhd"), "rb") as f:
            assert f.read() == b"someone else's"
    finally:
        os.unlink(os.path.join(dom0.sr_path, taken + ".vhd"))
