"""What a real host checks when ``VM.start`` builds a guest, by boot method.

XAPI picks the method from the VM (ocaml/xapi/helpers.ml,
``boot_method_of_vm``): ``domain_type`` hvm boots through hvmloader; a PV
guest with no ``PV_bootloader`` boots the dom0 kernel file ``PV_kernel``
(direct); otherwise the bootloader reads the kernel from the guest's disk
(indirect). What each needs, and what fails without it:

* **Indirect (pygrub).** The bootable, non-empty VBDs are the bootloader's
  devices (``indirect_options``); none is xenopsd's ``No_bootable_device``,
  which xapi_xenops.ml reports as ``INTERNAL_ERROR ["there is no bootable
  device"]``. pygrub reads the first: every partition of its msdos or GPT
  table (the whole disk without one) is opened as a filesystem and searched
  for a config file (grub 2, extlinux, grub legacy); none found is
  ``RuntimeError("Unable to find partition containing kernel")``, which
  xenopsd reraises as ``Bootloader_error`` and XAPI as ``BOOTLOADER_FAILED
  [vm, message]`` (xenops_server_xen.ml, build_domain; xapi_xenops.ml).
  The simulator reads ext2/3/4 filesystems (with ``debugfs``), as pygrub's
  libfsimage does; other filesystems count as holding no config.
* **Direct.** ``PV_kernel`` (and ``PV_ramdisk``) must be regular files under
  dom0's boot directory, else ``INVALID_VALUE [kernel, file, reason]``
  (xapi_xenops.ml, ``kernel_path``).
* **HVM.** hvmloader's BIOS follows ``HVM_boot_params:order`` ("cd" when
  unset or empty, xapi_xenops.ml ``boot_order``): ``c`` a disk, ``d`` a CD,
  ``n`` the network. A real guest whose BIOS finds nothing to boot starts
  and hangs at "No bootable device"; the simulator refuses it instead, with
  the error xenopsd gives for that case, so that a guest which could never
  boot does not pass for running: ``c`` needs a bootable non-empty Disk
  VBD, ``d`` a non-empty CD VBD, ``n`` a VIF (the simulator has none).
"""

import os
import struct
import subprocess

from dom0.simulator import errors

NO_BOOTABLE_DEVICE = "there is no bootable device"
NO_KERNEL = "Unable to find partition containing kernel"
DEFAULT_HVM_ORDER = "cd"
# pygrub's cfg_list, in its order: grub 2, extlinux, grub legacy.
BOOTLOADER_CONFIGS = (
    "/boot/grub/grub.cfg", "/grub/grub.cfg", "/boot/grub2/grub.cfg", "/grub2/grub.cfg",
    "/boot/isolinux/isolinux.cfg", "/boot/extlinux/extlinux.conf", "/boot/extlinux.conf",
    "/extlinux/extlinux.conf", "/extlinux.conf",
    "/boot/grub/menu.lst", "/boot/grub/grub.conf", "/grub/menu.lst", "/grub/grub.conf",
)
_SECTOR = 512
_EXTENDED_TYPES = (0x05, 0x0F, 0x85)
_GPT_PROTECTIVE = 0xEE


def check_start(host, vm_ref, vm):
    """Raise what a real host raises when ``vm`` cannot boot; None if it can."""
    if vm["domain_type"] == "hvm":
        _check_hvm(host, vm_ref, vm)
    elif not vm["PV_bootloader"]:
        _check_direct(host, vm)
    elif vm["PV_bootloader"] == "pygrub":
        _check_pygrub(host, vm_ref)
    # Another bootloader (eliloader, the installer's) reads no disk here.


def _vbds(host, vm_ref):
    records = [host.store.get("VBD", ref) for ref in host.store.find("VBD", VM=vm_ref)]
    return sorted(records, key=lambda vbd: _userdevice_number(vbd["userdevice"]))


def _userdevice_number(userdevice):
    return int(userdevice) if str(userdevice).isdigit() else 1 << 30


def _check_hvm(host, vm_ref, vm):
    order = vm["HVM_boot_params"].get("order") or DEFAULT_HVM_ORDER
    vbds = [vbd for vbd in _vbds(host, vm_ref) if not vbd["empty"]]
    for device in order.lower():
        if device == "c" and any(v["type"] == "Disk" and v["bootable"] for v in vbds):
            return
        if device == "d" and any(v["type"] == "CD" for v in vbds):
            return
    raise errors.XapiError(errors.INTERNAL_ERROR, NO_BOOTABLE_DEVICE)


def _check_direct(host, vm):
    for name, path in (("kernel", vm["PV_kernel"]), ("ramdisk", vm["PV_ramdisk"])):
        if name == "ramdisk" and not path:
            continue
        real = os.path.realpath(path)
        if not os.path.exists(real):
            reason = "File does not exist"
        elif not os.path.isfile(real):
            reason = "Is not a regular file"
        elif not real.startswith(host.boot_root + os.sep):
            reason = "Is not in any of the allowed kernel directories: [%s]" % host.boot_root
        else:
            continue
        raise errors.XapiError(errors.INVALID_VALUE, name, path, reason)


def _check_pygrub(host, vm_ref):
    devices = [vbd for vbd in _vbds(host, vm_ref) if vbd["bootable"] and not vbd["empty"]]
    if not devices:
        raise errors.XapiError(errors.INTERNAL_ERROR, NO_BOOTABLE_DEVICE)
    vdi = host.store.get("VDI", devices[0]["VDI"])
    path = host.vdi_path(vdi)
    for offset in partition_offsets(path):
        if find_config(path, offset) is not None:
            return
    raise errors.XapiError(errors.BOOTLOADER_FAILED, vm_ref, NO_KERNEL)


def partition_offsets(path):
    """Byte offsets of the partitions pygrub tries (get_partition_offsets):
    the msdos table's primary partitions, the GPT's, or the whole disk."""
    with open(path, "rb") as f:
        mbr = f.read(_SECTOR)
        if len(mbr) < _SECTOR or mbr[510:512] != b"\x55\xaa":
            return [0]
        offsets = []
        for index in range(4):
            entry = mbr[446 + 16 * index:462 + 16 * index]
            kind = entry[4]
            start_lba, = struct.unpack_from("<I", entry, 8)
            if kind == _GPT_PROTECTIVE:
                return _gpt_offsets(f) or [0]
            if kind and kind not in _EXTENDED_TYPES and start_lba:
                offsets.append(start_lba * _SECTOR)
    return offsets or [0]


def _gpt_offsets(f):
    f.seek(_SECTOR)
    header = f.read(92)
    if header[:8] != b"EFI PART":
        return []
    entries_lba, count, size = struct.unpack_from("<QII", header, 72)
    if not 0 < count <= 1024 or not 128 <= size <= 4096:
        return []
    f.seek(entries_lba * _SECTOR)
    table = f.read(count * size)
    offsets = []
    for index in range(count):
        entry = table[index * size:(index + 1) * size]
        if len(entry) < 40 or entry[:16] == b"\0" * 16:
            continue
        first_lba, = struct.unpack_from("<Q", entry, 32)
        offsets.append(first_lba * _SECTOR)
    return offsets


def find_config(path, offset):
    """The first bootloader config file in the ext filesystem at ``offset``
    of the disk image ``path``, or None (no such file, or no ext filesystem)."""
    for config in BOOTLOADER_CONFIGS:
        try:
            out = subprocess.run(
                ["debugfs", "-c", "-R", "stat %s" % config, "%s?offset=%d" % (path, offset)],
                capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if "Bad magic number" in out.stderr or "Can't read" in out.stderr \
                or "while trying to open" in out.stderr:
            return None  # not an ext filesystem: nothing there for pygrub either
        if "Type: regular" in out.stdout:
            return config
    return None
