"""The local SR's type: ``ext`` (file-based VHD) or ``lvm`` (VHD in thick LVs).

``ext`` is what the simulator always was: each VDI a sparse file in the SR's
directory, which stands for dom0's ``/var/run/sr-mount/<sr-uuid>`` (the
PBD's ``device_config:path``); ``physical_utilisation`` is what the file
holds. ``lvm`` follows SM's LVHD SR (xapi-project/sm, libs/sm/lvhdutil.py,
libs/sm/vhdutil.py):

* there is no mount: the PBD names a device, not a path, and dom0 plugins
  find no SR directory to write into;
* a VDI's size is rounded up to the VHD block size, 2 MiB
  (``vhdutil.validate_and_round_vhd_size``);
* volumes are thick: a VDI's ``physical_utilisation`` is its LV's size, a
  stored value the storage layer sets when it makes, resizes or scans the
  VDI (``lvhdutil.calcSizeVHDLV``: the size, the metadata preallocated for
  the largest virtual size and the bitmaps, rounded up to the 4 MiB extent),
  not what has been written; the SR's is their sum;
* a raw import writes every byte it is sent, zeros too: a thick volume
  has no holes (the simulator's own file may stay sparse where nothing was
  sent, which nobody sees).
"""

EXT = "ext"
LVM = "lvm"
SR_TYPES = (EXT, LVM)
MiB = 1 << 20
VHD_BLOCK_BYTES = 2 * MiB
MIN_VHD_BYTES = 2 * MiB
LVM_EXTENT_BYTES = 4 * MiB
# lvhdutil.MSIZE: the largest virtual size whose metadata is preallocated.
MAX_FAST_RESIZE_BYTES = 2 * 1024 * 1024 * MiB
# What a device-backed SR's PBD names (its device_config:device).
LVM_DEVICE = "/dev/disk/by-id/xapi-sim-local"


def round_up(value, step):
    return -(-value // step) * step


def vhd_size(size_bytes):
    """vhdutil.validate_and_round_vhd_size (the range is checked by the caller)."""
    return round_up(max(size_bytes, MIN_VHD_BYTES), VHD_BLOCK_BYTES)


def _vhd_overhead_empty(virtual_bytes):
    """vhdutil.calcOverheadEmpty: footers, header, BAT, BATMAP."""
    size_mb = virtual_bytes // MiB
    overhead = round_up(3 * 1024 + (size_mb // 2) * 4, 512)
    return round_up(overhead + (size_mb // 2) // 8, 4096)


def lv_size(virtual_bytes):
    """lvhdutil.calcSizeVHDLV: the thick LV that holds a VHD of this size."""
    bitmaps = round_up(virtual_bytes, VHD_BLOCK_BYTES) // VHD_BLOCK_BYTES * 4096
    return round_up(virtual_bytes + _vhd_overhead_empty(MAX_FAST_RESIZE_BYTES) + bitmaps,
                    LVM_EXTENT_BYTES)
