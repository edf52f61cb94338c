"""The image record (``GET /v2/images/<id>``) of the loopback image services.

The tests' image server and the benchmarks' answer alike: the id, the size
and, when asked, the image's file as its one location, as Glance's
filesystem store shows it (``show_multiple_locations``).
"""

import json
import os


def send_image_record(handler, image_id, path, show_location):
    """Answer ``handler``'s request with the record of the image at ``path``."""
    record = {"id": image_id, "size": os.path.getsize(path), "status": "active"}
    if show_location:
        record["locations"] = [{"url": "file://" + os.path.abspath(path), "metadata": {}}]
    body = json.dumps(record).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
