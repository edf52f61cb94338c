"""SR.scan: introduce the VHD files dropped into an SR directory.

The image plugin leaves ``<uuid>.vhd`` files (a chain: each child names its
parent file in its header). A scan materialises each new chain into
``<uuid>.raw`` (the simulator's VDIs are raw files) and introduces a VDI per
file; a file that is the parent of another becomes a VDI with
``managed=False`` and the child's ``sm_config['vhd-parent']`` names it. VDIs
whose file has gone (and that nothing has attached) are forgotten, as a real
scan does.
"""

import logging
import os
import re
import threading

from dom0.simulator import errors
from dom0.simulator import model
from dom0.simulator.api import vdi as vdi_api
from dom0.simulator.api.registry import message

LOG = logging.getLogger(__name__)

_VHD_NAME = re.compile(r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.vhd$")
_scan_lock = threading.Lock()


def _new_vhd_files(host, sr_ref):
    with host.store.lock:
        known = {host.store.get("VDI", r)["uuid"] for r in host.store.find("VDI", SR=sr_ref)}
        sr_dir = host.sr_dir(sr_ref)
    found = []
    for name in sorted(os.listdir(sr_dir)):
        match = _VHD_NAME.match(name)
        if match and match.group(1) not in known:
            found.append(match.group(1))
    return sr_dir, found


def _materialise(sr_dir, vdi_uuid):
    from dom0.simulator import vhd  # the decoder; loaded only when a scan needs it

    vhd_path = os.path.join(sr_dir, vdi_uuid + ".vhd")
    raw_path = os.path.join(sr_dir, vdi_uuid + ".raw")
    try:
        virtual_size, parent_path = vhd.materialize_chain(vhd_path, raw_path)
    except Exception as e:  # any decoder complaint is the SR backend's failure
        if os.path.exists(raw_path):
            os.unlink(raw_path)
        raise errors.sm_failure(errors.SR_BACKEND_FAILURE_SCAN, "The SR scan failed",
                                "%s.vhd: %s" % (vdi_uuid, e)) from None
    parent_uuid = None
    if parent_path:
        match = _VHD_NAME.match(os.path.basename(parent_path))
        parent_uuid = match.group(1) if match else None
    return virtual_size, parent_uuid


def _forget_missing(host, sr_ref):
    for vdi_ref in host.store.find("VDI", SR=sr_ref):
        vdi = host.store.get("VDI", vdi_ref)
        attached = any(host.store.get("VBD", b)["currently_attached"]
                       for b in host.store.find("VBD", VDI=vdi_ref))
        if not attached and not os.path.exists(host.vdi_path(vdi)):
            LOG.info("VDI %s: file gone, forgotten by scan", vdi["uuid"])
            for vbd_ref in host.store.find("VBD", VDI=vdi_ref):
                host.store.remove("VBD", vbd_ref)
            host.store.remove("VDI", vdi_ref)


@message("SR.scan", locked=False, async_ok=True)
def scan(host, session, sr_ref):
    with host.store.lock:
        host.store.get("SR", sr_ref)
    with _scan_lock:
        sr_dir, new_uuids = _new_vhd_files(host, sr_ref)
        chains = {u: _materialise(sr_dir, u) for u in new_uuids}
        parents = {parent for _, parent in chains.values() if parent}
        with host.store.lock:
            for vdi_uuid, (virtual_size, parent_uuid) in chains.items():
                record = model.VDI.new_record(
                    uuid=vdi_uuid, location=vdi_uuid, SR=sr_ref,
                    virtual_size=str(virtual_size), managed=vdi_uuid not in parents,
                    sm_config={"vhd-parent": parent_uuid} if parent_uuid else {})
                host.store.add("VDI", record)
                LOG.info("SR.scan introduced VDI %s (parent %s)", vdi_uuid, parent_uuid)
            for parent_uuid in parents - set(chains):
                try:
                    parent_ref = host.store.by_uuid("VDI", parent_uuid)
                except errors.XapiError:
                    continue
                parent = host.store.get("VDI", parent_ref)
                if parent["managed"] and not host.store.find("VBD", VDI=parent_ref):
                    parent["managed"] = False
                    host.store.touch("VDI", parent_ref)
            _forget_missing(host, sr_ref)
            for vdi_ref in host.store.find("VDI", SR=sr_ref):
                vdi_api.refresh_thick_sizes(host, sr_ref, vdi_ref)
            host.store.touch()
            host.store.commit()
