"""``AgentAPI``: the driver's side of the interface.

One method per remote call, each pinning the interface version that added
it, like Nova's ``compute/rpcapi.py``. Arguments are checked against
:data:`rpc.methods.METHODS` before anything is sent, so a bad request fails
here, at once, with the same ``InvalidRequest`` the agent would raise.
Remote errors come back as the typed exceptions of :mod:`rpc.exceptions`;
no answer in time is ``AgentUnavailable`` naming the host and method.
"""

from rpc import exceptions, methods, transports


class AgentAPI:
    """Client of the agent serving hypervisor ``host`` (default ``[DEFAULT] host``).

    ``conf`` must have the project's options registered
    (``nova_xen_split.xenhost.conf.register_opts``); oslo.messaging's are added here.

    Timeouts: ``[agent] long_rpc_timeout`` for the calls the method table
    marks long (image fetches, disk creation and copies), ``[agent]
    rpc_timeout`` for the rest. During a long call the agent must also show
    signs of life every ``rpc_timeout`` (RabbitMQ: call-monitor heartbeats;
    local socket: the connection stays open).
    """

    def __init__(self, conf, host=None):
        transports.register_opts(conf)
        self.conf = conf
        self.host = host or conf.host
        self.agent_version = None  # learnt by check_version()
        self._transport = transports.make_client(conf, self.host)

    def close(self):
        """Release the connection(s) to the agent."""
        self._transport.close()

    def _call(self, method, version, args, check=True):
        """Send one call pinned at ``version`` (``None``: what its
        arguments need, :func:`rpc.methods.pin`)."""
        if check:
            args = methods.validate(method, args)
        if version is None:
            version = methods.pin(method, args)
        try:
            methods.parse_version(version)
        except ValueError as e:
            raise exceptions.InvalidRequest(method=str(method)[:64], field="version",
                                            reason=str(e)) from None
        if not self.can_send_version(version):
            raise exceptions.VersionTooOld(host=self.host, method=method,
                                           have=self.agent_version, need=version)
        declared = methods.METHODS.get(method)
        timeout, monitor = self.conf.agent.rpc_timeout, None
        if declared is not None and declared.long:
            # As Nova does for its long calls: the agent must show signs of
            # life every rpc_timeout, so a dead one is not waited for for
            # the whole long timeout. oslo.messaging heartbeats every
            # int(monitor) / 2 seconds and not at all below one second.
            timeout = self.conf.agent.long_rpc_timeout
            monitor = self.conf.agent.rpc_timeout if self.conf.agent.rpc_timeout >= 2 else None
        reply = self._transport.call(method, version, args, timeout, monitor)
        if "error" in reply:
            raise exceptions.from_wire(reply["error"])
        return reply["result"]

    def check_version(self, need=None):
        """Ask the agent which interface it speaks; refuse if too old.

        Returns the ``describe()`` result. Raises ``VersionTooOld`` when the
        agent cannot serve ``need`` (default: this client's oldest method,
        i.e. the same major version). Afterwards every call needing a newer
        version than the agent's is refused without being sent.
        """
        description = self.describe()
        self.agent_version = description["version"]
        need = need or min((m.since for m in methods.METHODS.values()),
                           key=methods.parse_version)
        if not methods.version_serves(self.agent_version, need):
            raise exceptions.VersionTooOld(host=self.host, method="check_version",
                                           have=self.agent_version, need=need)
        return description

    def can_send_version(self, version):
        """Whether the agent serves calls pinned at ``version``: always,
        until :meth:`check_version` has learnt the agent's version (as
        oslo.messaging's ``can_send_version`` without a cap)."""
        return self.agent_version is None or methods.version_serves(self.agent_version,
                                                                    version)

    def describe(self):
        """Mode, local VM uuid, host uuid, interface version, capabilities."""
        return self._call("describe", "1.0", {})

    def fetch_image(self, instance_uuid, image_id, disk_format, kernel_id=None,
                    ramdisk_id=None, auth_token=None):
        """Make the VDIs of an image; returns ``{"vdis": [...]}``."""
        return self._call("fetch_image", "1.0", dict(
            instance_uuid=instance_uuid, image_id=image_id, disk_format=disk_format,
            kernel_id=kernel_id, ramdisk_id=ramdisk_id, auth_token=auth_token))

    def auto_configure_disk(self, vdi_uuid, new_gb, instance_uuid=None):
        """Grow the VDI's only partition and its filesystem to ``new_gb``
        (1.0; the instance whose VDI it is goes along to an agent of 1.3 on)."""
        return self._call("auto_configure_disk", None, dict(
            vdi_uuid=vdi_uuid, new_gb=new_gb, instance_uuid=self._if_served(instance_uuid)))

    def _if_served(self, instance_uuid):
        # Agents before 1.3 take no instance_uuid with a VDI; they are still
        # served, and check the VDI as theirs.
        return instance_uuid if self.can_send_version("1.3") else None

    def generate_disk(self, instance_uuid, kind, size_mb, fs_type, label):
        """Make a partitioned, formatted ephemeral or swap VDI."""
        return self._call("generate_disk", "1.0", dict(
            instance_uuid=instance_uuid, kind=kind, size_mb=size_mb, fs_type=fs_type,
            label=label))

    def generate_configdrive(self, instance_uuid, metadata, user_data=None,
                             network_data=None, vendor_data=None, files=(),
                             admin_password=None):
        """Build the config drive and upload it into a new VDI."""
        return self._call("generate_configdrive", "1.0", dict(
            instance_uuid=instance_uuid, metadata=metadata, user_data=user_data,
            network_data=network_data, vendor_data=vendor_data, files=list(files),
            admin_password=admin_password))

    def resize_disk(self, instance_uuid, vdi_uuid, new_gb):
        """Copy the VDI into a new, smaller one (resize down)."""
        return self._call("resize_disk", "1.0", dict(
            instance_uuid=instance_uuid, vdi_uuid=vdi_uuid, new_gb=new_gb))

    def preconfigure_instance(self, vdi_uuid, network_config=None, files=None,
                              ssh_key=None, metadata=None, instance_uuid=None):
        """Write network configuration, the SSH key, the metadata and files
        into the image (1.0; 1.1 when ``ssh_key`` or ``metadata`` is sent;
        the instance goes along to an agent of 1.3 on)."""
        return self._call("preconfigure_instance", None, dict(
            vdi_uuid=vdi_uuid, network_config=network_config, files=files,
            ssh_key=ssh_key, metadata=metadata, instance_uuid=self._if_served(instance_uuid)))

    def remove_boot_files(self, paths):
        """Remove kernel/ramdisk files the agent copied into dom0 (1.2)."""
        return self._call("remove_boot_files", "1.2", dict(paths=list(paths)))

    def upload_snapshot(self, instance_uuid, vdi_uuid, image_id, auth_token=None):
        """Upload a snapshot VDI of the instance into image ``image_id`` as a
        VHD tarball (1.5); returns ``{"image_id", "size_bytes"}``."""
        return self._call("upload_snapshot", "1.5", dict(
            instance_uuid=instance_uuid, vdi_uuid=vdi_uuid, image_id=image_id,
            auth_token=auth_token))

    def cleanup_attached_vdis(self):
        """Unplug and forget VBDs a crash left attached."""
        return self._call("cleanup_attached_vdis", "1.0", {})

    def get_console_log(self, instance_uuid, max_bytes=methods.MAX_CONSOLE_BYTES):
        """The tail of a running instance's console log: ``{"log": bytes,
        "truncated": bool}`` (1.4); ``ConsoleLogUnavailable`` when it has none."""
        return self._call("get_console_log", "1.4", dict(
            instance_uuid=instance_uuid, max_bytes=max_bytes))

    def cache_image(self, image_id, auth_token=None):
        """Fill the image's cache VDI unless it has one; ``{uuid, fetched}``."""
        return self._call("cache_image", "1.6", dict(image_id=image_id,
                                                     auth_token=auth_token))

    def manage_image_cache(self, min_age_seconds):
        """Remove unused cache VDIs; ``{removed, kept_in_use, kept_recent}``."""
        return self._call("manage_image_cache", "1.6",
                          dict(min_age_seconds=min_age_seconds))

    def destroy_vdis(self, vdi_uuids):
        """Destroy the VDIs the driver no longer needs."""
        return self._call("destroy_vdis", "1.0", dict(vdi_uuids=list(vdi_uuids)))
