"""Startup detection: which VM is this, which host do we serve, which mode.

1. The local VM's uuid: ``[xenserver] vm_uuid_file`` (a Xen guest kernel's
   ``/sys/hypervisor/uuid``), else ``xenstore-read domid`` then
   ``xenstore-read /local/domain/<domid>/vm`` (→ ``/vm/<uuid>``).
2. Log in; the served host is the session's host (``session.get_this_host``).
   The local VM counts only if XAPI knows it and it is resident on that host.
   dom0 is the host's ``control_domain`` (else the VM with
   ``is_control_domain`` resident on the host) — never ``domid = 0``, which is
   wrong on pool members.
3. The mode: ``in_guest`` with a local VM, else ``independent``;
   ``[xenserver] independent_compute`` forces either.
4. Refusals raise :class:`StartupRefused`: one line naming the option.
   What the chosen backend cannot serve is refused by the service, from
   the backend's own declaration (:func:`refuse_what_backend_lacks`).
"""

import logging
import re
import subprocess

from agent.backends import base
from nova_xen_split.xenhost import conf as nxs_conf
from nova_xen_split.xenhost import xapi
from rpc import exceptions
from rpc import methods

LOG = logging.getLogger(__name__)

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
XENSTORE_TIMEOUT = 10

IN_GUEST = "in_guest"
INDEPENDENT = "independent"


class StartupRefused(Exception):
    """The agent cannot serve with this configuration; the text is one line."""

    def __init__(self, option, reason):
        self.option = option
        self.reason = reason
        super().__init__("%s: %s" % (option, reason))


def _valid_uuid(text):
    text = (text or "").strip().lower()
    return text if UUID_RE.match(text) else None


def _xenstore_read(command, key):
    try:
        proc = subprocess.run(list(command) + [key], capture_output=True, text=True,
                              timeout=XENSTORE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        LOG.debug("xenstore-read %s failed: %s", key, e)
        return None
    if proc.returncode != 0:
        LOG.debug("xenstore-read %s exited %d: %s", key, proc.returncode,
                  proc.stderr.strip())
        return None
    return proc.stdout.strip()


def local_vm_uuid(conf):
    """The uuid of the VM this process runs in, or None (not a Xen guest)."""
    xs = conf.xenserver
    try:
        with open(xs.vm_uuid_file) as f:
            uuid = _valid_uuid(f.read())
        if uuid:
            return uuid
        LOG.info("%s does not hold a uuid", xs.vm_uuid_file)
    except OSError as e:
        LOG.debug("Cannot read %s: %s", xs.vm_uuid_file, e)
    command = xs.xenstore_read_command
    if not command:
        return None
    domid = _xenstore_read(command, "domid")
    if not domid or not domid.isdigit():
        return None
    vm_path = _xenstore_read(command, "/local/domain/%s/vm" % domid)
    if not vm_path or not vm_path.startswith("/vm/"):
        return None
    return _valid_uuid(vm_path[len("/vm/"):])


def login(conf):
    """Log in to XAPI or refuse startup with the reason (never the password)."""
    try:
        return xapi.session_from_conf(conf)
    except exceptions.XapiFailure as e:
        if e.code == "SESSION_AUTHENTICATION_FAILED":
            raise StartupRefused(
                "[xenserver] connection_username/connection_password",
                "XAPI at %s refused the credentials of user %r"
                % (xapi.redacted_url(conf.xenserver.connection_url),
                   conf.xenserver.connection_username)
            ) from None
        if e.code == "CONNECTION_FAILED":
            raise StartupRefused(
                "[xenserver] connection_url",
                "XAPI at %s cannot be reached (%s)"
                % (xapi.redacted_url(conf.xenserver.connection_url),
                   e.details[2] if len(e.details) > 2 else "")
            ) from None
        raise StartupRefused(
            "[xenserver] connection_url",
            "login to XAPI at %s failed: %s"
            % (xapi.redacted_url(conf.xenserver.connection_url),
               " ".join(e.details[:1]))) from None


def control_domain(session, host_ref):
    """The served host's dom0, by ``host.control_domain``, else by residency."""
    try:
        ref = session.call("host.get_control_domain", host_ref)
        if ref and ref != "OpaqueRef:NULL":
            return ref
    except exceptions.XapiFailure as e:
        if e.code not in ("MESSAGE_METHOD_UNKNOWN", "MESSAGE_PARAMETER_COUNT_MISMATCH"):
            raise
    for ref, rec in session.call("VM.get_all_records").items():
        if rec.get("is_control_domain") and rec.get("resident_on") == host_ref:
            return ref
    host_uuid = session.call("host.get_uuid", host_ref)
    raise exceptions.XapiFailure(
        details=["HOST_HAS_NO_CONTROL_DOMAIN", host_uuid])


def _local_vm_on_host(session, vm_uuid, host_ref):
    """``(vm_ref, why_not)``: the VM's ref if it is on the served host."""
    if vm_uuid is None:
        return None, "no local VM uuid found"
    try:
        vm_ref = session.call("VM.get_by_uuid", vm_uuid)
    except exceptions.XapiFailure as e:
        if e.code in ("UUID_INVALID", "HANDLE_INVALID"):
            return None, "XAPI knows no VM %s" % vm_uuid
        raise
    resident_on = session.call("VM.get_resident_on", vm_ref)
    if resident_on != host_ref:
        return None, "VM %s is not resident on the served host" % vm_uuid
    return vm_ref, None


def refuse_what_backend_lacks(conf, backend):
    """Raise :class:`StartupRefused` for the first option set in ``conf``
    that needs a capability ``backend`` lacks."""
    for option, capability in nxs_conf.options_refused(conf, backend.capabilities()):
        raise StartupRefused(
            option + " = true", "%s is not supported by the %s backend: %s" % (
                methods.CAPABILITIES[capability], backend.mode, backend.LIMITATION))


def detect(conf, session, sessions):
    """Everything the backend needs, as an :class:`AgentContext`.

    Raises :class:`StartupRefused` for a configuration this host cannot serve.
    """
    host_ref = session.host_ref
    host_uuid = session.call("host.get_uuid", host_ref)
    host_name = session.call("host.get_name_label", host_ref)
    vm_uuid = local_vm_uuid(conf)
    vm_ref, why_not = _local_vm_on_host(session, vm_uuid, host_ref)

    forced = conf.xenserver.independent_compute
    if forced == "true":
        mode = INDEPENDENT
    elif forced == "false":
        if vm_ref is None:
            raise StartupRefused(
                "[xenserver] independent_compute = false",
                "in_guest mode needs a local VM on host %s, but %s (read from %s"
                " and %s)" % (host_name, why_not, conf.xenserver.vm_uuid_file,
                              " ".join(conf.xenserver.xenstore_read_command) or "-"))
        mode = IN_GUEST
    else:
        mode = IN_GUEST if vm_ref is not None else INDEPENDENT
        if vm_ref is None:
            LOG.info("No local VM on the served host (%s): independent mode", why_not)

    if mode == INDEPENDENT:
        vm_ref = vm_uuid = None

    dom0_ref = control_domain(session, host_ref)
    return base.AgentContext(
        conf, sessions, mode, host_ref, host_uuid, host_name, dom0_ref,
        vm_ref=vm_ref, vm_uuid=vm_uuid)
