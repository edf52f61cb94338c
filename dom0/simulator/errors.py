"""XAPI's error codes, raised by the simulator's calls.

A :class:`XapiError` becomes ``{'Status': 'Failure', 'ErrorDescription':
[code, params...]}`` on the wire. Codes and parameter orders follow
xen-api's ``ocaml/idl/datamodel_errors.ml`` and the places that raise them.
"""

SESSION_AUTHENTICATION_FAILED = "SESSION_AUTHENTICATION_FAILED"
SESSION_INVALID = "SESSION_INVALID"
HANDLE_INVALID = "HANDLE_INVALID"
UUID_INVALID = "UUID_INVALID"
MESSAGE_METHOD_UNKNOWN = "MESSAGE_METHOD_UNKNOWN"
MESSAGE_PARAMETER_COUNT_MISMATCH = "MESSAGE_PARAMETER_COUNT_MISMATCH"
FIELD_TYPE_ERROR = "FIELD_TYPE_ERROR"
EVENT_FROM_TOKEN_PARSE_FAILURE = "EVENT_FROM_TOKEN_PARSE_FAILURE"
VALUE_NOT_SUPPORTED = "VALUE_NOT_SUPPORTED"
INVALID_VALUE = "INVALID_VALUE"
BOOTLOADER_FAILED = "BOOTLOADER_FAILED"
MAP_DUPLICATE_KEY = "MAP_DUPLICATE_KEY"
OPERATION_NOT_ALLOWED = "OPERATION_NOT_ALLOWED"
INTERNAL_ERROR = "INTERNAL_ERROR"
# Not a code of datamodel_errors.ml: the first element of the failure XAPI's
# dispatcher answers for an Async. call of a message without an asynchronous
# mode (gen_api.ml, response_of_fault).
FAULT = "Fault"
VM_BAD_POWER_STATE = "VM_BAD_POWER_STATE"
VDI_IN_USE = "VDI_IN_USE"
VDI_READONLY = "VDI_READONLY"
VDI_NOT_MANAGED = "VDI_NOT_MANAGED"
VDI_IO_ERROR = "VDI_IO_ERROR"
VDI_MISSING = "VDI_MISSING"
VDI_TOO_SMALL = "VDI_TOO_SMALL"
VDI_IS_SHARABLE = "VDI_IS_SHARABLE"
VDI_INCOMPATIBLE_TYPE = "VDI_INCOMPATIBLE_TYPE"
VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION = "VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION"
DEVICE_ALREADY_ATTACHED = "DEVICE_ALREADY_ATTACHED"
DEVICE_ALREADY_DETACHED = "DEVICE_ALREADY_DETACHED"
DEVICE_ALREADY_EXISTS = "DEVICE_ALREADY_EXISTS"
DEVICE_DETACH_REJECTED = "DEVICE_DETACH_REJECTED"
INVALID_DEVICE = "INVALID_DEVICE"
VBD_NOT_UNPLUGGABLE = "VBD_NOT_UNPLUGGABLE"
XENAPI_MISSING_PLUGIN = "XENAPI_MISSING_PLUGIN"
XENAPI_PLUGIN_FAILURE = "XENAPI_PLUGIN_FAILURE"
UNKNOWN_XENAPI_PLUGIN_FUNCTION = "UNKNOWN_XENAPI_PLUGIN_FUNCTION"
SR_BACKEND_FAILURE_VDI_CREATE = "SR_BACKEND_FAILURE_78"  # SM's "VDICreate"
SR_BACKEND_FAILURE_VDI_SIZE = "SR_BACKEND_FAILURE_79"  # SM's "VDISize"
SR_BACKEND_FAILURE_VDI_CLONE = "SR_BACKEND_FAILURE_81"  # SM's "VDIClone"
SR_BACKEND_FAILURE_SCAN = "SR_BACKEND_FAILURE_40"  # SM's "SRScan"


class XapiError(Exception):
    """A XAPI failure: ``code`` and its string parameters."""

    def __init__(self, code, *params):
        super().__init__(code)
        self.code = code
        self.params = [str(p) for p in params]

    @property
    def description(self):
        return [self.code] + self.params

    def __str__(self):
        return "%s %s" % (self.code, self.params)


def sm_failure(code, text, opterr):
    """An SMAPIv1 backend error as XAPI reports it: [code, '', text, '']."""
    return XapiError(code, "", "%s [opterr=%s]" % (text, opterr), "")
