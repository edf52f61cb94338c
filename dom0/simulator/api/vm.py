"""VM messages: create, power operations, destroy.

Power-state errors follow xen-api: ``VM_BAD_POWER_STATE [vm, expected,
actual]`` with lower-case state names. Starting a guest marks its VBDs
attached (no device is made: only dom0 and the compute VM get block devices);
shutting a VM down detaches them.
"""

import copy

from dom0.simulator import boot
from dom0.simulator import errors
from dom0.simulator import model
from dom0.simulator.api import vbd as vbd_api
from dom0.simulator.api import vif as vif_api
from dom0.simulator.api import unmarshal
from dom0.simulator.api.registry import message

# Fields a caller may not set through VM.create: XAPI owns them.
_OWNED_BY_XAPI = ("uuid", "power_state", "resident_on", "is_control_domain", "domid",
                  "allowed_operations", "current_operations", "VBDs", "metrics",
                  "guest_metrics", "consoles", "VIFs")


def _power(host, vm_ref):
    return host.store.get("VM", vm_ref)["power_state"]


def assert_power(host, vm_ref, expected):
    actual = _power(host, vm_ref)
    if actual != expected:
        raise errors.XapiError(
            errors.VM_BAD_POWER_STATE, vm_ref, expected.lower(), actual.lower())


def _assert_not_control_domain(host, vm_ref, op):
    if host.store.get("VM", vm_ref)["is_control_domain"]:
        raise errors.XapiError(
            errors.OPERATION_NOT_ALLOWED, "%s is not allowed on the control domain" % op)


@message("VM.create", async_ok=True, unmarshal=unmarshal.constructor("VM"))
def create(host, session, record):
    # name_label has a default, "" (datamodel_common.ml, names).
    if not isinstance(record.get("name_label", ""), str):
        raise errors.XapiError(errors.FIELD_TYPE_ERROR, "name_label")
    values = {k: copy.deepcopy(v) for k, v in record.items() if k not in _OWNED_BY_XAPI}
    for field, default in model.VM.fields.items():
        if field in values and isinstance(default, dict) and not isinstance(values[field], dict):
            raise errors.XapiError(errors.FIELD_TYPE_ERROR, field)
    # Nova sends int64 fields as strings already; accept ints too, store strings.
    for field, value in values.items():
        if isinstance(model.VM.fields.get(field), str) and isinstance(value, int) \
                and not isinstance(value, bool):
            values[field] = str(value)
    vm = model.VM.new_record(**values)
    vm.update(power_state="Halted", resident_on=model.NULL_REF, domid="-1",
              is_control_domain=False)
    if values.get("domain_type", "unspecified") == "unspecified":
        # xapi_vm.ml, create: derive_domain_type from HVM_boot_policy.
        vm["domain_type"] = "hvm" if vm["HVM_boot_policy"] else "pv"
    return host.store.add("VM", vm)


# datamodel_vm.ml, start: vm, start_paused and force, none with a default.
@message("VM.start", async_ok=True)
def start(host, session, vm_ref, start_paused, force):
    record = host.store.get("VM", vm_ref)
    if record["is_a_template"]:
        raise errors.XapiError("VM_IS_TEMPLATE", vm_ref, "start")
    assert_power(host, vm_ref, "Halted")
    boot.check_start(host, vm_ref, record)
    domids = [int(v["domid"]) for v in host.store.table("VM").values()]
    state = "Paused" if start_paused else "Running"
    host.store.update("VM", vm_ref, power_state=state, resident_on=host.host_ref,
                      domid=str(max(domids) + 1))
    for vbd_ref in host.store.find("VBD", VM=vm_ref):
        vbd = host.store.get("VBD", vbd_ref)
        vbd["currently_attached"] = True
        vbd["device"] = vbd["device"] or vbd_api.device_name(vbd["userdevice"])
        host.store.touch("VBD", vbd_ref)
    vif_api.set_attached(host, vm_ref, True)
    host.store.touch()
    _boot_messages(host, vm_ref, "started")


def _boot_messages(host, vm_ref, how):
    """What a guest's console shows as it boots: the simulator has no guest
    to run, so its domain's log gets a few lines naming the VM."""
    record = host.store.get("VM", vm_ref)
    host.log_console(record["domid"], "xapi-sim: domain %s %s for VM %s (%s)\n"
                     "Booting from the %s disk...\nlogin: \n" % (
                         record["domid"], how, record["uuid"], record["name_label"],
                         "PV" if record["PV_bootloader"] else "HVM"))


def _shutdown(host, vm_ref, op, force):
    _assert_not_control_domain(host, vm_ref, op)
    if force:
        if _power(host, vm_ref) == "Halted":
            assert_power(host, vm_ref, "Running")
    else:
        assert_power(host, vm_ref, "Running")
    for vbd_ref in host.store.find("VBD", VM=vm_ref, currently_attached=True):
        vbd_api.detach_device(host, vbd_ref, force=True)
        host.store.update("VBD", vbd_ref, currently_attached=False)
    vif_api.set_attached(host, vm_ref, False)
    host.store.update("VM", vm_ref, power_state="Halted", resident_on=model.NULL_REF,
                      domid="-1")


@message("VM.clean_shutdown", async_ok=True)
def clean_shutdown(host, session, vm_ref):
    _shutdown(host, vm_ref, "clean_shutdown", force=False)


@message("VM.hard_shutdown", async_ok=True)
def hard_shutdown(host, session, vm_ref):
    _shutdown(host, vm_ref, "hard_shutdown", force=True)


@message("VM.destroy", async_ok=True)
def destroy(host, session, vm_ref):
    _assert_not_control_domain(host, vm_ref, "destroy")
    assert_power(host, vm_ref, "Halted")
    for vbd_ref in host.store.find("VBD", VM=vm_ref):
        host.store.remove("VBD", vbd_ref)
    # xapi_vm_helpers.ml, destroy: the VM's VIFs go with it.
    for vif_ref in host.store.find("VIF", VM=vm_ref):
        host.store.remove("VIF", vif_ref)
    host.store.remove("VM", vm_ref)


def _reboot(host, vm_ref, op):
    """A reboot is a new domain: a new domid, devices attached again."""
    _assert_not_control_domain(host, vm_ref, op)
    assert_power(host, vm_ref, "Running")
    domids = [int(v["domid"]) for v in host.store.table("VM").values()]
    host.store.update("VM", vm_ref, domid=str(max(domids) + 1))
    _boot_messages(host, vm_ref, "rebooted")


@message("VM.clean_reboot", async_ok=True)
def clean_reboot(host, session, vm_ref):
    _reboot(host, vm_ref, "clean_reboot")


@message("VM.hard_reboot", async_ok=True)
def hard_reboot(host, session, vm_ref):
    _reboot(host, vm_ref, "hard_reboot")
