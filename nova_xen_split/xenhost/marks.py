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
VDI       ``nxs-instance-uuid``        the instance the VDI was made for
VDI       ``nxs-purpose``              ``root``, ``swap``, ``ephemeral:<label>``,
                                       ``configdrive``, ``resize``, ``kernel``...
VDI       ``nxs-request``              ``sha256:<hex>`` of the request it was made for
VDI       ``nxs-agent``                ``[DEFAULT] host`` of the agent that made it
VDI       ``nxs-state``                ``in-progress`` or ``ready``
VDI       ``nxs-image-bytes``          exact image size (the VDI is rounded up)
VBD       ``nxs-agent-vbd``            ``[DEFAULT] host`` of the agent that plugged it
SR        ``nxs-pending-chain-<leaf>`` ``<agent> <instance uuid> <unix time>``,
                                       then `` abandoned`` once the driver gave up
pool      ``nxs-gave-up-<instance>``   ``<unix time>`` the driver swept the
                                       instance's disks (a spawn undone, a
                                       destroy); removed when it spawns again
========  ===========================  ========================================

A change of a key or of a value's format is a new version, read by both
sides; adding a key keeps the version. Version 2 namespaced ephemeral
purposes (``ephemeral:<label>``, so a label cannot name another disk) and
added ``nxs-request``.
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
