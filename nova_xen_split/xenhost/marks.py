"""The marks nova-xen-split leaves on XAPI objects: one versioned contract.

The driver and the agent find each other's work on the hypervisor through
keys in the ``other_config`` maps of VMs, VDIs, VBDs and SRs. Every key and
value format is defined here, once, with a writer (what to put) and a
parser (what a map holds); no other module spells a key. The formats are
documented in ``docs/interfaces.md``.

Version 1:

========  ===========================  ========================================
object    key                          value
========  ===========================  ========================================
VM        ``nova_uuid``                the instance uuid (Nova's own key)
VM        ``nxs-kernel-file``          dom0 path of the instance's kernel
VM        ``nxs-ramdisk-file``         dom0 path of the instance's ramdisk
VM        ``nxs-resize-of``            the instance whose original VM a resize
                                       keeps (halted) until confirm or revert
VDI       ``nxs-instance-uuid``        the instance the VDI was made for
VDI       ``nxs-purpose``              ``root``, ``swap``, ``ephemeral:<label>``,
                                       ``configdrive``, ``resize``, ``kernel``...,
                                       ``snapshot`` (a root's snapshot being uploaded)
VDI       ``nxs-request``              ``sha256:<hex>`` of the request it was made for
VDI       ``nxs-agent``                ``[DEFAULT] host`` of the agent that made it
VDI       ``nxs-state``                ``in-progress`` or ``ready``
VDI       ``nxs-image-bytes``          exact image size (the VDI is rounded up)
VDI       ``nxs-parked-for``           the instance whose kept original VM has the
                                       disk (instead of ``nxs-instance-uuid``)
VDI       ``nxs-image-cache``          ``<filling|ready> <image id> <agent> <unix time>``
VDI       ``nxs-image-checksum``       the image record's checksum it was filled
                                       against: ``<algorithm>:<hex>`` or ``none``
VDI       ``nxs-image-cache-used``     unix time it was last cloned
VDI       ``nxs-cloned-from``          uuid of the image cache VDI it is a clone of
VBD       ``nxs-agent-vbd``            ``[DEFAULT] host`` of the agent that plugged it
VIF       ``nicira-iface-id``          the Neutron port (Open vSwitch's iface-id)
SR        ``nxs-pending-chain-<leaf>`` ``<agent> <instance uuid> <unix time>``,
                                       then `` abandoned`` once the driver gave up
SR        ``nxs-image-filling-<id>``   ``<agent> <unix time>`` while that agent
                                       fills the image's cache VDI
pool      ``nxs-gave-up-<instance>``   ``<unix time>`` the driver swept the
                                       instance's disks (a spawn undone, a
                                       destroy); removed when it spawns again
========  ===========================  ========================================

A change of a key or of a value's format is a new version, read by both
sides; adding a key keeps the version. Version 2 namespaced ephemeral
purposes (``ephemeral:<label>``, so a label cannot name another disk) and
added ``nxs-request``. The image cache keys were added to version 2.
"""

import collections
import hashlib
import json
import logging

from rpc import exceptions

LOG = logging.getLogger(__name__)

VERSION = 2

# -- VMs ------------------------------------------------------------------------

_VM_INSTANCE = "nova_uuid"
_VM_BOOT_FILE = "nxs-%s-file"  # kernel, ramdisk
BOOT_FILE_KINDS = ("kernel", "ramdisk")


def vm_marks(instance_uuid):
    """The ``other_config`` of a new instance VM."""
    return {_VM_INSTANCE: instance_uuid}


def vm_instance(other_config):
    """The instance uuid a VM was made for, or None (not an instance VM)."""
    return (other_config or {}).get(_VM_INSTANCE) or None


def vm_boot_file_mark(kind, path):
    """``(key, value)`` recording a dom0 boot file (kernel or ramdisk) on its VM."""
    if kind not in BOOT_FILE_KINDS:
        raise ValueError("boot file kind %r is not one of %s" % (kind, BOOT_FILE_KINDS))
    return _VM_BOOT_FILE % kind, path


def vm_boot_files(other_config):
    """dom0 boot files recorded on a VM, kernel first."""
    other = other_config or {}
    return [other[_VM_BOOT_FILE % kind] for kind in BOOT_FILE_KINDS
            if other.get(_VM_BOOT_FILE % kind)]


# -- the original of a resize ---------------------------------------------------

# A resize on one host keeps the instance's original VM and disks, halted,
# until Nova confirms (they go) or reverts (they are the instance's again).
# While kept, the VM has no instance mark and its disks none either, so
# nothing that looks for the instance's VM or disks (a destroy, the sweep,
# the agent) can take them for the new ones.
_VM_PARKED = "nxs-resize-of"
_VDI_PARKED = "nxs-parked-for"


def vm_parked(other_config):
    """``other_config`` of an instance VM kept as the original of a resize."""
    config = dict(other_config or {})
    instance_uuid = config.pop(_VM_INSTANCE)
    config[_VM_PARKED] = instance_uuid
    return config


def vm_unparked(other_config):
    """``other_config`` of a kept original that is the instance's VM again."""
    config = dict(other_config or {})
    config[_VM_INSTANCE] = config.pop(_VM_PARKED)
    return config


def vm_parked_for(other_config):
    """The instance whose resize keeps this VM as its original, or None."""
    return (other_config or {}).get(_VM_PARKED) or None


def vdi_parked(other_config):
    """``other_config`` of an instance's disk while its VM is kept."""
    config = dict(other_config or {})
    config[_VDI_PARKED] = config.pop(_VDI_INSTANCE)
    return config


def vdi_unparked(other_config):
    """``other_config`` of a kept disk that is the instance's again."""
    config = dict(other_config or {})
    config[_VDI_INSTANCE] = config.pop(_VDI_PARKED)
    return config


def vdi_parked_for(other_config):
    """The instance whose kept original VM has this disk, or None."""
    return (other_config or {}).get(_VDI_PARKED) or None


# -- VIFs -----------------------------------------------------------------------

# Not ours but Open vSwitch's: XenServer's vif script copies this key of a
# VIF's other_config into the OVS port's external_ids:iface-id, which is how
# Neutron's agent finds its port (the old driver's Open vSwitch VIF driver
# wrote the same).
_VIF_IFACE_ID = "nicira-iface-id"


def vif_marks(port_id):
    """The ``other_config`` of a new VIF for Neutron port ``port_id`` (or none)."""
    return {_VIF_IFACE_ID: port_id} if port_id else {}


def vif_port(other_config):
    """The Neutron port a VIF was made for, or None."""
    return (other_config or {}).get(_VIF_IFACE_ID) or None


# -- VDIs -----------------------------------------------------------------------

_VDI_INSTANCE = "nxs-instance-uuid"
_VDI_PURPOSE = "nxs-purpose"
_VDI_AGENT = "nxs-agent"
_VDI_STATE = "nxs-state"
_VDI_IMAGE_BYTES = "nxs-image-bytes"
_VDI_REQUEST = "nxs-request"
IN_PROGRESS = "in-progress"
READY = "ready"
# Purposes of VDIs the agent makes; an ephemeral disk's is its kind and label.
ROOT, SWAP, CONFIGDRIVE, RESIZE = "root", "swap", "configdrive", "resize"
# A snapshot of an instance's root that the driver took through XAPI for
# the agent to upload; destroyed once uploaded (or not).
SNAPSHOT = "snapshot"

VdiMark = collections.namedtuple("VdiMark", ["instance_uuid", "purpose", "agent", "state"])


def disk_purpose(kind, label):
    """The purpose of a generated disk: ``swap``, or ``ephemeral:<label>``."""
    return SWAP if kind == "swap" else "%s:%s" % (kind, label)


def vdi_marks(instance_uuid, purpose, agent, state, request=None):
    """The ``other_config`` entries of a VDI the agent makes (or adopts);
    ``request`` (a JSON-able dict) is what the VDI was made from."""
    entries = [(_VDI_INSTANCE, instance_uuid), (_VDI_PURPOSE, purpose),
               (_VDI_AGENT, agent), vdi_state_mark(state)]
    if request is not None:
        entries.append(request_mark(request))
    return dict(entries)


def snapshot_marks(instance_uuid, agent):
    """The whole ``other_config`` of a snapshot VDI of an instance's root,
    to be uploaded by ``agent``: it replaces the root's marks, which
    ``VDI.snapshot`` copies (a second ``root`` of the instance must never
    exist). ``in-progress`` until destroyed, so the agent's crash cleanup
    removes one left behind."""
    return vdi_marks(instance_uuid, SNAPSHOT, agent, IN_PROGRESS)


def _digestible(value):
    if isinstance(value, (bytes, bytearray)):
        return {"sha256": hashlib.sha256(value).hexdigest()}
    raise TypeError("%s in a request" % type(value).__name__)


def request_mark(request):
    """``(key, value)`` fingerprinting the request a VDI is made for: the
    SHA-256 of its canonical JSON (bytes by their own digest). A later
    request for the same instance and purpose reuses the VDI only when its
    fingerprint is the same. Never give it a secret."""
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), default=_digestible)
    return _VDI_REQUEST, "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def vdi_request(other_config):
    """The request fingerprint recorded on a VDI, or None."""
    return (other_config or {}).get(_VDI_REQUEST)


def read_vdi(other_config):
    """The :class:`VdiMark` of a VDI, or None when no instance's mark is on it
    (a volume, another tool's disk). Missing fields read as None."""
    other = other_config or {}
    instance_uuid = other.get(_VDI_INSTANCE)
    if not instance_uuid:
        return None
    return VdiMark(instance_uuid, other.get(_VDI_PURPOSE), other.get(_VDI_AGENT),
                   other.get(_VDI_STATE))


def vdi_ready(other_config):
    """Whether a VDI is marked ready (filled, fit to hand over)."""
    mark = read_vdi(other_config)
    return mark is not None and mark.state == READY


def vdi_instance(other_config):
    """The instance a VDI was made for, or None."""
    mark = read_vdi(other_config)
    return mark.instance_uuid if mark else None


def vdi_state_mark(state):
    """``(key, value)`` moving a VDI to ``state`` (in-progress or ready)."""
    if state not in (IN_PROGRESS, READY):
        raise ValueError("VDI state %r is not %s or %s" % (state, IN_PROGRESS, READY))
    return _VDI_STATE, state


def image_bytes_mark(size_bytes):
    """``(key, value)`` recording the exact size of the image in a VDI."""
    return _VDI_IMAGE_BYTES, str(int(size_bytes))


def image_bytes(other_config):
    """The exact image size recorded on a VDI, or None."""
    value = (other_config or {}).get(_VDI_IMAGE_BYTES)
    return int(value) if value and value.isdigit() else None


# -- image cache VDIs ------------------------------------------------------------
# One VDI per image holds the image's data; an instance's root is a VDI.clone
# of it. XAPI's clone copies other_config, so a clone carries these keys too
# until the agent replaces them: a VDI with an instance mark is never read as
# a cache VDI (the agent writes the instance mark first).

_CACHE = "nxs-image-cache"
_CACHE_CHECKSUM = "nxs-image-checksum"
_CACHE_USED = "nxs-image-cache-used"
_CLONED_FROM = "nxs-cloned-from"
CACHE_KEYS = (_CACHE, _CACHE_CHECKSUM, _CACHE_USED)
FILLING = "filling"
NO_CHECKSUM = "none"

CacheMark = collections.namedtuple(
    "CacheMark", ["state", "image_id", "agent", "since", "checksum", "used"])


def cache_mark(state, image_id, agent, since):
    """``(key, value)`` of an image cache VDI: ``filling`` while ``agent``
    writes the image into it (``since``: unix time it began), ``ready``
    once it holds the whole image, checked."""
    if state not in (FILLING, READY):
        raise ValueError("cache state %r is not %s or %s" % (state, FILLING, READY))
    if not image_id or any(c.isspace() for c in image_id + agent) or not agent:
        raise ValueError("image id %r and agent %r must be words" % (image_id, agent))
    return _CACHE, "%s %s %s %d" % (state, image_id, agent, int(since))


def checksum_text(algorithm, hexdigest):
    """The checksum as the cache marks spell it: ``<algorithm>:<hex>``, or
    ``none`` for an image whose record has none."""
    if not algorithm or not hexdigest:
        return NO_CHECKSUM
    return "%s:%s" % (algorithm.lower(), hexdigest.lower())


def cache_checksum_mark(text):
    """``(key, value)``: the image's checksum (:func:`checksum_text`) that
    the cache VDI was filled against."""
    return _CACHE_CHECKSUM, text


def cache_used_mark(when):
    """``(key, value)``: the cache VDI was last cloned at ``when`` (unix time)."""
    return _CACHE_USED, str(int(when))


def read_cache(other_config):
    """The :class:`CacheMark` of an image cache VDI, or None: not one, a
    malformed mark, or a clone still carrying its parent's keys (it has an
    instance mark). ``since``/``used`` read as None when unreadable."""
    other = other_config or {}
    value = other.get(_CACHE)
    if not isinstance(value, str) or other.get(_VDI_INSTANCE):
        return None
    words = value.split()
    if len(words) != 4 or words[0] not in (FILLING, READY):
        return None
    since = int(words[3]) if words[3].isdigit() else None
    used = other.get(_CACHE_USED)
    used = int(used) if isinstance(used, str) and used.isdigit() else None
    return CacheMark(words[0], words[1], words[2], since, other.get(_CACHE_CHECKSUM), used)


def cloned_from_mark(cache_vdi_uuid):
    """``(key, value)`` of an instance's VDI made as a clone of a cache VDI."""
    return _CLONED_FROM, cache_vdi_uuid


def cloned_from(other_config):
    """The uuid of the cache VDI this VDI is a clone of, or None."""
    return (other_config or {}).get(_CLONED_FROM) or None


_FILLING = "nxs-image-filling-"

Filling = collections.namedtuple("Filling", ["key", "image_id", "agent", "since"])


def filling_mark(image_id, agent, since):
    """``(key, value)`` an agent adds to the SR before it fills an image's
    cache VDI. XAPI refuses to add a key that exists (MAP_DUPLICATE_KEY),
    so only one agent at a time fills an image."""
    return _FILLING + image_id, "%s %d" % (agent, int(since))


def filling_key(image_id):
    return _FILLING + image_id


def read_filling(key, value):
    """The :class:`Filling` of one SR ``other_config`` entry, or None when
    the entry is not one. An unreadable time reads as ``since`` None."""
    if not key.startswith(_FILLING) or not isinstance(value, str):
        return None
    words = value.split()
    if len(words) != 2:
        return None
    return Filling(key, key[len(_FILLING):], words[0],
                   int(words[1]) if words[1].isdigit() else None)


def fillings(other_config):
    """Every :class:`Filling` recorded in an SR's ``other_config``."""
    found = []
    for key, value in (other_config or {}).items():
        entry = read_filling(key, value)
        if entry is not None:
            found.append(entry)
    return found


# -- VBDs -----------------------------------------------------------------------

_VBD_AGENT = "nxs-agent-vbd"


def vbd_marks(agent):
    """The ``other_config`` of a VBD the agent plugs for its own work."""
    return {_VBD_AGENT: agent}


def vbd_agent(other_config):
    """The agent that plugged a VBD, or None (a guest's disk, another tool's)."""
    return (other_config or {}).get(_VBD_AGENT) or None


# -- SRs: VHD chains a dom0 plugin is landing -------------------------------------

_PENDING_CHAIN = "nxs-pending-chain-"
_ABANDONED = "abandoned"

PendingChain = collections.namedtuple(
    "PendingChain", ["key", "leaf_uuid", "agent", "instance_uuid", "since", "abandoned"])


def pending_chain_mark(leaf_uuid, agent, instance_uuid, since):
    """``(key, value)`` recording, before a dom0 plugin runs, the leaf uuid of
    the chain it is to land (``since``: unix time)."""
    return _PENDING_CHAIN + leaf_uuid, "%s %s %d" % (agent, instance_uuid, int(since))


def pending_chain_key(leaf_uuid):
    """The SR ``other_config`` key of a pending chain."""
    return _PENDING_CHAIN + leaf_uuid


def abandoned_mark(chain):
    """``(key, value)`` marking a pending chain abandoned (the driver gave up)."""
    return chain.key, "%s %s %d %s" % (chain.agent, chain.instance_uuid,
                                       chain.since or 0, _ABANDONED)


def read_pending_chain(key, value):
    """The :class:`PendingChain` of one SR ``other_config`` entry, or None when
    the entry is not one. An unreadable time reads as ``since`` None (stale)."""
    if not key.startswith(_PENDING_CHAIN) or not isinstance(value, str):
        return None
    words = value.split()
    if len(words) not in (3, 4) or (len(words) == 4 and words[3] != _ABANDONED):
        return None
    since = int(words[2]) if words[2].isdigit() else None
    return PendingChain(key, key[len(_PENDING_CHAIN):], words[0], words[1], since,
                        len(words) == 4)


def pending_chains(other_config):
    """Every :class:`PendingChain` recorded in an SR's ``other_config``."""
    chains = []
    for key, value in (other_config or {}).items():
        chain = read_pending_chain(key, value)
        if chain is not None:
            chains.append(chain)
    return chains


# -- the pool: instances the driver gave up on -------------------------------------

_GAVE_UP = "nxs-gave-up-"


def gave_up_mark(instance_uuid, since):
    """``(key, value)`` saying the driver swept the disks of ``instance_uuid``
    at ``since`` (unix time): an agent still making one for it destroys it."""
    return _GAVE_UP + instance_uuid, "%d" % int(since)


def gave_up_key(instance_uuid):
    """The pool ``other_config`` key of :func:`gave_up_mark`."""
    return _GAVE_UP + instance_uuid


def gave_up_instances(other_config):
    """``{instance uuid: unix time or None}`` of the pool's gave-up marks
    (an unreadable time reads as None)."""
    found = {}
    for key, value in (other_config or {}).items():
        if key.startswith(_GAVE_UP) and len(key) > len(_GAVE_UP):
            value = value if isinstance(value, str) else ""
            found[key[len(_GAVE_UP):]] = int(value) if value.isdigit() else None
    return found


# -- writing ------------------------------------------------------------------------

def set_mark(session, cls, ref, key, value):
    """Set one ``other_config`` entry of a ``cls`` object (``VDI``, ``SR``...),
    replacing any old value: XAPI's map has no replace, so it is removed first."""
    try:
        session.call("%s.remove_from_other_config" % cls, ref, key)
    except exceptions.XapiFailure:
        LOG.debug("%s %s had no %s yet", cls, ref, key)
    session.call("%s.add_to_other_config" % cls, ref, key, value)


def set_marks(session, cls, ref, marks):
    """:func:`set_mark` for each entry of ``marks``."""
    for key, value in marks.items():
        set_mark(session, cls, ref, key, value)
