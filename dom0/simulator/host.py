"""The simulated host: its state directory, objects and moving parts.

``SimulatedHost`` builds (or reloads) the database, knows where VDI files and
VM device directories live, and owns the loop devices, the partition watcher
and the plugin runner. At start and at shutdown it returns every loop device
it attached and marks the VBDs unplugged, so nothing outlives it.
"""

import contextlib
import logging
import os
import socket
import threading

from dom0.simulator import blockdev
from dom0.simulator import db
from dom0.simulator import errors
from dom0.simulator import model
from dom0.simulator import plugins
from dom0.simulator import private
from dom0.simulator import sessions
from dom0.simulator import storage
from dom0.simulator import udev

LOG = logging.getLogger(__name__)

REPO_PLUGIN_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plugins")


class VdiWriters:
    """One lock per VDI file, held while an import writes it.

    XAPI lets imports into one VDI overlap (the agent overlaps the PUTs of
    one image), but two threads writing one file here would spin on the
    file's lock in the kernel and burn both cores; taking turns costs no
    more than the writes themselves. A waiting import's body waits in its
    socket, so its client is slowed, never refused.
    """

    def __init__(self):
        self._guard = threading.Lock()
        self._locks = {}  # path -> [lock, holders and waiters]

    @contextlib.contextmanager
    def hold(self, path):
        with self._guard:
            entry = self._locks.setdefault(path, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1] -= 1
                if not entry[1]:
                    del self._locks[path]


class StateMismatch(Exception):
    """The state directory holds a host that differs from the one asked for."""


class SimulatedHost:
    def __init__(self, state_dir, password, compute_vm=False, plugin_dir=None,
                 plugin_timeout=600, loop_devices=True, partition_devices=True,
                 import_attach_seconds=0.0, host_cpus=4, host_memory_mb=16384,
                 session_idle_seconds=None, sr_type=storage.EXT):
        self.host_cpus = host_cpus
        self.host_memory_mb = host_memory_mb
        self.state_dir = os.path.abspath(state_dir)
        self.sr_type = sr_type  # see storage.py
        # What each import waits before reading its body (see http_data).
        self.import_attach_seconds = import_attach_seconds
        self.password = password
        self.want_compute_vm = compute_vm
        self.store = db.Store(self.state_dir)
        self.sessions = sessions.Sessions(
            self.store, session_idle_seconds or sessions.DEFAULT_IDLE_SECONDS)
        self.loops = blockdev.LoopDevices(
            self.state_dir, loop_devices and blockdev.loop_devices_available())
        self.udev = udev.PartitionWatcher(partition_devices)
        self.host_ref = self.pool_ref = self.dom0_ref = self.sr_ref = None
        self.compute_vm_ref = None
        self.devices = {}  # VBD ref -> the block device (or file) it is plugged as
        self.vdi_writers = VdiWriters()
        self.plugins = None
        self._plugin_dir = plugin_dir or REPO_PLUGIN_DIR
        self._plugin_timeout = plugin_timeout

    # -- paths --------------------------------------------------------------

    @property
    def sr_root(self):
        return os.path.join(self.state_dir, "sr")

    def sr_dir(self, sr_ref):
        return os.path.join(self.sr_root, self.store.get("SR", sr_ref)["uuid"])

    def vdi_path(self, vdi_record):
        sr_uuid = self.store.get("SR", vdi_record["SR"])["uuid"]
        return os.path.join(self.sr_root, sr_uuid, "%s.raw" % vdi_record["uuid"])

    @property
    def boot_root(self):
        """dom0's /boot: guest kernels may be booted from under it."""
        return os.path.join(self.state_dir, "boot")

    @property
    def sr_thick(self):
        """Whether VDIs are thick volumes (an LVM SR): see storage.py."""
        return self.sr_type == storage.LVM

    def vm_dir(self, vm_uuid):
        return os.path.join(self.state_dir, "vms", vm_uuid)

    def vm_dev_dir(self, vm_uuid):
        return os.path.join(self.vm_dir(vm_uuid), "dev")

    @property
    def console_dir(self):
        """Where xenconsoled would log guest consoles (dom0's /var/log/xen/guest)."""
        return os.path.join(self.state_dir, "console")

    def log_console(self, domid, text):
        """Append ``text`` to domain ``domid``'s console log, as a guest's
        console output would arrive there."""
        path = os.path.join(self.console_dir, "console.%s" % domid)
        fd = private.open_fd(path, os.O_WRONLY | os.O_APPEND)
        with os.fdopen(fd, "a") as f:
            f.write(text)

    def has_block_devices(self, vm_ref):
        """Only dom0 and the compute VM get real devices; guests are bookkeeping."""
        return vm_ref in (self.dom0_ref, self.compute_vm_ref)

    # -- life cycle ---------------------------------------------------------

    def open(self):
        """Load or create the database, clean what a previous run left, start."""
        # 0700 even when it existed: it holds every VDI's bytes.
        private.make_dir(self.state_dir)
        with self.store.lock:
            if not self.store.load():
                self._create_objects()
            self._find_objects()
            found = self.store.get("SR", self.sr_ref)["type"]
            found = storage.EXT if found == "file" else found  # states made before types
            if found != self.sr_type:
                raise StateMismatch("%s holds a host whose SR is %s, not %s"
                                    % (self.state_dir, found, self.sr_type))
            self._set_up_hardware()
            self._set_up_compute_vm()
            self._forget_attachments()
            self.store.touch()
            self.store.commit()
        self.loops.cleanup()
        dom0_uuid = self.store.get("VM", self.dom0_ref)["uuid"]
        os.makedirs(self.vm_dev_dir(dom0_uuid), exist_ok=True)
        boot_dir = os.path.join(self.boot_root, "guest")
        os.makedirs(boot_dir, exist_ok=True)
        os.makedirs(self.console_dir, exist_ok=True)
        self.plugins = plugins.PluginRunner(self._plugin_dir, self._plugin_timeout, {
            "NXS_DOM0_DEV_DIR": self.vm_dev_dir(dom0_uuid),
            # An LVM SR has no mount: a plugin finds no SR directory there.
            "NXS_DOM0_SR_ROOT": (os.path.join(self.state_dir, "sr-mount") if self.sr_thick
                                 else self.sr_root),
            "NXS_DOM0_BOOT_DIR": boot_dir,
            "NXS_DOM0_CONSOLE_DIR": self.console_dir,
        })
        self.udev.start()

    def close(self):
        """Unplug every real device and detach our loop devices."""
        self.udev.stop()
        with self.store.lock:
            self._forget_attachments()
            self.store.commit()
            devices, self.devices = self.devices, {}
        for dev in devices.values():
            self.udev.unwatch(dev)
        self.loops.cleanup()

    def _create_objects(self):
        store = self.store
        host_ref = model.new_ref()
        dom0 = model.VM.new_record(
            name_label="Control domain on host: %s" % socket.gethostname(),
            power_state="Running", is_control_domain=True, resident_on=host_ref,
            domid="0", memory_static_max=str(4 << 30))
        dom0_ref = store.add("VM", dom0)
        store.add("host", model.HOST.new_record(
            name_label=socket.gethostname(), hostname=socket.gethostname(),
            control_domain=dom0_ref,
            software_version={"product_brand": "xapi-sim", "xapi": "1.0"}), ref=host_ref)
        sr = model.SR.new_record(name_label="Local storage", type=self.sr_type,
                                 other_config={"i18n-key": "local-storage"})
        if self.sr_thick:
            sr["sm_config"] = {"allocation": "thick", "use_vhd": "true"}
            device_config = {"device": storage.LVM_DEVICE}
        else:
            device_config = {"path": os.path.join(self.sr_root, sr["uuid"])}
        sr_ref = store.add("SR", sr)
        store.add("PBD", model.PBD.new_record(
            host=host_ref, SR=sr_ref, currently_attached=True, device_config=device_config))
        store.add("pool", model.POOL.new_record(
            master=host_ref, default_SR=sr_ref, suspend_image_SR=sr_ref,
            crash_dump_SR=sr_ref))
        LOG.info("created a new host in %s", self.state_dir)

    def _find_objects(self):
        store = self.store
        self.pool_ref = next(iter(store.table("pool")))
        pool = store.get("pool", self.pool_ref)
        self.host_ref = pool["master"]
        self.sr_ref = pool["default_SR"]
        self.dom0_ref = store.get("host", self.host_ref)["control_domain"]
        os.makedirs(self.sr_dir(self.sr_ref), exist_ok=True)

    def _set_up_hardware(self):
        """The host's CPUs, its memory and its networks, as configured.

        A state directory made before these existed gets them; the CPU count
        and memory follow the command line of every start, as a host's
        hardware would after a change.
        """
        store = self.store
        cpus = sorted(store.find("host_cpu", host=self.host_ref),
                      key=lambda ref: int(store.get("host_cpu", ref)["number"]))
        for ref in cpus[self.host_cpus:]:
            store.remove("host_cpu", ref)
        for number in range(len(cpus), self.host_cpus):
            store.add("host_cpu", model.HOST_CPU.new_record(host=self.host_ref,
                                                             number=str(number)))
        host = store.get("host", self.host_ref)
        total = str(self.host_memory_mb * 1024 * 1024)
        if store.exists("host_metrics", host["metrics"]):
            store.update("host_metrics", host["metrics"], memory_total=total,
                         last_updated=model.now_text())
        else:
            metrics = store.add("host_metrics", model.HOST_METRICS.new_record(
                memory_total=total, last_updated=model.now_text()))
            store.update("host", self.host_ref, metrics=metrics)
        # A fresh XenServer's networks: the management bridge of eth0, and
        # the Open vSwitch integration bridge an operator makes for Neutron.
        for bridge, label in (("xenbr0", "Pool-wide network associated with eth0"),
                              ("br-int", "br-int")):
            if not store.find("network", bridge=bridge):
                store.add("network", model.NETWORK.new_record(
                    name_label=label, bridge=bridge,
                    other_config={"automatic": "false"} if bridge == "br-int" else {}))

    def memory_free(self, metrics):
        """Bytes of memory not held by a VM resident on the host."""
        held = sum(int(vm["memory_static_max"]) for vm in self.store.table("VM").values()
                   if vm["resident_on"] == self.host_ref)
        return max(int(metrics["memory_total"]) - held, 0)

    def _identity_files(self):
        vms = os.path.join(self.state_dir, "vms")
        if not os.path.isdir(vms):
            return []
        return [os.path.join(vms, d, "sys", "hypervisor", "uuid") for d in os.listdir(vms)
                if os.path.exists(os.path.join(vms, d, "sys", "hypervisor", "uuid"))]

    def _set_up_compute_vm(self):
        """The compute VM is the guest whose uuid file exists in its VM dir."""
        existing = None
        for path in self._identity_files():
            with open(path) as f:
                vm_uuid = f.read().strip()
            try:
                ref = self.store.by_uuid("VM", vm_uuid)
            except errors.XapiError:
                ref = None
            if self.want_compute_vm and ref is not None and existing is None:
                existing = ref
            else:
                os.unlink(path)
        if not self.want_compute_vm:
            return
        if existing is None:
            record = model.VM.new_record(
                name_label="compute", power_state="Running", resident_on=self.host_ref,
                domid="1", memory_static_max=str(2 << 30),
                other_config={"nxs-role": "compute"})
            existing = self.store.add("VM", record)
            path = os.path.join(self.vm_dir(record["uuid"]), "sys", "hypervisor", "uuid")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with private.create(path, "w") as f:
                f.write(record["uuid"] + "\n")
        self.compute_vm_ref = existing
        self.store.update("VM", existing, power_state="Running", resident_on=self.host_ref)
        os.makedirs(self.vm_dev_dir(self.store.get("VM", existing)["uuid"]), exist_ok=True)

    def _forget_attachments(self):
        """Mark real devices unplugged and remove their links (loops go separately)."""
        for vm_ref in (self.dom0_ref, self.compute_vm_ref):
            if vm_ref is None:
                continue
            for vbd_ref in self.store.find("VBD", VM=vm_ref, currently_attached=True):
                self.store.update("VBD", vbd_ref, currently_attached=False)
            dev_dir = self.vm_dev_dir(self.store.get("VM", vm_ref)["uuid"])
            if os.path.isdir(dev_dir):
                for name in os.listdir(dev_dir):
                    if os.path.islink(os.path.join(dev_dir, name)):
                        os.unlink(os.path.join(dev_dir, name))
        for task in self.store.table("task").values():
            if task["status"] == "pending":
                task.update(status="failure", finished=model.now_text(),
                            error_info=["INTERNAL_ERROR", "xapi-sim restarted"])
