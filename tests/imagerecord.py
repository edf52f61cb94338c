"""The image record (``GET /v2/images/<id>``) of the loopback image services.

The tests' image server, the benchmarks' and the demo's answer alike: the
id, the size, when given the image's multihash and, when asked, the image's
file as its one location, as Glance's filesystem store shows it
(``show_multiple_locations``).
"""

import json
import os


def send_image_record(handler, image_id, path, show_location, multihash=None):
    """Answer ``handler``'s request with the record of the image at ``path``;
    ``multihash``: its (``os_hash_algo``, ``os_hash_value``), as Glance
    computes them since Rocky."""
    record = {"id": image_id, "size": os.path.getsize(path), "status": "active"}
    if multihash is not None:
        record["os_hash_algo"], record["os_hash_value"] = multihash
    if show_location:
        record["locations"] = [{"url": "file://" + os.path.abspath(path), "metadata": {}}]
    body = json.dumps(record).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
