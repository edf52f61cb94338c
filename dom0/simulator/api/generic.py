"""XAPI's generated accessors, for every class of :mod:`model`.

``get_record``, ``get_all``, ``get_all_records``, ``get_by_uuid``,
``get_by_name_label``, ``get_<field>``, ``set_<field>`` (writable fields) and
``add_to_<map>`` / ``remove_from_<map>`` (map fields) exist on every class
without being written out one by one, as XAPI generates them from its IDL.
"""

import os
import xmlrpc.client

from dom0.simulator import errors
from dom0.simulator import extents
from dom0.simulator import model


def derived_field(host, cls, ref, record, field):
    """Fields XAPI keeps as reverse references or computes from storage."""
    store = host.store
    if cls == "VM" and field == "VBDs":
        return store.find("VBD", VM=ref)
    if cls == "VDI" and field == "VBDs":
        return store.find("VBD", VDI=ref)
    if cls == "VDI" and field == "snapshots":
        # datamodel.ml, relations: VDI.snapshots is the other end of snapshot_of.
        return store.find("VDI", snapshot_of=ref)
    if cls == "VDI" and field == "physical_utilisation":
        if host.sr_thick:  # stored by the storage layer (storage.py)
            return record["physical_utilisation"]
        try:
            # A clone's shared blocks are its parent's (extents.py).
            return str(extents.own_bytes(host.vdi_path(record)))
        except OSError:
            return "0"
    if cls == "SR" and field in ("physical_size", "physical_utilisation"):
        # A file SR is the whole filesystem it lives on (sm's FileSR.py,
        # _update: statvfs of the mount point).
        fs = os.statvfs(host.sr_dir(ref))
        if field == "physical_size":
            return str(fs.f_blocks * fs.f_frsize)
        return str((fs.f_blocks - fs.f_bfree) * fs.f_frsize)
    if cls == "SR" and field == "virtual_allocation":
        return str(sum(int(store.get("VDI", vdi)["virtual_size"])
                       for vdi in store.find("VDI", SR=ref)))
    if cls == "SR" and field == "VDIs":
        return store.find("VDI", SR=ref)
    if cls in ("SR", "host") and field == "PBDs":
        return store.find("PBD", **{"SR" if cls == "SR" else "host": ref})
    if cls == "host" and field == "resident_VMs":
        return store.find("VM", resident_on=ref)
    if cls == "host" and field == "host_CPUs":
        return store.find("host_cpu", host=ref)
    if cls == "VM" and field == "VIFs":
        return store.find("VIF", VM=ref)
    if cls == "network" and field == "VIFs":
        return store.find("VIF", network=ref)
    if cls == "host_metrics" and field == "memory_free":
        return str(host.memory_free(record))
    raise KeyError(field)


def wire_value(spec, field, value):
    if field in spec.datetimes:
        return xmlrpc.client.DateTime(value or "19700101T00:00:00Z")
    return value


def render(host, cls, ref):
    """The record of ``ref`` as XAPI sends it."""
    spec = model.CLASSES[cls]
    record = host.store.get(cls, ref)
    out = {k: wire_value(spec, k, v) for k, v in record.items()}
    for field in spec.derived:
        out[field] = derived_field(host, cls, ref, record, field)
    return out


def get_field(host, cls, ref, field):
    spec = model.CLASSES[cls]
    record = host.store.get(cls, ref)
    if field in spec.derived:
        return derived_field(host, cls, ref, record, field)
    return wire_value(spec, field, record[field])


def _check_type(spec, field, value):
    default = spec.fields[field]
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, dict):
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    elif isinstance(default, list):
        ok = isinstance(value, list)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise errors.XapiError(errors.FIELD_TYPE_ERROR, field)
    if field in ("virtual_size", "memory_static_max") and not value.lstrip("-").isdigit():
        raise errors.XapiError(errors.FIELD_TYPE_ERROR, field)


def accessor(cls, verb):
    """A callable ``fn(host, session, *params)`` for a generated message, or None."""
    spec = model.CLASSES.get(cls)
    if spec is None:
        return None
    if verb == "get_record":
        def get_record(host, session, ref):
            return render(host, cls, ref)
        return get_record
    if verb == "get_all":
        def get_all(host, session):
            return list(host.store.table(cls))
        return get_all
    if verb == "get_all_records":
        def get_all_records(host, session):
            return {ref: render(host, cls, ref) for ref in host.store.table(cls)}
        return get_all_records
    if verb == "get_by_uuid":
        def get_by_uuid(host, session, uuid):
            return host.store.by_uuid(cls, uuid)
        return get_by_uuid
    if verb == "get_by_name_label" and "name_label" in spec.fields:
        def get_by_name_label(host, session, label):
            return host.store.find(cls, name_label=label)
        return get_by_name_label
    if verb.startswith("get_"):
        field = verb[4:]
        if field in spec.fields or field in spec.derived:
            def getter(host, session, ref):
                return get_field(host, cls, ref, field)
            return getter
    if verb.startswith("set_") and verb[4:] in spec.writable:
        field = verb[4:]

        def setter(host, session, ref, value):
            record = host.store.get(cls, ref)
            _check_type(spec, field, value)
            record[field] = value
            host.store.touch(cls, ref)
            return ""
        return setter
    if verb.startswith("add_to_") and verb[7:] in spec.maps:
        field = verb[7:]

        def add_to(host, session, ref, key, value):
            record = host.store.get(cls, ref)
            if not isinstance(key, str) or not isinstance(value, str):
                raise errors.XapiError(errors.FIELD_TYPE_ERROR, field)
            if key in record[field]:
                raise errors.XapiError(errors.MAP_DUPLICATE_KEY, cls, field, ref, key)
            record[field][key] = value
            host.store.touch(cls, ref)
            return ""
        return add_to
    if verb.startswith("remove_from_") and verb[12:] in spec.maps:
        field = verb[12:]

        def remove_from(host, session, ref, key):
            record = host.store.get(cls, ref)
            if record[field].pop(key, None) is not None:
                host.store.touch(cls, ref)
            return ""
        return remove_from
    return None
