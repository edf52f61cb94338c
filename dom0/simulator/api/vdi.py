"""VDI messages: create, destroy, resize, copy, snapshot, clone.

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


# ---------------------------------------------------------------------------
# VDI.snapshot and VDI.clone
#
# xen-api ocaml/xapi/xapi_vdi.ml: check_operation_error decides whether the
# operation may run (both may run while the VDI is attached, even
# read-write: operation_can_be_performed_live); snapshot_and_clone asserts
# the VDI is managed, has the SR make the new VDI, then copies the metadata
# XAPI controls onto it; snapshot then sets is_a_snapshot and snapshot_of.
# ocaml/xapi/storage_smapiv1.ml, snapshot_and_clone: snapshot_time is "now"
# for both, and of the driver_params only the sm-config keys of
# sm_config_keys_to_preserve_on_clone are kept. SM's FileSR
# (libs/sm/drivers/FileSR.py, FileVDI._snapshot) makes the new leaf
# read-write with its own sm_config, for a snapshot as for a clone.
#
# Where XAPI's file SR makes a VHD child, the simulator copies the data:
# os.copy_file_range per allocated extent, so holes stay holes and a file
# system that shares blocks (XFS with reflink, btrfs) clones them instead of
# copying. A plugged device is flushed first, as SM pauses the tapdisk.

SM_CONFIG_KEYS_PRESERVED_ON_CLONE = ("base_mirror",)


def _driver_params_unmarshal(params):
    # [session, vdi, driver_params]: datamodel.ml, VDI.snapshot/clone,
    # driver_params is a (string → string) map defaulting to {}.
    if len(params) > 2:
        unmarshal.check_string_map(params[2])


def _check_snapshot_or_clone(source, vdi_ref, operation):
    """xapi_vdi.ml, check_operation_error, in its order, for snapshot/clone."""
    if source["type"] == "cbt_metadata":
        raise errors.XapiError(errors.VDI_INCOMPATIBLE_TYPE, vdi_ref, "cbt_metadata")
    if operation == "snapshot":
        if source["sharable"]:
            raise errors.XapiError(errors.VDI_IS_SHARABLE, vdi_ref)
        if source["on_boot"] == "reset":
            raise errors.XapiError(errors.VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION)
    # xapi_vdi.ml, snapshot_and_clone: Xapi_vdi_helpers.assert_managed.
    if not source["managed"]:
        raise errors.XapiError(errors.VDI_NOT_MANAGED, vdi_ref)


def _flush_plugged(host, vdi_ref):
    """Write back what a plugged device of the VDI holds in its page cache."""
    for vbd_ref in host.store.find("VBD", VDI=vdi_ref):
        dev = host.devices.get(vbd_ref)
        if dev is None or not dev.startswith("/dev/"):
            continue
        fd = os.open(dev, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _snapshot_or_clone(host, vdi_ref, driver_params, operation):
    with host.store.lock:
        source = host.store.get("VDI", vdi_ref)
        _check_snapshot_or_clone(source, vdi_ref, operation)
        size = int(source["virtual_size"])
        src_path = host.vdi_path(source)
        sm_config = {k: v for k, v in driver_params.items()
                     if k in SM_CONFIG_KEYS_PRESERVED_ON_CLONE}
        record = model.VDI.new_record(
            name_label=source["name_label"], name_description=source["name_description"],
            SR=source["SR"], virtual_size=str(size), type=source["type"],
            sharable=source["sharable"], read_only=False,
            other_config=dict(source["other_config"]),
            xenstore_data=dict(source["xenstore_data"]), on_boot=source["on_boot"],
            allow_caching=source["allow_caching"], tags=list(source["tags"]),
            sm_config=sm_config, snapshot_time=model.now_text(),
            is_a_snapshot=operation == "snapshot",
            snapshot_of=vdi_ref if operation == "snapshot" else model.NULL_REF)
        record["location"] = record["uuid"]
        dst_path = host.vdi_path(record)
        partial = dst_path + ".partial"
        try:
            _flush_plugged(host, vdi_ref)
            private.create(partial).close()
        except OSError as e:
            raise _clone_failure(e) from None
    try:
        sparse_copy(src_path, partial, size)
    except OSError as e:
        if os.path.exists(partial):
            os.unlink(partial)
        raise _clone_failure(e) from None
    with host.store.lock:
        if not host.store.exists("VDI", vdi_ref):
            # Destroyed while its data was being copied: XAPI would have
            # refused (OTHER_OPERATION_IN_PROGRESS); the copy is not kept.
            os.unlink(partial)
            raise errors.XapiError(errors.HANDLE_INVALID, "VDI", vdi_ref)
        os.replace(partial, dst_path)
        ref = host.store.add("VDI", record)
        host.store.commit()
    LOG.info("VDI %s: %s %s made", source["uuid"], operation, record["uuid"])
    return ref


def _clone_failure(e):
    # FileSR.py, FileVDI._snapshot: a failed vhd-util is VDIClone
    # (SR_BACKEND_FAILURE_81 in libs/sm/core/XE_SR_ERRORCODES.xml),
    # "VDI clone failed error <code>".
    return errors.sm_failure(errors.SR_BACKEND_FAILURE_VDI_CLONE, "Failed to clone VDI",
                             "VDI clone failed error %d" % (e.errno or 0))


@message("VDI.snapshot", locked=False, async_ok=True, unmarshal=_driver_params_unmarshal)
def snapshot(host, session, vdi_ref, driver_params=None):
    return _snapshot_or_clone(host, vdi_ref, driver_params or {}, "snapshot")


@message("VDI.clone", locked=False, async_ok=True, unmarshal=_driver_params_unmarshal)
def clone(host, session, vdi_ref, driver_params=None):
    return _snapshot_or_clone(host, vdi_ref, driver_params or {}, "clone")
