"""A guest's network interfaces: XAPI VIFs made from Nova's network_info.

As the old driver's Open vSwitch VIF driver did: VIF ``n`` of the
instance's network_info is XAPI VIF device ``n``, with its MAC and MTU, on
the XAPI network whose bridge (or name) the VIF's ``network.bridge`` names,
else ``[xenserver] ovs_integration_bridge``; the Neutron port id goes into
the VIF's ``other_config`` (``marks.vif_marks``), which XenServer hands to
Open vSwitch as the port's ``iface-id``. The driver never touches a VIF it
did not make for the instance's VM.
"""

import logging

from nova_xen_split import driver_errors
from nova_xen_split.xenhost import marks
from rpc import exceptions

LOG = logging.getLogger(__name__)


def networks_for(session, vifs, default_bridge):
    """``{index: network_ref}`` for every VIF; raises ``NetworkNotFound``
    (naming the bridge) before anything is made when one has no network."""
    by_name = {}
    for ref, rec in session.call("network.get_all_records").items():
        by_name.setdefault(rec.get("bridge"), ref)
        by_name.setdefault(rec.get("name_label"), ref)
    found = {}
    for vif in vifs:
        bridge = vif.bridge or default_bridge
        if bridge not in by_name:
            raise driver_errors.NetworkNotFound(bridge=bridge, vif=vif.vif_id or vif.index)
        found[vif.index] = by_name[bridge]
    return found


def vif_record(vm_ref, vif, network_ref):
    """The record for ``VIF.create`` (MTU as text, XAPI's int64 on the wire)."""
    return {
        "device": str(vif.index),
        "network": network_ref,
        "VM": vm_ref,
        "MAC": vif.mac or "",
        "MTU": str(vif.mtu or 1500),
        "other_config": marks.vif_marks(vif.vif_id),
        "qos_algorithm_type": "",
        "qos_algorithm_params": {},
    }


def existing(session, vm_ref):
    """``{device: (vif_ref, record)}`` of a VM's VIFs."""
    found = {}
    for vif_ref in session.call("VM.get_VIFs", vm_ref):
        rec = session.call("VIF.get_record", vif_ref)
        found[rec["device"]] = (vif_ref, rec)
    return found


def plug(session, vm_ref, vifs, networks, running):
    """Make the VIFs the VM lacks (and plug them into a running VM).

    A device the VM has already with the same MAC is kept (a repeated
    ``plug_vifs`` changes nothing); with another MAC it is replaced.
    Returns the refs of the VIFs made.
    """
    made = []
    have = existing(session, vm_ref)
    for vif in vifs:
        current = have.get(str(vif.index))
        if current is not None:
            vif_ref, rec = current
            if rec["MAC"].lower() == (vif.mac or "").lower() and \
                    rec["network"] == networks[vif.index]:
                if running and not rec["currently_attached"]:
                    session.call("VIF.plug", vif_ref)
                continue
            _remove(session, vif_ref, rec, running)
        vif_ref = session.call("VIF.create", vif_record(vm_ref, vif, networks[vif.index]))
        made.append(vif_ref)
        if running:
            session.call("VIF.plug", vif_ref)
        LOG.debug("VIF %s (device %d, MAC %s, port %s) made on VM %s", vif_ref, vif.index,
                  vif.mac, vif.vif_id, vm_ref)
    return made


def unplug(session, vm_ref, vifs=None):
    """Remove the VM's VIFs (those of ``vifs`` only, matched by device and
    MAC, when given); returns how many went."""
    wanted = None if vifs is None else {(str(v.index), (v.mac or "").lower()) for v in vifs}
    running = str(session.call("VM.get_power_state", vm_ref)).lower() == "running"
    removed = 0
    for device, (vif_ref, rec) in existing(session, vm_ref).items():
        if wanted is not None and (device, rec["MAC"].lower()) not in wanted:
            continue
        _remove(session, vif_ref, rec, running)
        removed += 1
    return removed


def _remove(session, vif_ref, rec, running):
    if running and rec.get("currently_attached"):
        try:
            session.call("VIF.unplug", vif_ref)
        except exceptions.XapiFailure as e:
            if e.code != "DEVICE_ALREADY_DETACHED":
                raise
    try:
        session.call("VIF.destroy", vif_ref)
    except exceptions.XapiFailure as e:
        if e.code != "HANDLE_INVALID":
            raise
