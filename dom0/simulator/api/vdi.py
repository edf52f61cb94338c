"""VDI messages: create, destroy, resize, copy.

A VDI is the sparse file ``<state>/sr/<sr-uuid>/<vdi-uuid>.raw``; on an ext
SR its ``physical_utilisation`` is the file's allocated size, read on demand;
on an LVM SR sizes go in 2 MiB steps and ``physical_utilisation`` is the
thick volume's size, stored (see storage.py).
Errors follow xen-api's ``xapi_vdi.ml`` (``VDI_IN_USE [vdi, operation]`` while
any VBD is attached) and the file SR backend (shrinking is
``SR_BACKEND_FAILURE_79`` "VDI Invalid size").
"""

import errno
import logging
import os

from dom0.simulator import errors
from dom0.simulator import model
from dom0.simulator import private
from dom0.simulator import storage
from dom0.simulator.api import unmarshal
from dom0.simulator.api.registry import message

LOG = logging.getLogger(__name__)

COPY_CHUNK_BYTES = 64 << 20
MAX_VHD_SIZE = 2040 << 30  # libs/sm/vhdutil.py in xapi-project/sm


def parse_size(value, field="virtual_size"):
    """An int64 given as XAPI sends it (a decimal string); ints accepted too."""
    if isinstance(value, bool):
        raise errors.XapiError(errors.FIELD_TYPE_ERROR, field)
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        size = int(value)
    else:
        raise errors.XapiError(errors.FIELD_TYPE_ERROR, field)
    if size < 0:
        raise errors.XapiError(errors.VALUE_NOT_SUPPORTED, field, str(value),
                               "a size cannot be negative")
    return size


def assert_not_attached(host, vdi_ref, operation, rw_only=False):
    """VDI_IN_USE [vdi, operation] while a VBD of the VDI is plugged
    (``rw_only``: plugged read-write), as xapi_vdi.ml, check_operation_error."""
    for vbd_ref in host.store.find("VBD", VDI=vdi_ref):
        vbd = host.store.get("VBD", vbd_ref)
        if vbd["currently_attached"] and not (rw_only and vbd["mode"] == "RO"):
            raise errors.XapiError(errors.VDI_IN_USE, vdi_ref, operation)


def _map_field(record, field):
    value = record.get(field, {})
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise errors.XapiError(errors.FIELD_TYPE_ERROR, field)
    return dict(value)


@message("VDI.create", async_ok=True, unmarshal=unmarshal.constructor("VDI"))
def create(host, session, record):
    sr_ref = record.get("SR")
    host.store.get("SR", sr_ref)
    size = parse_size(record.get("virtual_size"))
    vdi_type = record.get("type", "user")
    if vdi_type not in model.VDI_TYPES:
        raise errors.XapiError(errors.FIELD_TYPE_ERROR, "type")
    for flag in ("sharable", "read_only"):
        if not isinstance(record.get(flag, False), bool):
            raise errors.XapiError(errors.FIELD_TYPE_ERROR, flag)
    vdi = model.VDI.new_record(
        name_label=str(record.get("name_label", "")),
        name_description=str(record.get("name_description", "")),
        SR=sr_ref, virtual_size=str(size), type=vdi_type,
        sharable=record.get("sharable", False), read_only=record.get("read_only", False),
        other_config=_map_field(record, "other_config"),
        sm_config=_map_field(record, "sm_config"),
        xenstore_data=_map_field(record, "xenstore_data"),
        tags=[str(t) for t in record.get("tags", [])])
    vdi["location"] = vdi["uuid"]
    if host.sr_thick and size <= MAX_VHD_SIZE:
        size = storage.vhd_size(size)
        vdi["virtual_size"] = str(size)
    if vdi["sm_config"].get("type") != "raw" and size > MAX_VHD_SIZE:
        # SM's FileSR makes a VHD unless sm_config:type=raw, and refuses a
        # size past vhdutil.MAX_VHD_SIZE (libs/sm/drivers/FileSR.py,
        # FileVDI.create; libs/sm/vhdutil.py, validate_and_round_vhd_size).
        raise errors.sm_failure(errors.SR_BACKEND_FAILURE_VDI_SIZE, "VDI Invalid size",
                                "VDI size must be between 1 MB and %d MB" % (MAX_VHD_SIZE >> 20))
    _create_file(host.vdi_path(vdi), size)
    ref = host.store.add("VDI", vdi)
    refresh_thick_sizes(host, sr_ref, ref)
    return ref


def refresh_thick_sizes(host, sr_ref, vdi_ref=None):
    """What SM stores on an LVM SR after a change: the VDI's LV size and the
    SR's totals (storage.py). Nothing on an ext SR, whose figures are read
    from the files."""
    if not host.sr_thick:
        return
    if vdi_ref is not None:
        vdi = host.store.get("VDI", vdi_ref)
        vdi["physical_utilisation"] = str(storage.lv_size(int(vdi["virtual_size"])))
        host.store.touch("VDI", vdi_ref)
    vdis = [host.store.get("VDI", ref) for ref in host.store.find("VDI", SR=sr_ref)]
    host.store.update("SR", sr_ref,
                      physical_utilisation=str(sum(int(v["physical_utilisation"])
                                                   for v in vdis)),
                      virtual_allocation=str(sum(int(v["virtual_size"]) for v in vdis)))


def _create_file(path, size):
    """The VDI's sparse file of ``size`` bytes; nothing is left when that fails.

    The file stands for the VHD SM's FileSR makes with vhd-util, whose
    failure is VDICreate (SR_BACKEND_FAILURE_78 "VDI Creation failed
    [opterr=error <errno>]", FileSR.py, FileVDI.create). A size the file
    system cannot hold (EFBIG) fails the truncate after the file exists:
    the file is removed before the error goes back.
    """
    try:
        f = private.create(path)
    except OSError as e:
        raise _create_failure(e) from None
    try:
        with f:
            f.truncate(size)
    except OSError as e:
        os.unlink(path)
        raise _create_failure(e) from None


def _create_failure(e):
    return errors.sm_failure(errors.SR_BACKEND_FAILURE_VDI_CREATE, "VDI Creation failed",
                             "error %d" % (e.errno or 0))


def remove_vdi(host, vdi_ref):
    """Forget a VDI, its unplugged VBDs and its files; collect unmanaged parents."""
    vdi = host.store.get("VDI", vdi_ref)
    for vbd_ref in host.store.find("VBD", VDI=vdi_ref):
        host.store.remove("VBD", vbd_ref)
    base = host.vdi_path(vdi)[:-len(".raw")]
    for path in (base + ".raw", base + ".vhd"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    host.store.remove("VDI", vdi_ref)
    refresh_thick_sizes(host, vdi["SR"])
    parent_uuid = vdi["sm_config"].get("vhd-parent")
    if not parent_uuid:
        return
    try:
        parent_ref = host.store.by_uuid("VDI", parent_uuid)
    except errors.XapiError:
        return
    parent = host.store.get("VDI", parent_ref)
    children = [r for r, v in host.store.table("VDI").items()
                if v["sm_config"].get("vhd-parent") == parent_uuid]
    if not parent["managed"] and not children:
        # What XAPI's storage garbage collector does with a childless base.
        LOG.info("VDI %s: last child gone, removing its base", parent_uuid)
        remove_vdi(host, parent_ref)


@message("VDI.destroy", async_ok=True)
def destroy(host, session, vdi_ref):
    host.store.get("VDI", vdi_ref)
    assert_not_attached(host, vdi_ref, "destroy")
    remove_vdi(host, vdi_ref)


@message("VDI.resize", async_ok=True)
def resize(host, session, vdi_ref, size):
    vdi = host.store.get("VDI", vdi_ref)
    new_size = parse_size(size, "size")
    if host.sr_thick and new_size <= MAX_VHD_SIZE:
        new_size = storage.vhd_size(new_size)
    assert_not_attached(host, vdi_ref, "resize")
    old_size = int(vdi["virtual_size"])
    if new_size < old_size:
        raise errors.sm_failure(errors.SR_BACKEND_FAILURE_VDI_SIZE, "VDI Invalid size",
                                "shrinking not allowed")
    with open(host.vdi_path(vdi), "r+b") as f:
        f.truncate(new_size)
    vdi["virtual_size"] = str(new_size)
    host.store.touch("VDI", vdi_ref)
    refresh_thick_sizes(host, vdi["SR"], vdi_ref)


def _data_extents(fd, size):
    """(offset, length) of the allocated parts of a file, holes skipped."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole is left
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if start >= size:
            return
        yield start, end - start
        offset = end


def sparse_copy(src_path, dst_path, size, dst_size=None):
    """Copy ``size`` bytes keeping holes: only allocated extents are written.

    The destination is emptied first (and sized ``dst_size``, default
    ``size``), so whatever it held before reads as zeros.
    """
    with open(src_path, "rb") as src, open(dst_path, "r+b") as dst:
        dst.truncate(0)
        dst.truncate(size if dst_size is None else dst_size)
        for start, length in _data_extents(src.fileno(), size):
            done = 0
            while done < length:
                count = min(COPY_CHUNK_BYTES, length - done)
                n = os.copy_file_range(src.fileno(), dst.fileno(), count,
                                       start + done, start + done)
                if n == 0:
                    raise OSError(errno.EIO, "short copy of %s" % src_path)
                done += n


# datamodel.ml, VDI.copy: only vdi lacks a default (sr, base_vdi, into_vdi: null).
@message("VDI.copy", locked=False, async_ok=True)
def copy(host, session, vdi_ref, sr_ref=model.NULL_REF, base_vdi=model.NULL_REF,
         into_vdi=model.NULL_REF):
    with host.store.lock:
        source = host.store.get("VDI", vdi_ref)
        # xapi_vdi.ml, check_operation_error: copy is one of the operations
        # a read-only attachment allows; only a VBD plugged RW blocks it.
        assert_not_attached(host, vdi_ref, "copy", rw_only=True)
        # xapi_vdi.ml, copy: assert_managed first.
        if not source["managed"]:
            raise errors.XapiError(errors.VDI_NOT_MANAGED, vdi_ref)
        size = int(source["virtual_size"])
        src_path = host.vdi_path(source)
        # xapi_vdi.ml, copy: into_vdi is used when it is a valid ref,
        # otherwise a new VDI is made in sr.
        if host.store.exists("VDI", into_vdi):
            target = host.store.get("VDI", into_vdi)
            assert_not_attached(host, into_vdi, "copy")
            if target["read_only"]:
                raise errors.XapiError(errors.VDI_READONLY, into_vdi)
            if int(target["virtual_size"]) < size:
                raise errors.XapiError(errors.VDI_TOO_SMALL, into_vdi, size)
            dst_path, record = host.vdi_path(target), None
            dst_size = int(target["virtual_size"])
        else:
            host.store.get("SR", sr_ref)
            # xapi_vdi.ml, copy: the new VDI takes the source's names, type,
            # sharable, other_config, xenstore_data and tags; it is always
            # read-write (CA-64962) and its sm_config starts empty.
            record = model.VDI.new_record(
                name_label=source["name_label"], name_description=source["name_description"],
                SR=sr_ref, virtual_size=str(size), type=source["type"],
                sharable=source["sharable"], read_only=False,
                other_config=dict(source["other_config"]),
                xenstore_data=dict(source["xenstore_data"]), tags=list(source["tags"]),
                on_boot=source["on_boot"], allow_caching=source["allow_caching"])
            record["location"] = record["uuid"]
            dst_path, dst_size = host.vdi_path(record), size
    partial = dst_path + ".partial" if record else dst_path
    try:
        if record:
            private.create(partial).close()
        sparse_copy(src_path, partial, size, dst_size)
    except OSError as e:
        if record and os.path.exists(partial):
            os.unlink(partial)
        raise errors.XapiError(errors.VDI_IO_ERROR, "copy failed: %s" % e) from None
    if record is None:
        return into_vdi
    with host.store.lock:
        os.replace(partial, dst_path)
        ref = host.store.add("VDI", record)
        refresh_thick_sizes(host, record["SR"], ref)
        host.store.commit()
    return ref
