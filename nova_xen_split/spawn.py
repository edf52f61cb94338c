"""One spawn, top to bottom: its requests, its steps, its undo; and destroy.

1. :meth:`Spawn.plan` builds and checks every request of the spawn (flavor,
   network, config drive, ``flat_injected``, the image against the flavor)
   before anything is made: a bad one raises and nothing exists yet.
2. :meth:`Spawn.run` makes the disks through the agent, then the VM, its
   VBDs, and starts it, recording what it made and each step's timing.
3. :meth:`Spawn.undo` removes exactly what this spawn made, through
   :func:`destroy_disks`, which the driver's ``destroy`` uses too: the
   agent's ``destroy_vdis`` first, then XAPI directly for whatever is left
   (so a dead agent cannot leak disks), and dom0 boot files through the
   agent (the driver touches no disk).
"""

import collections
import contextlib
import logging
import time

from nova_xen_split import driver_errors, instance_metadata, netinfo, objects, vifs as vif_utils
from nova_xen_split import vm_utils
from nova_xen_split.xenhost import marks
from rpc import methods

LOG = logging.getLogger(__name__)

GiB = 1024 ** 3
DESTROY_VDIS_BATCH = 64  # the interface's limit per destroy_vdis call

SpawnStep = collections.namedtuple("SpawnStep", ["name", "seconds", "detail"])
# What Spawn.plan builds: every request of the spawn, checked. ``configdrive``
# and ``preconfigure`` are the agent calls' arguments, or None.
SpawnPlan = collections.namedtuple(
    "SpawnPlan", ["context", "instance", "image", "vifs", "configdrive", "preconfigure",
                  "networks"])


# What each flavor field may be: Nova's unit, least, most. The disk limits
# are the interface's (auto_configure_disk's new_gb, generate_disk's
# size_mb), so a flavor the agent would refuse is refused before any disk.
FLAVOR_FIELDS = (
    ("memory_mb", 1, 16 * 1024 * 1024),
    ("vcpus", 1, 512),
    ("root_gb", 0, 65536),
    ("ephemeral_gb", 0, 65536),
    ("swap", 0, 65536 * 1024),
)


def check_flavor(flavor):
    """Raise :class:`InvalidFlavor` unless every size is a whole number in range.

    ``ephemeral_gb`` and ``swap`` may also be unset (None or ``""``, as old
    flavors have it), meaning 0. Numbers given as decimal text are accepted,
    as Nova's integer fields accept them.
    """
    for name, least, most in FLAVOR_FIELDS:
        value = getattr(flavor, name, None)
        if value in (None, "") and name in ("ephemeral_gb", "swap"):
            continue
        if isinstance(value, str) and value.isascii() and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise driver_errors.InvalidFlavor(
                flavor=getattr(flavor, "name", None), field=name,
                reason="must be a whole number, not %r" % (value,))
        if not least <= value <= most:
            raise driver_errors.InvalidFlavor(
                flavor=getattr(flavor, "name", None), field=name,
                reason="is %d; it must be from %d to %d" % (value, least, most))


def check_image_fits(flavor, image_bytes):
    """Raise FlavorDiskSmallerThanImage when the image is larger than the
    flavor's root disk (a root_gb of 0 takes the image's own size)."""
    root_bytes = int(flavor.root_gb) * GiB
    if image_bytes and root_bytes and int(image_bytes) > root_bytes:
        raise driver_errors.FlavorDiskSmallerThanImage(
            flavor_size=root_bytes, image_size=int(image_bytes))


def wants_configdrive(instance, image):
    """Nova's rule: the instance asks for one, or the image makes it mandatory."""
    if image.properties.get("img_config_drive") == "mandatory":
        return True
    return str(instance.config_drive or "").lower() not in ("", "false", "0", "none")


def configdrive_request(instance, files, user_data, vifs, admin_password):
    """The ``generate_configdrive`` arguments of a spawn, checked against the
    interface now, so a request the agent would refuse (too many files, say)
    is refused before any disk is made."""
    args = {
        "instance_uuid": instance.uuid,
        "metadata": instance_metadata.build_meta_data(instance, files),
        "user_data": user_data,
        "network_data": netinfo.network_data(vifs),
        "vendor_data": None,
        "files": files,
        "admin_password": admin_password,
    }
    methods.validate("generate_configdrive", args)
    return args


# Stands in for the root VDI's uuid while a preconfigure request is checked
# before the VDI exists.
_NO_VDI_YET = "00000000-0000-0000-0000-000000000000"


def preconfigure_request(agent, instance, vifs):
    """The ``preconfigure_instance`` arguments of a ``flat_injected`` spawn
    (all but ``vdi_uuid``), checked against the interface now.

    As Nova's ``flat_injected``: the network configuration, the instance's
    SSH key and its metadata. An agent older than interface 1.1 takes the
    network configuration only; that is logged, and the key still reaches
    the guest through the config drive, if it has one. None when there is
    nothing to inject (as Nova, which then did not mount the image).
    """
    args = {
        "network_config": netinfo.interfaces(vifs),
        "files": None,
        "ssh_key": (instance.key_data or "").strip() or None,
        "metadata": {str(k): str(v) for k, v in (instance.metadata or {}).items()} or None,
    }
    need = methods.pin("preconfigure_instance", args)
    if not agent.can_send_version(need):
        LOG.warning("The agent speaks interface %s: the SSH key and metadata of %s are "
                    "not injected into its image (that needs %s)", agent.agent_version,
                    instance.uuid, need)
        args["ssh_key"] = args["metadata"] = None
    if all(value is None for value in args.values()):
        return None
    methods.validate("preconfigure_instance", dict(args, vdi_uuid=_NO_VDI_YET))
    return args


class Spawn:
    """The requests, the steps and the undo of one spawn, and what it made."""

    def __init__(self, conf, agent, session, on_step=None):
        self._conf = conf
        self.agent = agent
        self.session = session
        self.on_step = on_step
        self.steps = []
        self.vdi_uuids = []
        self.boot_files = []  # dom0 files of a split kernel, known before the VM
        # (vdi_ref, userdevice) of disks that are not the spawn's own, given
        # to its VM as well, never made or removed by it (a rescue's root).
        self.extra_disks = []
        self.vm_ref = None

    def plan(self, context, instance, image_meta, injected_files, admin_password,
             network_info):
        """Build and check every request of the spawn; returns a :class:`SpawnPlan`.

        Raises InvalidFlavor, InvalidNetworkInfo, NetworkNotFound,
        InvalidRequest, InstanceExists or FlavorDiskSmallerThanImage (when
        the image's declared size is too big), and nothing is made.
        """
        instance = objects.instance_from(instance)
        image = objects.image_meta_from(image_meta)
        check_flavor(instance.flavor)
        vifs = netinfo.parse(network_info)
        user_data = instance_metadata.decode_user_data(instance)
        files = instance_metadata.injected_files_list(injected_files)
        existing = vm_utils.find_vm(self.session, instance.uuid)
        if existing:
            raise driver_errors.InstanceExists(instance_uuid=instance.uuid, vm=existing)
        check_image_fits(instance.flavor, image.size)
        networks = vif_utils.networks_for(self.session, vifs,
                                          self._conf.xenserver.ovs_integration_bridge)
        configdrive = preconfigure = None
        if wants_configdrive(instance, image):
            configdrive = configdrive_request(instance, files, user_data, vifs, admin_password)
        if self._conf.flat_injected:
            preconfigure = preconfigure_request(self.agent, instance, vifs)
        return SpawnPlan(context, instance, image, vifs, configdrive, preconfigure, networks)

    def run(self, plan):
        """Make the disks, the VM and its VBDs; start it. Raises on the first
        failure, leaving what it made for :meth:`undo`."""
        context, instance, image = plan.context, plan.instance, plan.image
        configdrive, preconfigure = plan.configdrive, plan.preconfigure
        # An earlier attempt's undo marked the instance given up; this one
        # wants its disks.
        vm_utils.forget_gave_up(self.session, instance.uuid)
        flavor = instance.flavor
        props = image.properties
        with self.step("fetch_image", image.disk_format) as detail:
            fetched = self.agent.fetch_image(
                instance_uuid=instance.uuid,
                image_id=str(image.id or instance.image_ref),
                disk_format=image.disk_format,
                kernel_id=props.get("kernel_id") or instance.kernel_id or None,
                ramdisk_id=props.get("ramdisk_id") or instance.ramdisk_id or None,
                auth_token=getattr(context, "auth_token", None))
            vdis = {}
            for vdi in fetched["vdis"]:
                if vdi.get("uuid"):  # a kernel copied to dom0 keeps no VDI
                    self.vdi_uuids.append(vdi["uuid"])
                if vdi.get("path"):
                    self.boot_files.append(vdi["path"])
                vdis[vdi["type"]] = vdi
            root = vdis["root"]
            detail.append(_size(root["size_bytes"]))

        check_image_fits(flavor, root["size_bytes"])
        if int(flavor.root_gb) * GiB > int(root["size_bytes"]):
            with self.step("auto_configure_disk", "root") as detail:
                grown = self.agent.auto_configure_disk(
                    vdi_uuid=root["uuid"], new_gb=int(flavor.root_gb),
                    instance_uuid=instance.uuid)
                root = dict(root, **grown)
                detail.append(_size(root["size_bytes"]))
        if preconfigure is not None:
            # flat_injected: the driver's init_host refuses it in independent
            # mode, so the agent here can mount the image.
            what = [path for arg, path in methods.PRECONFIGURE_PLACES
                    if preconfigure[arg] is not None]
            with self.step("preconfigure_instance", ", ".join(what)) as detail:
                done = self.agent.preconfigure_instance(
                    vdi_uuid=root["uuid"], instance_uuid=instance.uuid, **preconfigure)
                if done.get("skipped"):
                    # Nova's rule: a non-Linux image boots without it.
                    LOG.warning("Nothing injected into the image of %s: %s",
                                instance.uuid, done["skipped"])
                    detail.append("skipped")

        disks = [("root", root, vm_utils.USERDEVICE_ROOT, True, False)]
        if int(flavor.swap or 0) > 0:
            with self.step("generate_disk", "swap") as detail:
                swap = self.agent.generate_disk(
                    instance_uuid=instance.uuid, kind="swap", size_mb=int(flavor.swap),
                    fs_type="swap", label="swap")
                self.vdi_uuids.append(swap["uuid"])
                detail.append(_size(swap["size_bytes"]))
            disks.append(("swap", swap, vm_utils.USERDEVICE_SWAP, False, False))
        if int(flavor.ephemeral_gb or 0) > 0:
            fs_type = self._conf.default_ephemeral_format
            with self.step("generate_disk", "ephemeral " + fs_type) as detail:
                ephemeral = self.agent.generate_disk(
                    instance_uuid=instance.uuid, kind="ephemeral",
                    size_mb=int(flavor.ephemeral_gb) * 1024, fs_type=fs_type,
                    label="ephemeral0")
                self.vdi_uuids.append(ephemeral["uuid"])
                detail.append(_size(ephemeral["size_bytes"]))
            disks.append(("ephemeral", ephemeral, vm_utils.USERDEVICE_EPHEMERAL, False, False))
        if configdrive is not None:
            with self.step("generate_configdrive", "config-2") as detail:
                drive = self.agent.generate_configdrive(**configdrive)
                self.vdi_uuids.append(drive["uuid"])
                detail.append(_size(drive["size_bytes"]))
            disks.append(("configdrive", drive, vm_utils.USERDEVICE_CONFIGDRIVE, False, True))

        session = self.session
        with self.step("VM.create", vm_utils.vm_mode_for(image)) as detail:
            self.vm_ref = vm_utils.create_vm(
                session, instance, flavor, vm_utils.vm_mode_for(image))
            self._set_boot_files(session, self.vm_ref, vdis)
            detail.append("%d MiB, %s vCPU" % (flavor.memory_mb, flavor.vcpus))
        with self.step("VBD.create", "%d disks" % len(disks)):
            for _name, vdi, userdevice, bootable, read_only in disks:
                vm_utils.create_vbd(session, self.vm_ref,
                                    vm_utils.vdi_ref(session, vdi["uuid"]),
                                    userdevice, bootable=bootable, read_only=read_only)
        for vdi_ref, userdevice in self.extra_disks:
            vm_utils.create_vbd(session, self.vm_ref, vdi_ref, userdevice)
        if plan.vifs:
            with self.step("VIF.create", "%d VIFs" % len(plan.vifs)):
                vif_utils.plug(session, self.vm_ref, plan.vifs, plan.networks, running=False)
        with self.step("VM.start", instance.name):
            vm_utils.start(session, self.vm_ref)

    def _set_boot_files(self, session, vm_ref, vdis):
        """Boot a split-kernel image with the files the agent copied into
        dom0, and mark them on the VM, which destroy reads them from."""
        for kind, field in (("kernel", "PV_kernel"), ("ramdisk", "PV_ramdisk")):
            path = (vdis.get(kind) or {}).get("path")
            if path:
                # A kernel from dom0 boots directly: no bootloader reads the disk.
                session.call("VM.set_PV_bootloader", vm_ref, "")
                session.call("VM.set_" + field, vm_ref, path)
                session.call("VM.add_to_other_config", vm_ref,
                             *marks.vm_boot_file_mark(kind, path))

    @contextlib.contextmanager
    def step(self, name, what=""):
        """Time a step; the body may append words to the yielded detail list."""
        detail = [what] if what else []
        started = time.monotonic()
        try:
            yield detail
        finally:
            step = SpawnStep(name, time.monotonic() - started, ", ".join(detail))
            self.steps.append(step)
            if self.on_step is not None:
                self.on_step(step)

    def undo(self, instance_uuid):
        """Remove the VM, its VBDs and the instance's VDIs; never raises."""
        boot_files = list(self.boot_files)
        if self.vm_ref is not None:
            try:
                boot_files += [path for path in boot_files_of(self.session, self.vm_ref)
                               if path not in boot_files]
                vm_utils.destroy_vm(self.session, self.vm_ref)
            except Exception:  # noqa: BLE001 -- the undo goes on whatever failed
                LOG.exception("Could not remove VM of %s", instance_uuid)
        destroy_disks(self.agent, self.session, instance_uuid, self.vdi_uuids, boot_files)


def destroy_disks(agent, session, instance_uuid, vdi_uuids, boot_files=()):
    """Agent's destroy_vdis first; then XAPI directly for anything left.

    Only the instance's own disks go: VDIs tagged with its uuid. Anything
    else named (a volume attached to its VM, say) is left alone, by both
    passes. The second pass finds VDIs by their instance tag, so disks the
    agent was still making when it died (or when the call timed out) go too.
    """
    try:
        own = {rec["uuid"] for rec in vm_utils.tagged_vdis(session, instance_uuid).values()}
    except Exception:  # noqa: BLE001 -- the sweep below reports XAPI's trouble
        LOG.exception("Could not list the VDIs of %s", instance_uuid)
        own = set()
    for vdi_uuid in set(vdi_uuids).difference(own):
        LOG.info("VDI %s of %s is not one of its own disks (a volume?); leaving it",
                 vdi_uuid, instance_uuid)
    vdi_uuids = [u for u in vdi_uuids if u in own] + sorted(own.difference(vdi_uuids))
    for start in range(0, len(vdi_uuids), DESTROY_VDIS_BATCH):
        batch = vdi_uuids[start:start + DESTROY_VDIS_BATCH]
        try:
            agent.destroy_vdis(vdi_uuids=list(batch))
        except Exception as e:  # noqa: BLE001 -- a dead agent must not stop the undo
            LOG.warning("Agent could not destroy VDIs of %s (%s); removing them "
                        "through XAPI", instance_uuid, e)
    try:
        swept = vm_utils.sweep_instance_vdis(session, instance_uuid)
        if swept:
            LOG.info("Removed %d leftover VDI(s) of %s through XAPI", swept, instance_uuid)
    except Exception:  # noqa: BLE001 -- report it; the caller's error matters more
        LOG.exception("Could not sweep VDIs of %s", instance_uuid)
    if boot_files:
        _remove_boot_files(agent, instance_uuid, list(boot_files))


def _remove_boot_files(agent, instance_uuid, paths):
    """dom0 boot files go through the agent (disk work); never raises."""
    need = methods.METHODS["remove_boot_files"].since
    if not agent.can_send_version(need):
        LOG.warning("The agent speaks interface %s, older than %s: the boot files %s of "
                    "%s stay in dom0", agent.agent_version, need, ", ".join(paths),
                    instance_uuid)
        return
    try:
        agent.remove_boot_files(paths=paths)
    except Exception:  # noqa: BLE001 -- as above: the undo goes on
        LOG.exception("Could not remove the boot files %s of %s from dom0",
                      ", ".join(paths), instance_uuid)


def boot_files_of(session, vm_ref):
    """Files in dom0 that a split-kernel VM boots from (removed with it)."""
    return marks.vm_boot_files(session.call("VM.get_other_config", vm_ref))


def _size(size_bytes):
    size = int(size_bytes)
    if size >= GiB and size % GiB == 0:
        return "%d GiB" % (size // GiB)
    return "%d MiB" % (size // (1024 * 1024))
