"""The one interface both backends implement, and what they are given.

Like an os-brick connector: a few verbs, one file per way of touching disks
(``in_guest.py``, ``independent.py``), picked once at startup by
:func:`agent.backends.make_backend`. Callers never ask which one they hold.

Arguments reach a backend already validated by :mod:`agent.endpoint`; a
backend checks only what needs XAPI (does the VDI exist, is it big enough).
"""

import abc
import base64
import threading

from agent import vdis
from nova_xen_split.xenhost import marks, xapi
from rpc import exceptions, methods

CONSOLE_PLUGIN = "console.py"

INTERFACE_VERSION = methods.VERSION
GiB = 1024 ** 3
MiB = 1024 ** 2


def checkpoint(step):
    """Called between the steps of every operation.

    Production does nothing here. Tests replace it (``monkeypatch``) to raise
    at a named step and prove that the operation leaves nothing behind.
    """


class Sessions:
    """One logged-in XAPI session per thread.

    The XenAPI SDK's session is an XML-RPC proxy over one HTTP connection
    and is not safe to share between the RPC server's worker threads, and a
    shared session behind a lock would stall every call behind one long
    plugin call. Sessions are made on first use and logged out by
    :meth:`close`.
    """

    def __init__(self, conf):
        self._conf = conf
        self._local = threading.local()
        self._all = []
        self._lock = threading.Lock()

    def get(self):
        session = getattr(self._local, "session", None)
        if session is None:
            session = xapi.session_from_conf(self._conf, call_timeout=self.call_timeout())
            self._local.session = session
            with self._lock:
                self._all.append(session)
        return session

    def call_timeout(self):
        """Seconds each call of a new session may take (None: the login's)."""
        return None

    def adopt(self, session):
        """Use an already logged-in session for the calling thread."""
        self._local.session = session
        with self._lock:
            self._all.append(session)

    def close(self):
        with self._lock:
            sessions, self._all = self._all, []
        for session in sessions:
            session.logout()


class AgentContext:
    """What startup learnt, handed to the backend.

    ``vm_ref``/``vm_uuid``: the agent's own VM (None when independent);
    ``dom0_ref``: the served host's control domain; ``tag``: the value of the
    ``nxs-agent-vbd``/``nxs-agent`` tags (``[DEFAULT] host``).
    """

    def __init__(self, conf, sessions, mode, host_ref, host_uuid, host_name,
                 dom0_ref, vm_ref=None, vm_uuid=None):
        self.conf = conf
        self.sessions = sessions
        self.mode = mode
        self.host_ref = host_ref
        self.host_uuid = host_uuid
        self.host_name = host_name
        self.dom0_ref = dom0_ref
        self.vm_ref = vm_ref
        self.vm_uuid = vm_uuid
        self.tag = conf.host
        # VDIs and VBDs an operation of this process is working on right
        # now: an on-demand cleanup must not pull them from under it.
        self.busy = vdis.BusySet()

    @property
    def session(self):
        return self.sessions.get()


class Backend(metaclass=abc.ABCMeta):
    """The disk verbs of the agent; rpc/methods.py declares their arguments.

    Each backend declares what it can serve (``CAN``, names of
    :data:`rpc.methods.CAPABILITIES`) and, for the rest, why not
    (``LIMITATION``, one line); :meth:`describe` publishes both, and the
    agent's startup, the driver and ``nova-xen-split-status`` decide from
    what was published. :meth:`start` and :meth:`stop` run what the backend
    needs beside it (a privileged daemon, say).
    """

    mode = None
    CAN = frozenset()
    LIMITATION = None

    def __init__(self, ctx):
        self.ctx = ctx
        self.conf = ctx.conf

    def start(self):  # noqa: B027 -- a hook: most backends need nothing started
        """Start what the backend needs; called once, before any thread exists."""

    def stop(self):  # noqa: B027 -- likewise
        """Stop what :meth:`start` started."""

    def capabilities(self):
        """``{name: bool}`` for every capability of the interface."""
        return {name: name in self.CAN for name in methods.CAPABILITIES}

    def unsupported(self, capability, option):
        """The error for a request this backend cannot serve."""
        return exceptions.UnsupportedInIndependentMode(
            feature=methods.CAPABILITIES[capability],
            option="%s; %s" % (option, self.LIMITATION))

    # -- what is common to both -------------------------------------------

    def describe(self):
        """Mode, own VM, served host, interface version, capabilities and
        the backend's limitation (why it lacks what it lacks)."""
        return {
            "mode": self.mode,
            "vm_uuid": self.ctx.vm_uuid,
            "host_uuid": self.ctx.host_uuid,
            "host": self.ctx.host_name,
            "version": INTERFACE_VERSION,
            "capabilities": self.capabilities(),
            "limitation": self.LIMITATION,
        }

    def cleanup_attached_vdis(self):
        """Unplug/destroy this agent's VBDs, destroy its half-made VDIs.

        Returns ``{"unplugged": n, "destroyed": m}``; skips what an operation
        of this process is working on right now, and snapshot VDIs the
        driver took less than twice ``[agent] long_rpc_timeout`` ago (their
        ``upload_snapshot`` may still be coming).
        """
        vms = [ref for ref in (self.ctx.vm_ref, self.ctx.dom0_ref) if ref]
        return vdis.cleanup(self.ctx.session, vms, self.ctx.tag, self.ctx.busy,
                            snapshot_grace=2 * self.conf.agent.long_rpc_timeout)

    def settle(self):
        """One settling round (run by the agent now and then, not a verb of
        the interface): what :meth:`cleanup_attached_vdis` does, and the
        VDIs of instances the driver gave up on go
        (:func:`agent.vdis.settle_given_up`), skipping what running
        operations use. Returns the counts."""
        settled = self.cleanup_attached_vdis()
        settled["destroyed"] += vdis.settle_given_up(
            self.ctx.session, self.ctx.tag, self.ctx.busy,
            keep_seconds=2 * self.conf.agent.long_rpc_timeout)
        return settled

    def destroy_vdis(self, vdi_uuids):
        """Destroy VDIs, unplugging this agent's VBDs of them first.

        Every VDI is checked before anything is destroyed, so an unknown
        uuid, a VDI nova-xen-split did not make for an instance (no
        ``nxs-instance-uuid``: a volume, an image cache, another tool's disk)
        or one plugged by someone else raises InvalidRequest naming it, and
        nothing is destroyed.
        """
        session = self.ctx.session
        refs = []
        for index, uuid in enumerate(vdi_uuids):
            field = "vdi_uuids[%d]" % index
            ref = vdis.ref_by_uuid(session, uuid, "destroy_vdis", field)
            vdis.check_destroyable(session, ref, uuid, self.ctx.tag, field)
            refs.append(ref)
        for ref in refs:
            vdis.destroy(session, ref, self.ctx.tag)
        return {"destroyed": len(refs)}

    def get_console_log(self, instance_uuid, max_bytes):
        """The last ``max_bytes`` of the console log of the instance's
        running domain: ``{"log": bytes, "truncated": bool}``.

        The log is a file in dom0 (xenconsoled's), out of reach of every
        guest, this agent's own VM included, so both modes ask dom0's
        console plugin for it, for the domain XAPI says the instance's VM
        runs as on the served host. Raises ConsoleLogUnavailable when the
        instance has no running VM there or its domain no log.
        """
        session = self.ctx.session
        domid = None
        for rec in session.call("VM.get_all_records").values():
            if rec.get("is_control_domain") or \
                    marks.vm_instance(rec.get("other_config")) != instance_uuid:
                continue
            if rec.get("power_state") == "Running" and rec.get("resident_on") == self.ctx.host_ref:
                domid = xapi.to_int(rec["domid"])
        if domid is None or domid <= 0:
            raise exceptions.ConsoleLogUnavailable(
                instance_uuid=instance_uuid, reason="it has no running VM on this host")
        try:
            found = session.call_plugin_json(CONSOLE_PLUGIN, "get_console_log", {
                "dom_id": str(domid), "max_bytes": str(max_bytes)})
        except exceptions.XapiFailure as e:
            if e.details[:3] == ["XENAPI_PLUGIN_FAILURE", "get_console_log", "NoConsoleLog"]:
                raise exceptions.ConsoleLogUnavailable(
                    instance_uuid=instance_uuid,
                    reason="domain %d has no console log in dom0" % domid) from None
            raise
        return {"log": base64.b64decode(found["log"]), "truncated": bool(found["truncated"])}

    def owned_vdi_ref(self, vdi_uuid, instance_uuid, method):
        """The ref of a finished VDI of ``instance_uuid``; anything else is
        refused before it is read or changed (:func:`vdis.owned_ref`)."""
        return vdis.owned_ref(self.ctx.session, vdi_uuid, instance_uuid, self.ctx.tag, method)

    def ensure_size(self, method, vdi_ref, new_gb):
        """Grow the VDI to ``new_gb`` if smaller; refuse to shrink it."""
        session = self.ctx.session
        size_bytes = xapi.to_int(session.call("VDI.get_virtual_size", vdi_ref))
        want = new_gb * GiB
        if want < size_bytes:
            raise exceptions.InvalidRequest(
                method=method, field="new_gb",
                reason="%d GiB is smaller than the disk (%d bytes); shrinking "
                "is resize_disk's job" % (new_gb, size_bytes))
        if want > size_bytes:
            session.call("VDI.resize", vdi_ref, str(want))
        return want

    # -- the verbs ------------------------------------------------------------

    @abc.abstractmethod
    def fetch_image(self, instance_uuid, image_id, disk_format, kernel_id,
                    ramdisk_id, auth_token):
        """Make the VDIs of an image; ``{"vdis": [...]}``.

        Raises ImageFetchFailed, XapiFailure, UnsupportedInIndependentMode.
        """

    @abc.abstractmethod
    def upload_snapshot(self, instance_uuid, vdi_uuid, image_id, auth_token):
        """Upload a snapshot VDI of the instance's root into image
        ``image_id`` as a VHD tarball; ``{"image_id", "size_bytes"}``.

        Raises ImageUploadFailed (the image is deleted unless active),
        XapiFailure, InvalidRequest for a VDI that is not such a snapshot.
        """

    @abc.abstractmethod
    def auto_configure_disk(self, vdi_uuid, new_gb, instance_uuid=None):
        """Grow the VDI, its only partition and its ext3/4 fs to ``new_gb``."""

    @abc.abstractmethod
    def generate_disk(self, instance_uuid, kind, size_mb, fs_type, label):
        """A new ephemeral or swap VDI: one partition, formatted."""

    @abc.abstractmethod
    def generate_configdrive(self, instance_uuid, metadata, user_data,
                             network_data, vendor_data, files, admin_password):
        """A new config-drive VDI holding the ISO9660 image."""

    @abc.abstractmethod
    def resize_disk(self, instance_uuid, vdi_uuid, new_gb):
        """Copy a root disk to a new, smaller VDI (resize down)."""

    @abc.abstractmethod
    def remove_boot_files(self, paths):
        """Remove kernel/ramdisk files this agent copied into dom0."""

    @abc.abstractmethod
    def preconfigure_instance(self, vdi_uuid, network_config, files, ssh_key, metadata,
                              instance_uuid=None):
        """Write network config, the SSH key, metadata and files into the
        image's filesystem (Nova's ``flat_injected``)."""
