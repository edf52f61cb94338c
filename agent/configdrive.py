"""Building an OpenStack config drive: an ISO9660 image labelled ``config-2``.

The image carries Rock Ridge (1.09) and Joliet names, as genisoimage's
``-r -J`` did for Nova, so Linux, BSD and Windows readers see the real file
names; the plain ISO9660 names are the interchange-level-3 spelling of them.

Layout (the one cloud-init and cloudbase-init read)::

    openstack/<version>/meta_data.json     for "latest" and every dated
    openstack/<version>/user_data          version (readers take the newest
    openstack/<version>/vendor_data.json   one they know, so each is whole)
    openstack/<version>/vendor_data2.json
    openstack/<version>/network_data.json
    openstack/content/0000 ...             injected files, listed in
                                           meta_data.json "files"
    ec2/<version>/meta-data.json, user-data
"""

import copy
import io
import json
import os
import re

import pycdlib

from rpc import exceptions

CONFIGDRIVE_SIZE_BYTES = 64 * 1024 * 1024
VOLUME_LABEL = "config-2"
MAX_USER_DATA_BYTES = 65536

OPENSTACK_VERSIONS = ("2012-08-10", "2013-04-04", "2013-10-17", "2015-10-15",
                      "2016-06-30", "2016-10-06", "2017-02-22", "2018-08-27",
                      "2020-10-14")
EC2_VERSIONS = ("2009-04-04",)
# First version carrying each file beside meta_data.json.
_FILE_SINCE = {
    "vendor_data.json": "2013-10-17",
    "network_data.json": "2015-10-15",
    "vendor_data2.json": "2016-10-06",
}
# meta_data.json keys that appeared in a later version; older versions go
# without them, as the metadata service serves them.
_KEY_SINCE = {
    "random_seed": "2015-10-15",
    "devices": "2016-06-30",
    "project_id": "2018-08-27",
    "dedicated_cpus": "2020-10-14",
}
_EMPTY_NETWORK_DATA = {"links": [], "networks": [], "services": []}
_METHOD = "generate_configdrive"


def _invalid(field, reason):
    return exceptions.InvalidRequest(method=_METHOD, field=field, reason=reason)


def _since(version, first):
    return version == "latest" or version >= first


def _json_bytes(value):
    return json.dumps(value, sort_keys=True).encode("utf-8")


def openstack_tree(metadata, user_data=None, network_data=None, vendor_data=None,
                   files=(), admin_password=None):
    """{path inside the drive: bytes}, for every file of the drive.

    Checks the request first (raises InvalidRequest naming the field), so a
    bad request writes nothing.
    """
    if not isinstance(metadata, dict) or not isinstance(metadata.get("uuid"), str) \
            or not metadata["uuid"]:
        raise _invalid("metadata", "must be a dict with the instance 'uuid'")
    if user_data is not None:
        if not isinstance(user_data, (bytes, bytearray)):
            raise _invalid("user_data", "must be bytes")
        if len(user_data) > MAX_USER_DATA_BYTES:
            raise _invalid("user_data", "%d bytes, more than the %d-byte limit"
                           % (len(user_data), MAX_USER_DATA_BYTES))
    for name, value in (("network_data", network_data), ("vendor_data", vendor_data)):
        if value is not None and not isinstance(value, dict):
            raise _invalid(name, "must be a dict")
    contents = []
    for number, item in enumerate(files):
        if not isinstance(item, (list, tuple)) or len(item) != 2 \
                or not isinstance(item[0], str) or not item[0]:
            raise _invalid("files", "item %d is not [path, contents]" % number)
        data = item[1].encode("utf-8") if isinstance(item[1], str) else item[1]
        if not isinstance(data, (bytes, bytearray)):
            raise _invalid("files", "contents of %s are not bytes" % item[0])
        contents.append((item[0], bytes(data)))

    tree = {}
    meta = copy.deepcopy(metadata)
    if contents:
        meta["files"] = [{"path": path, "content_path": "/content/%04d" % number}
                         for number, (path, _) in enumerate(contents)]
    if admin_password is not None:
        meta["admin_pass"] = admin_password
    vendor = vendor_data or {}
    # Every version directory holds the same documents (but for the keys a
    # version predates): each is encoded once and the tree shares it, so a
    # drive of ten versions does not hold ten copies of a large document.
    user_data = bytes(user_data) if user_data is not None else None
    vendor_json = _json_bytes(vendor)
    vendor2_json = _json_bytes({"static": vendor})
    network_json = _json_bytes(network_data if network_data is not None
                               else _EMPTY_NETWORK_DATA)
    meta_json = {}  # the keys a version has -> its meta_data.json
    for version in OPENSTACK_VERSIONS + ("latest",):
        base = "openstack/%s/" % version
        keys = tuple(k for k in meta if k not in _KEY_SINCE or _since(version, _KEY_SINCE[k]))
        if keys not in meta_json:
            meta_json[keys] = _json_bytes({k: meta[k] for k in keys})
        tree[base + "meta_data.json"] = meta_json[keys]
        if user_data is not None:
            tree[base + "user_data"] = user_data
        if _since(version, _FILE_SINCE["vendor_data.json"]):
            tree[base + "vendor_data.json"] = vendor_json
        if _since(version, _FILE_SINCE["network_data.json"]):
            tree[base + "network_data.json"] = network_json
        if _since(version, _FILE_SINCE["vendor_data2.json"]):
            tree[base + "vendor_data2.json"] = vendor2_json
    for number, (_, data) in enumerate(contents):
        tree["openstack/content/%04d" % number] = data

    ec2_json = _json_bytes(_ec2_metadata(metadata))
    for version in EC2_VERSIONS + ("latest",):
        tree["ec2/%s/meta-data.json" % version] = ec2_json
        if user_data is not None:
            tree["ec2/%s/user-data" % version] = user_data
    return tree


def _ec2_metadata(metadata):
    """The EC2-style view of the instance that older readers look at."""
    hostname = metadata.get("hostname") or metadata.get("name") or metadata["uuid"]
    ec2 = {
        "instance-id": metadata["uuid"],
        "hostname": hostname,
        "local-hostname": hostname,
        "ami-launch-index": metadata.get("launch_index", 0),
        "placement": {"availability-zone": metadata.get("availability_zone") or ""},
    }
    keys = metadata.get("public_keys") or {}
    if keys:
        ec2["public-keys"] = {str(i): {"openssh-key": keys[name]}
                              for i, name in enumerate(sorted(keys))}
    return ec2


def iso9660_name(name, is_dir):
    """The interchange-level-3 spelling of ``name`` (d-characters only)."""
    stem, dot, ext = name.rpartition(".") if not is_dir and "." in name else (name, "", "")
    clean = [re.sub(r"[^A-Z0-9_]", "_", part.upper()) for part in (stem, ext)]
    if is_dir:
        return clean[0][:31]
    return "%s.%s;1" % (clean[0][:30 - len(clean[1]) - 1], clean[1])


def build_configdrive(path, metadata, user_data=None, network_data=None, vendor_data=None,
                      files=(), admin_password=None):
    """Write the config drive ISO to ``path``; returns its size in bytes.

    Raises InvalidRequest for bad input (no uuid in metadata, user data over
    64 KiB, an image that would not fit the 64 MiB drive) before writing.
    """
    tree = openstack_tree(metadata, user_data, network_data, vendor_data, files,
                          admin_password)
    payload = sum(len(data) for data in tree.values())
    if payload > CONFIGDRIVE_SIZE_BYTES - 1024 * 1024:
        raise _invalid("files", "%d bytes of content do not fit a %d-byte config drive"
                       % (payload, CONFIGDRIVE_SIZE_BYTES))
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_LABEL,
            app_ident_str="nova-xen-split", sys_ident="LINUX")
    made = set()
    try:
        for drive_path in sorted(tree):
            parts = drive_path.split("/")
            for depth in range(1, len(parts)):
                _add_directory(iso, parts[:depth], made)
            data = tree[drive_path]
            iso.add_fp(io.BytesIO(data), len(data), _iso_path(parts),
                       rr_name=parts[-1], joliet_path="/" + drive_path)
        try:
            iso.write(path)
        except BaseException:
            if os.path.exists(path):
                os.unlink(path)
            raise
    finally:
        iso.close()
    size_bytes = os.path.getsize(path)
    if size_bytes > CONFIGDRIVE_SIZE_BYTES:
        os.unlink(path)
        raise _invalid("files", "the image is %d bytes, more than the %d-byte drive"
                       % (size_bytes, CONFIGDRIVE_SIZE_BYTES))
    return size_bytes


def _iso_path(parts, is_dir=False):
    names = [iso9660_name(p, True) for p in parts[:-1]]
    names.append(iso9660_name(parts[-1], is_dir))
    return "/" + "/".join(names)


def _add_directory(iso, parts, made):
    key = "/".join(parts)
    if key in made:
        return
    iso.add_directory(_iso_path(parts, is_dir=True), rr_name=parts[-1],
                      joliet_path="/" + key)
    made.add(key)
