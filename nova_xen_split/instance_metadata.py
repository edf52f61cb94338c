"""What the driver puts on a config drive: OpenStack metadata in Nova's shape.

``meta_data.json`` as Nova's metadata service writes it (uuid, name,
hostname, launch_index, availability_zone, project_id, public_keys, meta,
files) and the user data decoded from the base64 text Nova stores,
bounded by Nova's 64 KiB limit (``network_data.json`` is
:mod:`nova_xen_split.netinfo`'s). Nothing here talks to the agent: a bad request is refused
before any disk is made.
"""

import base64
import binascii

from nova_xen_split import driver_errors
from rpc import exceptions

MAX_USER_DATA_BYTES = 65536
# Where injected files appear inside the drive, as Nova numbers them.
CONTENT_PATH = "/content/%04d"


def decode_user_data(instance):
    """The instance's user data as bytes (None if unset).

    Raises :class:`InstanceUserDataMalformed` for text that is not base64,
    :class:`InstanceUserDataTooLarge` above 64 KiB once decoded.
    """
    text = instance.user_data
    if text in (None, ""):
        return None
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise driver_errors.InstanceUserDataMalformed(
            instance_uuid=instance.uuid, reason=str(e)) from None
    if len(data) > MAX_USER_DATA_BYTES:
        raise driver_errors.InstanceUserDataTooLarge(
            instance_uuid=instance.uuid, length=len(data), maxsize=MAX_USER_DATA_BYTES)
    return data


def injected_files_list(injected_files):
    """Nova's ``injected_files`` (``[(path, contents)]``) as ``[[path, bytes]]``."""
    files = []
    for i, entry in enumerate(injected_files or ()):
        try:
            path, contents = entry
        except (TypeError, ValueError):
            raise exceptions.InvalidRequest(
                method="spawn", field="injected_files[%d]" % i,
                reason="must be a (path, contents) pair") from None
        if isinstance(contents, str):
            contents = contents.encode("utf-8")
        if not isinstance(path, str) or not isinstance(contents, (bytes, bytearray)):
            raise exceptions.InvalidRequest(
                method="spawn", field="injected_files[%d]" % i,
                reason="path must be text and contents text or bytes")
        files.append([path, bytes(contents)])
    return files


def build_meta_data(instance, injected_files=()):
    """The content of ``openstack/<version>/meta_data.json``."""
    public_keys = {}
    if instance.key_name and instance.key_data:
        public_keys[instance.key_name] = instance.key_data
    meta = {
        "uuid": instance.uuid,
        "name": instance.display_name or instance.hostname,
        "hostname": instance.hostname,
        "launch_index": int(instance.launch_index or 0),
        "availability_zone": instance.availability_zone,
        "project_id": instance.project_id,
        "public_keys": public_keys,
        "meta": {str(k): str(v) for k, v in (instance.metadata or {}).items()},
        "files": [{"path": path, "content_path": CONTENT_PATH % i}
                  for i, (path, _contents) in enumerate(injected_files or ())],
    }
    if public_keys:
        meta["keys"] = [{"name": name, "type": "ssh", "data": data}
                        for name, data in public_keys.items()]
    return meta
