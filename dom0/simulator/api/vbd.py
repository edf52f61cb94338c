"""VBD messages; a VBD plugged into dom0 or the compute VM becomes a device.

The device is a loop device on the VDI's file (read-only for mode RO),
exposed as ``<state>/vms/<vm-uuid>/dev/xvdX`` where ``xvdX`` is what
``VBD.get_device`` answers; its partitions are mirrored by the partition
watcher. Errors follow xen-api's ``xapi_vbd_helpers.ml``.
"""

import os

from dom0.simulator import blockdev
from dom0.simulator import errors
from dom0.simulator import model
from dom0.simulator.api import unmarshal
from dom0.simulator.api.registry import message

MAX_USERDEVICE = 255
_MODES = ("RO", "RW")
_TYPES = ("Disk", "CD", "Floppy")


def device_name(userdevice):
    """'0' → 'xvda', '1' → 'xvdb', ..., '26' → 'xvdaa' (Linux's scheme)."""
    if not str(userdevice).isdigit():
        return str(userdevice)
    n = int(userdevice)
    letters = ""
    n += 1
    while n:
        n, rem = divmod(n - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return "xvd" + letters


def _device_number(name):
    """The disk number a userdevice or device names ('1', 'xvdb'), or None."""
    name = str(name)
    if name.isdigit():
        return int(name)
    if name.startswith("xvd") and name[3:].isalpha() and name[3:].islower():
        n = 0
        for letter in name[3:]:
            n = n * 26 + ord(letter) - ord("a") + 1
        return n - 1
    return None


def _used_userdevices(host, vm_ref):
    """Disk numbers taken in a VM: its VBDs' userdevice and device fields
    (xapi_vm_helpers.ml, all_used_VBD_devices)."""
    used = set()
    for ref in host.store.find("VBD", VM=vm_ref):
        vbd = host.store.get("VBD", ref)
        used.update(n for n in map(_device_number, (vbd["userdevice"], vbd["device"]))
                    if n is not None)
    if vm_ref == host.compute_vm_ref:
        # The compute VM stands for a guest booted from its own disk, VBD 0
        # on a real host; the simulator does not model that disk.
        used.add(0)
    return used


def _pick_userdevice(host, vm_ref, requested):
    used = _used_userdevices(host, vm_ref)
    if requested == "autodetect":
        # xapi_vbd.ml, create, and xapi_vm_helpers.ml, allowed_VBD_devices:
        # the lowest free disk number from 0, up to 255 for the control
        # domain and 254 for a guest; none free is INVALID_DEVICE.
        is_dom0 = host.store.get("VM", vm_ref)["is_control_domain"]
        last = MAX_USERDEVICE if is_dom0 else MAX_USERDEVICE - 1
        for n in range(0, last + 1):
            if n not in used:
                return str(n)
        raise errors.XapiError(errors.INVALID_DEVICE, requested)
    if not (isinstance(requested, str) and requested.isdigit()
            and int(requested) <= MAX_USERDEVICE):
        raise errors.XapiError(errors.INVALID_DEVICE, requested)
    requested = str(int(requested))
    if int(requested) in used:
        raise errors.XapiError(errors.DEVICE_ALREADY_EXISTS, requested)
    return requested


@message("VBD.create", async_ok=True, unmarshal=unmarshal.constructor("VBD"))
def create(host, session, record):
    vm_ref = record.get("VM")
    host.store.get("VM", vm_ref)
    empty = bool(record.get("empty", False))
    vbd_type = record.get("type", "Disk")
    mode = record.get("mode", "RW")
    if vbd_type not in _TYPES:
        raise errors.XapiError(errors.FIELD_TYPE_ERROR, "type")
    if mode not in _MODES:
        raise errors.XapiError(errors.FIELD_TYPE_ERROR, "mode")
    vdi_ref = record.get("VDI", model.NULL_REF)
    if empty:
        if vbd_type != "CD":
            raise errors.XapiError(errors.VALUE_NOT_SUPPORTED, "empty", "true",
                                   "only CD drives can be empty")
        vdi_ref = model.NULL_REF
    else:
        host.store.get("VDI", vdi_ref)
    other_config = record.get("other_config", {})
    if not isinstance(other_config, dict):
        raise errors.XapiError(errors.FIELD_TYPE_ERROR, "other_config")
    userdevice = _pick_userdevice(host, vm_ref, record.get("userdevice", "autodetect"))
    vbd = model.VBD.new_record(
        VM=vm_ref, VDI=vdi_ref, userdevice=userdevice, mode=mode, type=vbd_type,
        empty=empty, bootable=bool(record.get("bootable", False)),
        unpluggable=bool(record.get("unpluggable", True)),
        other_config={str(k): str(v) for k, v in other_config.items()},
        qos_algorithm_type=str(record.get("qos_algorithm_type", "")),
        qos_algorithm_params=dict(record.get("qos_algorithm_params", {})))
    return host.store.add("VBD", vbd)


def _assert_pluggable(host, vbd_ref, vbd):
    vm = host.store.get("VM", vbd["VM"])
    if vm["power_state"] != "Running":
        raise errors.XapiError(errors.VM_BAD_POWER_STATE, vbd["VM"], "running",
                               vm["power_state"].lower())
    if vbd["currently_attached"]:
        raise errors.XapiError(errors.DEVICE_ALREADY_ATTACHED, vbd_ref)
    if vbd["empty"]:
        return
    vdi = host.store.get("VDI", vbd["VDI"])
    if not vdi["managed"]:
        raise errors.XapiError(errors.VDI_NOT_MANAGED, vbd_ref)
    if vbd["mode"] == "RW" and vdi["read_only"]:
        raise errors.XapiError(errors.VDI_READONLY, vbd["VDI"])
    if vdi["sharable"] or vm["is_control_domain"]:
        return  # system domains may share any disk, as in XAPI
    others = [host.store.get("VBD", r) for r in host.store.find("VBD", VDI=vbd["VDI"])
              if r != vbd_ref]
    active = [o for o in others if o["currently_attached"]
              and not host.store.get("VM", o["VM"])["is_control_domain"]]
    if any(o["mode"] == "RW" for o in active) or (vbd["mode"] == "RW" and active):
        raise errors.XapiError(errors.VDI_IN_USE, vbd["VDI"])


def attach_device(host, vbd_ref):
    """Make the block device of a VBD of dom0 / the compute VM."""
    vbd = host.store.get("VBD", vbd_ref)
    if vbd["empty"] or not host.has_block_devices(vbd["VM"]):
        return
    vdi = host.store.get("VDI", vbd["VDI"])
    vm_uuid = host.store.get("VM", vbd["VM"])["uuid"]
    read_only = vbd["mode"] == "RO" or vdi["read_only"]
    try:
        dev = host.loops.attach(host.vdi_path(vdi), read_only)
    except (blockdev.BlockDeviceError, OSError) as e:
        raise errors.XapiError(errors.INTERNAL_ERROR, "cannot attach VDI: %s" % e) from None
    dev_dir = host.vm_dev_dir(vm_uuid)
    os.makedirs(dev_dir, exist_ok=True)
    link = os.path.join(dev_dir, vbd["device"])
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(dev, link)
    host.devices[vbd_ref] = dev
    host.udev.watch(dev, dev_dir, vbd["device"])


def detach_device(host, vbd_ref, force=False):
    """Remove the device of a VBD; DEVICE_DETACH_REJECTED while it is in use."""
    dev = host.devices.get(vbd_ref)
    if dev is None:
        return
    vbd = host.store.get("VBD", vbd_ref)
    if not force and dev.startswith("/dev/loop"):
        try:
            blockdev.assert_not_busy(dev)
        except blockdev.DeviceBusy as e:
            raise errors.XapiError(errors.DEVICE_DETACH_REJECTED, "VBD", vbd_ref, str(e)) from None
    host.udev.unwatch(dev)
    vm_uuid = host.store.get("VM", vbd["VM"])["uuid"]
    link = os.path.join(host.vm_dev_dir(vm_uuid), vbd["device"])
    if os.path.lexists(link):
        os.unlink(link)
    try:
        host.loops.detach(dev, force=True)
    except (blockdev.BlockDeviceError, OSError) as e:
        raise errors.XapiError(errors.DEVICE_DETACH_REJECTED, "VBD", vbd_ref, str(e)) from None
    del host.devices[vbd_ref]


@message("VBD.plug", async_ok=True)
def plug(host, session, vbd_ref):
    vbd = host.store.get("VBD", vbd_ref)
    _assert_pluggable(host, vbd_ref, vbd)
    vbd["device"] = device_name(vbd["userdevice"])
    attach_device(host, vbd_ref)
    vbd["currently_attached"] = True
    host.store.touch("VBD", vbd_ref)


def _unplug(host, vbd_ref, force):
    vbd = host.store.get("VBD", vbd_ref)
    # xapi_vbd_helpers.ml, valid_operations: a VBD with unpluggable=false
    # refuses unplug and unplug_force, an error set before the power-state
    # and attachment ones, so it is the one reported.
    if not vbd["unpluggable"]:
        raise errors.XapiError(errors.VBD_NOT_UNPLUGGABLE, vbd_ref)
    vm = host.store.get("VM", vbd["VM"])
    if vm["power_state"] != "Running":
        raise errors.XapiError(errors.VM_BAD_POWER_STATE, vbd["VM"], "running",
                               vm["power_state"].lower())
    if not vbd["currently_attached"]:
        raise errors.XapiError(errors.DEVICE_ALREADY_DETACHED, vbd_ref)
    detach_device(host, vbd_ref, force=force)
    vbd["currently_attached"] = False
    host.store.touch("VBD", vbd_ref)


@message("VBD.unplug", async_ok=True)
def unplug(host, session, vbd_ref):
    _unplug(host, vbd_ref, force=False)


@message("VBD.unplug_force", async_ok=True)
def unplug_force(host, session, vbd_ref):
    _unplug(host, vbd_ref, force=True)


@message("VBD.destroy", async_ok=True)
def destroy(host, session, vbd_ref):
    vbd = host.store.get("VBD", vbd_ref)
    if vbd["currently_attached"]:
        vm_uuid = host.store.get("VM", vbd["VM"])["uuid"]
        raise errors.XapiError(errors.OPERATION_NOT_ALLOWED, "VBD '%s' still attached to '%s'"
                               % (vbd["uuid"], vm_uuid))
    host.store.remove("VBD", vbd_ref)
