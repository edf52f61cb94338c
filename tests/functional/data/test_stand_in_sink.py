"""The stand-in image service as a sink: uploads received and dropped.

``ImageService(keep_uploads=False)`` is what ``bench/snapshot_upload.py
--target sink`` measures the agent against: it must still take the upload
as Glance does (the image active, its size the bytes received) while
keeping none of the bytes.
"""

import http.client
import os

import pytest

from nova_xen_split.cmd import demo_env
from nova_xen_split.cmd.image_service import ImageService

MiB = 1 << 20


@pytest.fixture
def sink(tmp_path):
    service = ImageService(upload_dir=str(tmp_path), hash_uploads=False,
                           keep_uploads=False)
    service.start()
    yield service
    service.stop()


def _put(service, image_id, data):
    host, port = service.url.split("//")[1].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("PUT", "/v2/images/%s/file" % image_id, body=data,
                           headers={"Content-Type": "application/octet-stream"})
        return connection.getresponse().status
    finally:
        connection.close()


def test_an_upload_is_taken_with_its_size_and_none_of_its_bytes(sink, tmp_path):
    image_id = demo_env.create_image(sink.url, "sunk")
    size = 3 * MiB + 5
    assert _put(sink, image_id, os.urandom(size)) == 204
    assert sink.status(image_id) == "active"
    assert sink.record(image_id)["size"] == size
    stored = tmp_path / image_id
    assert os.path.getsize(stored) == size
    assert os.stat(stored).st_blocks * 512 < MiB      # a hole, not the bytes


def test_a_sink_needs_a_directory_for_its_holes():
    with pytest.raises(ValueError, match="upload_dir"):
        ImageService(keep_uploads=False)
