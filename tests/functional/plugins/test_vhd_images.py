"""vhd_images.download_vhd through host.call_plugin, from a loopback image service.

The chain lands in the simulator's SR directory; ``SR.scan`` introduces it
and ``GET /export_raw_vdi`` must give back exactly the source disk.
"""

import base64
import hashlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import xmlrpc.client

import pytest

from tests.functional.plugins import vhdchain
from tests.functional.plugins.conftest import img, SIZE, download_args, tarball

# Image ids are Glance's: uuids.
IMAGE_ID = "0c2c5cf8-5b3f-4d2c-9a53-6e1d7f7d5a11"

PLUGIN = "vhd_images.py"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def _export_raw(dom0, vdi_ref):
    query = urllib.parse.urlencode({"session_id": dom0.session._session, "vdi": vdi_ref,
                                    "format": "raw"})
    with urllib.request.urlopen("%s/export_raw_vdi?%s" % (dom0.sim.url, query),
                                timeout=60) as response:
        return response.read()


@pytest.mark.parametrize("compress", [False, True], ids=["tar", "tar.gz"])
def test_a_single_image_vhd_lands_in_the_sr_with_the_source_content(
        dom0, image_service, chain_files, compress):
    image_service.images[img("1")] = tarball([("image.vhd", chain_files["1.vhd"])], compress)

    result = dom0.call(PLUGIN, "download_vhd", **download_args(dom0, image_service, img("1")))

    assert result["chain"] == [result["root"]]
    assert result["checksum_verified"] is True
    assert result["checksum"] == "md5"
    assert [(r.path, r.token) for r in image_service.requests] == [
        ("/v2/images/%s/file" % img("1"), image_service.token)]
    assert sorted(os.listdir(dom0.sr_path)) == [result["root"] + ".vhd"]
    dom0.api.SR.scan(dom0.sr)
    vdi = dom0.api.VDI.get_by_uuid(result["root"])
    assert int(dom0.api.VDI.get_virtual_size(vdi)) == SIZE
    assert _export_raw(dom0, vdi) == chain_files["base"]


def test_a_numbered_chain_lands_as_a_leaf_over_its_unmanaged_parent(
        dom0, image_service, chain_files):
    image_service.images[img("2")] = tarball(
        [("0.vhd", chain_files["0.vhd"]), ("1.vhd", chain_files["1.vhd"])])

    result = dom0.call(PLUGIN, "download_vhd", **download_args(dom0, image_service, img("2")))

    leaf_uuid, parent_uuid = result["chain"]
    assert result["root"] == leaf_uuid != parent_uuid
    dom0.api.SR.scan(dom0.sr)
    leaf = dom0.api.VDI.get_by_uuid(leaf_uuid)
    parent = dom0.api.VDI.get_by_uuid(parent_uuid)
    assert dom0.api.VDI.get_sm_config(leaf)["vhd-parent"] == parent_uuid
    assert dom0.api.VDI.get_managed(parent) is False
    assert _export_raw(dom0, leaf) == chain_files["child"]
    assert _export_raw(dom0, parent) == chain_files["base"]


def test_the_leaf_lands_under_the_uuid_the_caller_chose(dom0, image_service, chain_files):
    image_service.images[img("3")] = tarball(
        [("0.vhd", chain_files["0.vhd"]), ("1.vhd", chain_files["1.vhd"])])
    chosen = "3f0c7c4e-9b7a-4c59-8d0e-2a6b1f4e5d6c"

    result = dom0.call(PLUGIN, "download_vhd",
                       **download_args(dom0, image_service, img("3"), leaf_uuid=chosen))

    assert result["root"] == result["chain"][0] == chosen
    dom0.api.SR.scan(dom0.sr)
    assert _export_raw(dom0, dom0.api.VDI.get_by_uuid(chosen)) == chain_files["child"]


def test_old_style_snap_over_image_is_accepted_and_its_locators_relinked(
        dom0, image_service, chain_files, tmp_path):
    vhdchain.make_child(chain_files["base"], chain_files["child"], str(tmp_path / "1.vhd"),
                        "image.vhd", str(tmp_path / "snap.vhd"))
    image_service.images[img("3")] = tarball(
        [("./image.vhd", chain_files["1.vhd"]),
         ("./snap.vhd", (tmp_path / "snap.vhd").read_bytes())])

    result = dom0.call(PLUGIN, "download_vhd", **download_args(dom0, image_service, img("3")))

    leaf_uuid, parent_uuid = result["chain"]
    with open(os.path.join(dom0.sr_path, leaf_uuid + ".vhd"), "rb") as f:
        leaf = f.read()
    header = leaf[512:1536]
    assert header[64:576].decode("utf-16-be").rstrip("\0") == parent_uuid + ".vhd"
    code, _, length, _, offset = struct.unpack_from(">4sIIIQ", header, 576 + 2 * 24)
    assert (code, leaf[offset:offset + length]) == (
        b"MacX", ("file://./%s.vhd" % parent_uuid).encode())
    dom0.api.SR.scan(dom0.sr)
    assert _export_raw(dom0, dom0.api.VDI.get_by_uuid(leaf_uuid)) == chain_files["child"]


@pytest.mark.parametrize("md5, verify", [(None, "true"), ("0" * 32, "false")],
                         ids=["no-checksum-sent", "verify-off"])
def test_an_unchecked_chain_lands_and_says_it_was_not_checked(
        dom0, image_service, chain_files, md5, verify):
    image_service.images[img("u")] = tarball([("image.vhd", chain_files["1.vhd"])])
    image_service.content_md5[img("u")] = md5

    result = dom0.call(PLUGIN, "download_vhd", verify_checksum=verify,
                       **download_args(dom0, image_service, img("u")))

    assert result["checksum_verified"] is False
    assert result["checksum"] == ""
    dom0.api.SR.scan(dom0.sr)
    assert _export_raw(dom0, dom0.api.VDI.get_by_uuid(result["root"])) == chain_files["base"]


def test_a_base64_content_md5_is_checked_too(dom0, image_service, chain_files):
    body = tarball([("image.vhd", chain_files["1.vhd"])])
    image_service.images[img("b")] = body
    image_service.content_md5[img("b")] = base64.b64encode(hashlib.md5(body).digest()).decode()

    result = dom0.call(PLUGIN, "download_vhd", **download_args(dom0, image_service, img("b")))

    assert result["checksum_verified"] is True


@pytest.mark.parametrize("algorithm", ["sha512", "sha256"])
def test_the_records_multihash_is_checked_instead_of_the_content_md5(
        dom0, image_service, chain_files, algorithm):
    body = tarball([("image.vhd", chain_files["1.vhd"])])
    image_service.images[img("h")] = body
    image_service.content_md5[img("h")] = "0" * 32   # wrong: not what is checked

    result = dom0.call(PLUGIN, "download_vhd", hash_algo=algorithm,
                       hash_value=hashlib.new(algorithm, body).hexdigest(),
                       **download_args(dom0, image_service, img("h")))

    assert (result["checksum_verified"], result["checksum"]) == (True, algorithm)
    dom0.api.SR.scan(dom0.sr)
    assert _export_raw(dom0, dom0.api.VDI.get_by_uuid(result["root"])) == chain_files["base"]


def _staging_dir(sr_path, name, age_seconds, files=("0.vhd",)):
    path = os.path.join(sr_path, ".nxs-staging-" + name)
    os.mkdir(path)
    when = time.time() - age_seconds
    for file_name in files:
        with open(os.path.join(path, file_name), "wb") as f:
            f.write(b"partial")
        os.utime(os.path.join(path, file_name), (when, when))
    os.utime(path, (when, when))
    return path


def test_staging_left_by_a_killed_download_is_removed_by_the_next_one(
        dom0, image_service, chain_files):
    hour = 3600
    dead = _staging_dir(dom0.sr_path, "dead", 2 * hour)
    # Old directory, but a file in it changed a minute ago: a live download.
    live = _staging_dir(dom0.sr_path, "live", 2 * hour, files=())
    with open(os.path.join(live, "1.vhd"), "wb") as f:
        f.write(b"still arriving")
    not_a_dir = os.path.join(dom0.sr_path, ".nxs-staging-file")
    with open(not_a_dir, "wb"):
        pass
    os.utime(not_a_dir, (time.time() - 2 * hour,) * 2)
    image_service.images[img("s")] = tarball([("image.vhd", chain_files["1.vhd"])])

    result = dom0.call(PLUGIN, "download_vhd", **download_args(dom0, image_service, img("s")))

    assert result["stale_staging_removed"] == [".nxs-staging-dead"]
    assert not os.path.exists(dead)
    assert os.listdir(live) == ["1.vhd"]
    assert os.path.exists(not_a_dir)
    assert sorted(os.listdir(dom0.sr_path)) == sorted(
        [result["root"] + ".vhd", ".nxs-staging-live", ".nxs-staging-file"])


def test_a_download_stopped_with_sigterm_removes_its_staging(dom0, chain_files):
    # Run as XAPI runs a plugin (a process with the request in argv), so
    # the test can signal it; the image service sends half the image, then
    # stalls.
    body = tarball([("image.vhd", chain_files["1.vhd"])])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve():
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
                     + body[:len(body) // 2])
        stop.wait(60)
        conn.close()

    stop = threading.Event()
    server = threading.Thread(target=serve, daemon=True)
    server.start()
    request = xmlrpc.client.dumps(("session", {
        "image_id": IMAGE_ID, "auth_token": "", "sr_path": dom0.sr_path,
        "endpoint": "http://127.0.0.1:%d" % listener.getsockname()[1]}), "download_vhd")
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "dom0", "simulator", "pluginlib"),
               NXS_DOM0_SR_ROOT=os.path.dirname(dom0.sr_path))
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "dom0", "plugins", PLUGIN),
                             request], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not any(name.startswith(".nxs-staging-") and
                      os.listdir(os.path.join(dom0.sr_path, name))
                      for name in os.listdir(dom0.sr_path)):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stop.set()
        server.join(10)
        listener.close()
    assert proc.returncode == 128 + signal.SIGTERM
    assert os.listdir(dom0.sr_path) == []
