"""XenSplitDriver: a Nova-shaped compute driver that is a thin RPC client.

The driver owns the VM lifecycle through XAPI (records, VBDs, power) and hands
every step that touches a disk's contents to the agent of its hypervisor
through :class:`rpc.client.AgentAPI`. Method names and arguments are Nova's
``ComputeDriver``'s, so the code reads as a Nova developer expects; Nova need
not be installed (see :mod:`nova_xen_split.objects`).

A spawn either finishes with a running VM or leaves nothing behind: whatever
step fails, the VM, its VBDs and every VDI made for the instance are removed
before the error is raised, and an error of the agent surfaces unchanged.
"""

import collections
import logging
import time

from nova_xen_split import driver_errors, netinfo, objects, rescue, resize, vifs, vm_utils
from nova_xen_split import snapshot as snapshot_mod
from nova_xen_split import spawn as spawn_mod
from nova_xen_split.xenhost import conf as nxs_conf
from nova_xen_split.xenhost import marks, xapi
from rpc import exceptions, methods

LOG = logging.getLogger(__name__)

GiB = 1024 ** 3
SpawnStep = spawn_mod.SpawnStep
# The oldest interface this driver works with; an agent with another major
# version, or an older minor one, cannot serve it (AgentAPI.check_version
# refuses it). What a newer agent adds (1.1: preconfigure_instance's ssh_key
# and metadata) is used only with an agent that speaks it.
REQUIRED_AGENT_VERSION = "1.0"

InstanceInfo = collections.namedtuple("InstanceInfo", ["state", "internal_id"])


class XenSplitDriver:
    """The compute driver for one hypervisor and its agent.

    :param conf: a ``ConfigOpts`` with :func:`nova_xen_split.xenhost.conf.register_opts` done.
    :param agent: an ``AgentAPI`` (default: one for ``[DEFAULT] host``).
    :param session: a logged-in :class:`XapiSession` (default: from ``[xenserver]``).
    :param on_step: called with a :data:`SpawnStep` after each spawn step.
    """

    capabilities = {
        "has_imagecache": True,
        "supports_evacuate": False,
        "supports_attach_interface": False,
        "supports_device_tagging": False,
    }

    def __init__(self, conf, virtapi=None, agent=None, session=None, on_step=None):
        self._conf = conf
        self.virtapi = virtapi
        self._agent = agent
        self._session = session
        self._agent_info = None
        self.on_step = on_step
        self.last_spawn_steps = []

    # -- collaborators --------------------------------------------------------

    @property
    def agent(self):
        if self._agent is None:
            from rpc import client  # the driver's only import of the wire
            self._agent = client.AgentAPI(self._conf, host=self._conf.host)
        return self._agent

    @property
    def session(self):
        if self._session is None:
            # Calls such as VM.clean_shutdown run as long as the guest takes:
            # bounded like the agent's long calls, not by the login's timeout.
            self._session = xapi.session_from_conf(
                self._conf, call_timeout=self._conf.agent.long_rpc_timeout)
        return self._session

    @property
    def agent_mode(self):
        return self._describe()["mode"]

    def _describe(self):
        if self._agent_info is None:
            self._agent_info = self.agent.describe()
        return self._agent_info

    def cleanup_host(self, host):
        """Release the agent client and the XAPI session."""
        if self._agent is not None:
            self._agent.close()
            self._agent = None
        if self._session is not None:
            self._session.logout()
            self._session = None

    # -- startup --------------------------------------------------------------

    def init_host(self, host):
        """Find the agent, check what it speaks and refuse what its mode cannot serve.

        Waits up to ``[agent] startup_timeout`` for ``describe()``. Raises
        :class:`AgentStartupFailed` when the agent does not answer,
        :class:`VersionTooOld` when it speaks an older interface,
        :class:`NotSupportedWithOption` for options its mode cannot serve.
        """
        timeout = self._conf.agent.startup_timeout
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = self._check_version_within(deadline)
                break
            except (exceptions.AgentUnavailable, OSError) as e:
                if time.monotonic() >= deadline:
                    raise driver_errors.AgentStartupFailed(
                        host=host,
                        reason="no answer to describe() within %ss "
                        "([agent] startup_timeout); is nova-xen-split-agent "
                        "running for this host? Last error: %s" % (timeout, e)) from None
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        # What the agent's backend cannot serve, from what it published.
        for option, capability in nxs_conf.options_refused(self._conf,
                                                           info.get("capabilities")):
            raise exceptions.NotSupportedWithOption(
                operation="%s (the agent runs in %s mode: %s)" % (
                    methods.CAPABILITIES[capability], info.get("mode"),
                    info.get("limitation") or "it does not publish this capability"),
                option=option)
        self._agent_info = info
        self.session  # noqa: B018 -- log in now: XAPI trouble must stop startup too
        LOG.info("Agent for host %s runs in %s mode (VM %s, hypervisor host %s, "
                 "interface %s)", host, info.get("mode"), info.get("vm_uuid"),
                 info.get("host_uuid"), info.get("version"))
        return info

    def _check_version_within(self, deadline):
        """``check_version()``, its wait bounded by the startup deadline.

        A single call waits ``[agent] rpc_timeout``; on a broker with no agent
        that alone could outlast the startup timeout, so it is lowered for
        the duration of the call.
        """
        agent_opts = self._conf.agent
        previous = agent_opts.rpc_timeout
        remaining = max(0.1, deadline - time.monotonic())
        if remaining >= previous:
            return self.agent.check_version(need=REQUIRED_AGENT_VERSION)
        self._conf.set_override("rpc_timeout", remaining, group="agent")
        try:
            return self.agent.check_version(need=REQUIRED_AGENT_VERSION)
        finally:
            self._conf.set_override("rpc_timeout", previous, group="agent")

    # -- spawn ----------------------------------------------------------------

    def spawn(self, context, instance, image_meta, injected_files, admin_password,
              allocations, network_info=None, block_device_info=None):
        """Boot an instance: disks through the agent, the VM through XAPI.

        Every request check happens before any disk is made. On failure the
        VM, its VBDs and the instance's VDIs are removed, then the error is
        raised (an agent error unchanged).
        """
        job = spawn_mod.Spawn(self._conf, self.agent, self.session, self.on_step)
        plan = job.plan(context, instance, image_meta, injected_files, admin_password,
                        network_info)
        self.last_spawn_steps = job.steps
        try:
            job.run(plan)
        except BaseException as e:
            LOG.warning("Spawn of %s failed (%s: %s); removing what was made",
                        plan.instance.uuid, type(e).__name__, e)
            with job.step("cleanup", "after %s" % type(e).__name__):
                job.undo(plan.instance.uuid)
            raise

    # -- lifecycle --------------------------------------------------------------

    def _vm_ref(self, instance):
        uuid = objects.instance_from(instance).uuid
        vm_ref = vm_utils.find_vm(self.session, uuid)
        if vm_ref is None:
            raise driver_errors.InstanceNotFound(instance_uuid=uuid)
        return vm_ref

    def destroy(self, context, instance, network_info=None, block_device_info=None,
                destroy_disks=True, destroy_secrets=True):
        """Remove the instance's VM, VBDs and (with destroy_disks) its VDIs.

        An instance without a VM is not an error (Nova's destroy is idempotent);
        its tagged VDIs are still removed.
        """
        instance = objects.instance_from(instance)
        rescue.remove(self, instance.uuid)
        vm_ref = vm_utils.find_vm(self.session, instance.uuid)
        vdi_uuids, boot_files = [], []
        if vm_ref is None:
            LOG.warning("Instance %s has no VM on this hypervisor", instance.uuid)
        else:
            boot_files = spawn_mod.boot_files_of(self.session, vm_ref)
            vdi_uuids = vm_utils.destroy_vm(self.session, vm_ref)
        if destroy_disks:
            spawn_mod.destroy_disks(self.agent, self.session, instance.uuid, vdi_uuids,
                                    boot_files)

    def list_instances(self):
        """Names of the instances' VMs on this hypervisor."""
        return sorted(rec["name_label"] for rec in vm_utils.instance_vms(self.session).values())

    def list_instance_uuids(self):
        return sorted(marks.vm_instance(rec["other_config"])
                      for rec in vm_utils.instance_vms(self.session).values())

    def instance_exists(self, instance):
        return vm_utils.find_vm(self.session, objects.instance_from(instance).uuid) is not None

    def get_info(self, instance, use_cache=True):
        """``InstanceInfo(state, internal_id)`` (of its rescue VM while it
        is rescued); raises InstanceNotFound."""
        vm_ref = rescue.rescue_vm(self.session, objects.instance_from(instance).uuid) or \
            self._vm_ref(instance)
        return InstanceInfo(vm_utils.power_state(self.session, vm_ref), vm_ref)

    def power_off(self, instance, timeout=0, retry_interval=0):
        """Shut down: cleanly when given a timeout (Nova's contract), else hard."""
        vm_ref = self._vm_ref(instance)
        if timeout:
            vm_utils.clean_shutdown(self.session, vm_ref)
        else:
            vm_utils.hard_shutdown(self.session, vm_ref)

    def power_on(self, context, instance, network_info, block_device_info=None,
                 accel_info=None):
        vm_ref = self._vm_ref(instance)
        if vm_utils.power_state(self.session, vm_ref) != vm_utils.RUNNING:
            vm_utils.start(self.session, vm_ref)

    def reboot(self, context, instance, network_info, reboot_type,
               block_device_info=None, bad_volumes_callback=None, accel_info=None):
        """SOFT: clean reboot (hard if the guest cannot); HARD: hard reboot."""
        vm_ref = self._vm_ref(instance)
        session = self.session
        if vm_utils.power_state(session, vm_ref) != vm_utils.RUNNING:
            vm_utils.start(session, vm_ref)
            return
        method = "VM.clean_reboot" if reboot_type == "SOFT" else "VM.hard_reboot"
        try:
            session.call(method, vm_ref)
        except exceptions.XapiFailure as e:
            if e.code not in ("MESSAGE_METHOD_UNKNOWN", "VM_MISSING_PV_DRIVERS"):
                raise
            # A host (or guest) that cannot reboot in place: stop and start.
            vm_utils.hard_shutdown(session, vm_ref)
            vm_utils.start(session, vm_ref)

    def snapshot(self, context, instance, image_id, update_task_state):
        """Snapshot the instance's root disk into image ``image_id`` (made by
        Nova, ``queued``): ``VDI.snapshot`` through XAPI, then the agent
        uploads it as a VHD tarball (``disk_format`` vhd, ``container_format``
        ovf). Task states: ``image_pending_upload`` → ``image_uploading``.
        The snapshot VDI is destroyed after; a failed upload leaves no image.
        """
        instance = objects.instance_from(instance)
        snapshot_mod.snapshot(self._conf, self.agent, self.session, instance,
                              self._vm_ref(instance), image_id,
                              getattr(context, "auth_token", None), update_task_state)

    def rescue(self, context, instance, network_info, image_meta, rescue_password,
               block_device_info=None):
        """Boot the rescue image with the instance's root as its disk 1."""
        rescue.rescue(self, context, instance, network_info, image_meta, rescue_password)

    def unrescue(self, context, instance):
        """Remove the rescue VM; start the instance's own VM again."""
        rescue.unrescue(self, instance)

    # -- resize on this host (nova_xen_split.resize) -----------------------------

    def migrate_disk_and_power_off(self, context, instance, dest, flavor, network_info,
                                   block_device_info=None, timeout=0, retry_interval=0):
        """Shut down and keep the VM as the resize's original; a resize down
        the agent cannot serve is refused first, with nothing changed."""
        return resize.migrate_disk_and_power_off(self, instance, flavor, timeout,
                                                 retry_interval)

    def finish_migration(self, context, migration, instance, disk_info, network_info,
                         image_meta, resize_instance, allocations, block_device_info=None,
                         power_on=True):
        """Boot the instance, with its new flavor, from copies of the kept disks."""
        resize.finish_migration(self, instance, network_info, power_on)

    def confirm_migration(self, context, migration, instance, network_info):
        """Remove the kept original VM and its disks."""
        resize.confirm_migration(self, instance)

    def finish_revert_migration(self, context, instance, network_info, migration,
                                block_device_info=None, power_on=True):
        """Make the kept original the instance's VM again."""
        resize.finish_revert_migration(self, instance, power_on)

    def get_console_output(self, context, instance):
        """The tail of the running instance's console log (bytes), read in
        dom0 by the agent. Raises ConsoleLogUnavailable, or VersionTooOld
        with an agent older than interface 1.4."""
        uuid = objects.instance_from(instance).uuid
        return self.agent.get_console_log(instance_uuid=uuid)["log"]

    # -- networking -------------------------------------------------------------

    def plug_vifs(self, instance, network_info):
        """Give the instance's VM the VIFs of ``network_info`` it lacks
        (plugged at once when it runs). Raises InvalidNetworkInfo or
        NetworkNotFound before any VIF is made."""
        parsed = netinfo.parse(network_info)
        networks = vifs.networks_for(self.session, parsed,
                                     self._conf.xenserver.ovs_integration_bridge)
        vm_ref = self._vm_ref(instance)
        running = vm_utils.power_state(self.session, vm_ref) == vm_utils.RUNNING
        vifs.plug(self.session, vm_ref, parsed, networks, running)

    def unplug_vifs(self, instance, network_info):
        """Remove the VM's VIFs of ``network_info``; an instance without a VM
        has none to remove."""
        vm_ref = vm_utils.find_vm(self.session, objects.instance_from(instance).uuid)
        if vm_ref is not None:
            vifs.unplug(self.session, vm_ref, netinfo.parse(network_info))

    # -- the image cache -----------------------------------------------------------

    def _image_cache_served(self, what):
        need = methods.METHODS["cache_image"].since
        if self.agent.can_send_version(need):
            return True
        LOG.warning("The agent speaks interface %s, older than %s: %s is not done",
                    self.agent.agent_version, need, what)
        return False

    def cache_image(self, context, image_id):
        """Nova's image pre-caching: fill the image's cache VDI on this host.

        True when this call fetched the image, False when it was cached
        already or is not cached here (``[xenserver] cache_images``).
        Raises NotImplementedError for an agent older than interface 1.6
        (Nova's answer for a driver without it), ImageFetchFailed.
        """
        if not self._image_cache_served("caching image %s" % image_id):
            raise NotImplementedError("the agent cannot cache images")
        result = self.agent.cache_image(image_id=str(image_id),
                                        auth_token=getattr(context, "auth_token", None))
        if result.get("uuid") is None:
            LOG.info("Image %s is not cached: %s", image_id, result.get("reason"))
        return bool(result["fetched"])

    def manage_image_cache(self, context, all_instances):
        """Nova's image cache manager: remove the cache VDIs that no
        instance's VDI was cloned from and that went unused for ``[image_cache]
        remove_unused_original_minimum_age_seconds``, when ``[image_cache]
        remove_unused_base_images`` says so. Which cache VDIs are in use is
        read from the VDIs themselves (their clone marks), so instances of
        other hosts sharing the SR count too."""
        options = self._conf.image_cache
        if not options.remove_unused_base_images:
            return None
        if not self._image_cache_served("removing unused image cache VDIs"):
            return None
        result = self.agent.manage_image_cache(
            min_age_seconds=int(options.remove_unused_original_minimum_age_seconds))
        LOG.info("Image cache: %(removed)d unused VDI(s) removed, %(kept_in_use)d in use, "
                 "%(kept_recent)d used recently", result)
        return result

    # -- aggregates -------------------------------------------------------------

    def add_to_aggregate(self, context, aggregate, host, **kwargs):
        """Joining a XenServer pool needs a local VM on the host; refused otherwise."""
        self._refuse_pool_change("Adding host %s to" % host)

    def remove_from_aggregate(self, context, aggregate, host, **kwargs):
        self._refuse_pool_change("Removing host %s from" % host)

    def _refuse_pool_change(self, action):
        info = self._describe()
        if not (info.get("capabilities") or {}).get("pool_join"):
            raise exceptions.UnsupportedInIndependentMode(
                feature="%s a XenServer pool aggregate" % action,
                option="%s, and a pool join moves the host's VMs" % (
                    info.get("limitation") or "the agent does not publish pool_join"))
        raise NotImplementedError("Pool aggregates are not implemented in interface %s"
                                  % methods.VERSION)
