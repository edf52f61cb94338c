"""VIF messages: a guest's network interfaces.

Checks and errors follow xen-api's ``ocaml/xapi/xapi_vif_helpers.ml``
(``create``: INVALID_DEVICE for a device that is not an unsigned decimal,
MAC_INVALID unless six ':'-separated pairs of hex digits,
DEVICE_ALREADY_EXISTS for a device number the VM has; ``destroy``:
OPERATION_NOT_ALLOWED while attached to a running VM;
``valid_operations``: plug and unplug need a running VM, else
VM_BAD_POWER_STATE, and DEVICE_ALREADY_ATTACHED / DEVICE_ALREADY_DETACHED).
A VM's VIFs are attached when it starts and detached when it stops
(``vm.py``), and destroyed with it.
"""

import copy
import re

from dom0.simulator import errors
from dom0.simulator import model
from dom0.simulator.api import unmarshal
from dom0.simulator.api.registry import message

MAC_INVALID = "MAC_INVALID"
_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}\Z")
_DEVICE_RE = re.compile(r"^[0-9]+\Z")


@message("VIF.create", async_ok=True, unmarshal=unmarshal.constructor("VIF"))
def create(host, session, record):
    store = host.store
    device, mac = record["device"], record["MAC"]
    store.get("VM", record["VM"])
    store.get("network", record["network"])
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        raise errors.XapiError(errors.INVALID_DEVICE, device)
    if not isinstance(mac, str) or not _MAC_RE.match(mac):
        raise errors.XapiError(MAC_INVALID, mac)
    used = {int(store.get("VIF", ref)["device"]) for ref in store.find("VIF", VM=record["VM"])}
    if int(device) in used:
        raise errors.XapiError(errors.DEVICE_ALREADY_EXISTS, device)
    for field in ("other_config", "qos_algorithm_params"):
        unmarshal.check_string_map(record[field])
    mtu = record["MTU"]
    if isinstance(mtu, bool) or not isinstance(mtu, (int, str)) or not str(mtu).isdigit():
        raise errors.XapiError(errors.FIELD_TYPE_ERROR, "MTU")
    values = {k: copy.deepcopy(v) for k, v in record.items()
              if k in model.VIF.fields and k not in ("uuid", "currently_attached")}
    values["MTU"] = str(int(mtu))
    return store.add("VIF", model.VIF.new_record(**values))


def _vm_running(host, vif_ref):
    vm_ref = host.store.get("VIF", vif_ref)["VM"]
    state = host.store.get("VM", vm_ref)["power_state"]
    if state != "Running":
        raise errors.XapiError(errors.VM_BAD_POWER_STATE, vm_ref, "running", state.lower())


@message("VIF.plug", async_ok=True)
def plug(host, session, vif_ref):
    _vm_running(host, vif_ref)
    if host.store.get("VIF", vif_ref)["currently_attached"]:
        raise errors.XapiError(errors.DEVICE_ALREADY_ATTACHED, vif_ref)
    host.store.update("VIF", vif_ref, currently_attached=True)


def _unplug(host, vif_ref):
    _vm_running(host, vif_ref)
    if not host.store.get("VIF", vif_ref)["currently_attached"]:
        raise errors.XapiError(errors.DEVICE_ALREADY_DETACHED, vif_ref)
    host.store.update("VIF", vif_ref, currently_attached=False)


@message("VIF.unplug", async_ok=True)
def unplug(host, session, vif_ref):
    _unplug(host, vif_ref)


@message("VIF.unplug_force", async_ok=True)
def unplug_force(host, session, vif_ref):
    _unplug(host, vif_ref)


@message("VIF.destroy", async_ok=True)
def destroy(host, session, vif_ref):
    vif = host.store.get("VIF", vif_ref)
    running = host.store.get("VM", vif["VM"])["power_state"] == "Running"
    if running and vif["currently_attached"]:
        raise errors.XapiError(errors.OPERATION_NOT_ALLOWED,
                               "VIF currently attached to a running VM")
    host.store.remove("VIF", vif_ref)


def set_attached(host, vm_ref, attached):
    """Every VIF of a VM attached (it started) or detached (it stopped)."""
    for vif_ref in host.store.find("VIF", VM=vm_ref):
        host.store.get("VIF", vif_ref)["currently_attached"] = attached
        host.store.touch("VIF", vif_ref)
