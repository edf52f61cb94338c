"""The classes the simulator serves: their fields, defaults and writable parts.

Records are stored as XAPI puts them on the wire: refs and enums are strings,
int64 fields are decimal strings, maps are str→str dicts. Date-times are kept
as XAPI's ``YYYYMMDDTHH:MM:SSZ`` text and sent as XML-RPC ``dateTime.iso8601``.
Fields that XAPI derives from other objects (``VM.VBDs``, ``SR.VDIs`` ...) are
computed when read, so they can never go stale.
"""

import copy
import datetime
import uuid

NULL_REF = "OpaqueRef:NULL"


def new_ref():
    return "OpaqueRef:%s" % uuid.uuid4()


def new_uuid():
    return str(uuid.uuid4())


def now_text():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H:%M:%SZ")


class ClassSpec:
    """One XAPI class: field defaults, writable fields, map fields, derived fields.

    ``ctor_required``: the fields its constructor's record must hold, in the
    order XAPI looks them up (see :data:`VM_CTOR_REQUIRED`).
    """

    def __init__(self, name, fields, writable=(), maps=(), datetimes=(), derived=(),
                 ctor_required=()):
        self.name = name
        self.ctor_required = tuple(ctor_required)
        self.fields = fields
        self.writable = set(writable) | {"name_label", "name_description"} & set(fields)
        self.maps = set(maps)
        self.datetimes = set(datetimes)
        self.derived = set(derived)

    def new_record(self, **values):
        record = copy.deepcopy(self.fields)
        record["uuid"] = new_uuid()
        record.update(values)
        return record


_NAME = {"name_label": "", "name_description": ""}

# What a constructor's record (VM.create, VDI.create, VBD.create) must hold.
# A constructor reads every StaticRO and RW field of its class from the
# record (gen_client.ml, ctor_fields), in declaration order; a field with a
# default value may be left out, one without makes the dispatcher fail
# with Dispatcher_FieldNotFound (gen_server.ml, operation, from_ctor_record;
# server_helpers.ml, my_assoc). name_label and name_description always have
# a default ("": datamodel_common.ml, names). The lists follow the
# declarations in ocaml/idl/datamodel_vm.ml (t, and its namespaces memory,
# VCPUs, actions, PV, HVM) and ocaml/idl/datamodel.ml (VDI.t, VBD.t, qos).
VM_CTOR_REQUIRED = (
    "user_version", "is_a_template", "affinity",
    "memory_static_max", "memory_dynamic_max", "memory_dynamic_min", "memory_static_min",
    "VCPUs_params", "VCPUs_max", "VCPUs_at_startup",
    "actions_after_shutdown", "actions_after_reboot", "actions_after_crash",
    "PV_bootloader", "PV_kernel", "PV_ramdisk", "PV_args", "PV_bootloader_args",
    "PV_legacy_args", "HVM_boot_policy", "HVM_boot_params",
    "platform", "PCI_bus", "other_config", "recommendations",
)
VDI_CTOR_REQUIRED = ("SR", "virtual_size", "type", "sharable", "read_only", "other_config")
VBD_CTOR_REQUIRED = ("VM", "VDI", "userdevice", "bootable", "mode", "type", "empty",
                     "other_config", "qos_algorithm_type", "qos_algorithm_params")

SESSION = ClassSpec("session", {
    "uuid": "", "this_host": NULL_REF, "this_user": NULL_REF, "last_active": "",
    "pool": False, "other_config": {}, "is_local_superuser": True, "subject": NULL_REF,
    "validation_time": "", "auth_user_sid": "", "auth_user_name": "root",
    "rbac_permissions": [], "tasks": [], "parent": NULL_REF, "originator": "",
}, maps=["other_config"], datetimes=["last_active", "validation_time"])

POOL = ClassSpec("pool", dict(_NAME, **{
    "uuid": "", "master": NULL_REF, "default_SR": NULL_REF, "suspend_image_SR": NULL_REF,
    "crash_dump_SR": NULL_REF, "other_config": {}, "ha_enabled": False, "tags": [],
}), writable=["default_SR", "suspend_image_SR", "crash_dump_SR"], maps=["other_config"])

HOST = ClassSpec("host", dict(_NAME, **{
    "uuid": "", "allowed_operations": [], "current_operations": {},
    "API_version_major": "2", "API_version_minor": "21", "API_version_vendor": "XenServer",
    "API_version_vendor_implementation": {}, "enabled": True, "software_version": {},
    "other_config": {}, "capabilities": [], "cpu_configuration": {}, "sched_policy": "credit",
    "supported_bootloaders": ["pygrub", "eliloader"], "logging": {}, "PIFs": [],
    "suspend_image_sr": NULL_REF, "crash_dump_sr": NULL_REF, "crashdumps": [], "patches": [],
    "updates": [], "PBDs": [], "host_CPUs": [], "cpu_info": {}, "hostname": "",
    "address": "127.0.0.1", "metrics": NULL_REF, "license_params": {},
    "control_domain": NULL_REF, "tags": [], "edition": "free",
}), maps=["other_config", "logging", "license_params"],
    derived=["resident_VMs", "PBDs", "host_CPUs"])

VM = ClassSpec("VM", dict(_NAME, **{
    "uuid": "", "allowed_operations": [], "current_operations": {}, "power_state": "Halted",
    "user_version": "1", "is_a_template": False, "is_default_template": False,
    "suspend_VDI": NULL_REF, "resident_on": NULL_REF, "affinity": NULL_REF,
    "memory_overhead": "0", "memory_target": "0", "memory_static_max": "0",
    "memory_dynamic_max": "0", "memory_dynamic_min": "0", "memory_static_min": "0",
    "VCPUs_params": {}, "VCPUs_max": "1", "VCPUs_at_startup": "1",
    "actions_after_shutdown": "destroy", "actions_after_reboot": "restart",
    "actions_after_crash": "restart", "consoles": [], "VIFs": [], "crash_dumps": [],
    "VTPMs": [], "PV_bootloader": "", "PV_kernel": "", "PV_ramdisk": "", "PV_args": "",
    "PV_bootloader_args": "", "PV_legacy_args": "", "HVM_boot_policy": "",
    "HVM_boot_params": {}, "HVM_shadow_multiplier": 1.0, "platform": {},
    "PCI_bus": "", "other_config": {}, "domid": "-1", "domarch": "",
    "last_boot_CPU_flags": {}, "is_control_domain": False, "metrics": NULL_REF,
    "guest_metrics": NULL_REF, "recommendations": "", "xenstore_data": {},
    "ha_always_run": False, "ha_restart_priority": "", "is_a_snapshot": False,
    "snapshot_of": NULL_REF, "snapshots": [], "tags": [], "blocked_operations": {},
    "blobs": {}, "order": "0", "start_delay": "0", "shutdown_delay": "0",
    "is_vmss_snapshot": False, "domain_type": "pv",
}), writable=[
    "user_version", "is_a_template", "affinity", "memory_static_max", "memory_dynamic_max",
    "memory_dynamic_min", "memory_static_min", "VCPUs_max", "VCPUs_at_startup",
    "actions_after_shutdown", "actions_after_reboot", "actions_after_crash", "PV_bootloader",
    "PV_kernel", "PV_ramdisk", "PV_args", "PV_bootloader_args", "PV_legacy_args",
    "HVM_boot_policy", "HVM_boot_params", "platform", "PCI_bus", "other_config",
    "recommendations", "xenstore_data", "tags", "blocked_operations", "VCPUs_params",
    "domain_type",
], maps=["other_config", "platform", "xenstore_data", "VCPUs_params", "HVM_boot_params",
         "blocked_operations"], derived=["VBDs", "VIFs"], ctor_required=VM_CTOR_REQUIRED)

SR = ClassSpec("SR", dict(_NAME, **{
    "uuid": "", "allowed_operations": [], "current_operations": {},
    "virtual_allocation": "0", "physical_utilisation": "0", "physical_size": "0",
    "type": "file", "content_type": "user", "shared": False, "other_config": {},
    "tags": [], "sm_config": {}, "blobs": {}, "local_cache_enabled": False,
    "introduced_by": NULL_REF, "clustered": False, "is_tools_sr": False,
}), writable=["other_config", "sm_config", "tags", "shared"],
    maps=["other_config", "sm_config"],
    derived=["VDIs", "PBDs", "physical_size", "physical_utilisation", "virtual_allocation"])

PBD = ClassSpec("PBD", {
    "uuid": "", "host": NULL_REF, "SR": NULL_REF, "device_config": {},
    "currently_attached": True, "other_config": {},
}, writable=["other_config", "device_config"], maps=["other_config"])

VDI = ClassSpec("VDI", dict(_NAME, **{
    "uuid": "", "allowed_operations": [], "current_operations": {}, "SR": NULL_REF,
    "crash_dumps": [], "virtual_size": "0", "physical_utilisation": "0", "type": "user",
    "sharable": False, "read_only": False, "other_config": {}, "storage_lock": False,
    "location": "", "managed": True, "missing": False, "parent": NULL_REF,
    "xenstore_data": {}, "sm_config": {}, "is_a_snapshot": False, "snapshot_of": NULL_REF,
    "snapshot_time": "19700101T00:00:00Z", "tags": [],
    "allow_caching": False, "on_boot": "persist", "metadata_of_pool": NULL_REF,
    "metadata_latest": False, "is_tools_iso": False, "cbt_enabled": False,
}), writable=["other_config", "sm_config", "xenstore_data", "tags", "sharable", "read_only",
              "allow_caching", "on_boot"],
    maps=["other_config", "sm_config", "xenstore_data"], datetimes=["snapshot_time"],
    derived=["VBDs", "physical_utilisation", "snapshots"], ctor_required=VDI_CTOR_REQUIRED)

VBD = ClassSpec("VBD", {
    "uuid": "", "allowed_operations": [], "current_operations": {}, "VM": NULL_REF,
    "VDI": NULL_REF, "device": "", "userdevice": "", "bootable": False, "mode": "RW",
    "type": "Disk", "unpluggable": True, "storage_lock": False, "empty": False,
    "other_config": {}, "currently_attached": False, "status_code": "0",
    "status_detail": "", "runtime_properties": {}, "qos_algorithm_type": "",
    "qos_algorithm_params": {}, "qos_supported_algorithms": [], "metrics": NULL_REF,
}, writable=["userdevice", "bootable", "mode", "type", "unpluggable", "other_config",
             "qos_algorithm_type", "qos_algorithm_params"],
    maps=["other_config", "qos_algorithm_params"], ctor_required=VBD_CTOR_REQUIRED)

TASK = ClassSpec("task", dict(_NAME, **{
    "uuid": "", "allowed_operations": [], "current_operations": {}, "created": "",
    "finished": "19700101T00:00:00Z", "status": "pending", "resident_on": NULL_REF,
    "progress": 0.0, "type": "", "result": "", "error_info": [], "other_config": {},
    "subtask_of": NULL_REF, "subtasks": [], "backtrace": "()",
}), writable=["other_config"], maps=["other_config"], datetimes=["created", "finished"])

# datamodel_host.ml (host_cpu, host_metrics): what a host reports of its
# hardware; memory_free is computed from the VMs resident on the host.
HOST_CPU = ClassSpec("host_cpu", {
    "uuid": "", "host": NULL_REF, "number": "0", "vendor": "GenuineIntel", "speed": "2400",
    "modelname": "Intel(R) Xeon(R) CPU (xapi-sim)", "family": "6", "model": "85",
    "stepping": "4", "flags": "fpu de tsc msr pae cx8 apic sep cmov pat clflush mmx fxsr sse "
    "sse2 ht syscall nx lm", "features": "", "utilisation": 0.0, "other_config": {},
}, writable=["other_config"], maps=["other_config"])

HOST_METRICS = ClassSpec("host_metrics", {
    "uuid": "", "memory_total": "0", "memory_free": "0", "live": True,
    "last_updated": "19700101T00:00:00Z", "other_config": {},
}, writable=["other_config"], maps=["other_config"], datetimes=["last_updated"],
    derived=["memory_free"])

# datamodel.ml (network, VIF). A VIF's constructor record must hold the
# fields without a default; the locking and IP configuration fields added
# later all have one.
VIF_CTOR_REQUIRED = ("device", "network", "VM", "MAC", "MTU", "other_config",
                     "qos_algorithm_type", "qos_algorithm_params")

NETWORK = ClassSpec("network", dict(_NAME, **{
    "uuid": "", "allowed_operations": [], "current_operations": {}, "PIFs": [],
    "MTU": "1500", "other_config": {}, "bridge": "", "managed": True, "blobs": {},
    "tags": [], "default_locking_mode": "unlocked", "assigned_ips": {}, "purpose": [],
}), writable=["MTU", "other_config", "tags"], maps=["other_config"], derived=["VIFs"])

VIF = ClassSpec("VIF", {
    "uuid": "", "allowed_operations": [], "current_operations": {}, "device": "",
    "network": NULL_REF, "VM": NULL_REF, "MAC": "", "MTU": "1500", "other_config": {},
    "currently_attached": False, "status_code": "0", "status_detail": "",
    "runtime_properties": {}, "qos_algorithm_type": "", "qos_algorithm_params": {},
    "qos_supported_algorithms": [], "metrics": NULL_REF, "MAC_autogenerated": False,
    "locking_mode": "network_default", "ipv4_allowed": [], "ipv6_allowed": [],
    "ipv4_configuration_mode": "None", "ipv4_addresses": [], "ipv4_gateway": "",
    "ipv6_configuration_mode": "None", "ipv6_addresses": [], "ipv6_gateway": "",
}, writable=["other_config", "qos_algorithm_type", "qos_algorithm_params"],
    maps=["other_config", "qos_algorithm_params"], ctor_required=VIF_CTOR_REQUIRED)

CLASSES = {spec.name: spec for spec in (SESSION, POOL, HOST, VM, SR, PBD, VDI, VBD, TASK,
                                        HOST_CPU, HOST_METRICS, NETWORK, VIF)}

POWER_STATES = ("Halted", "Paused", "Running", "Suspended")
VDI_TYPES = ("system", "user", "ephemeral", "suspend", "crashdump", "ha_statefile",
             "metadata", "redo_log", "rrd", "pvs_cache", "cbt_metadata")
