"""Errors the driver raises itself (the agent's arrive as ``rpc.exceptions``).

They derive from :class:`rpc.exceptions.NovaXenSplitError`, so a caller can
catch every error of the project with one class; their names and messages
follow Nova's exceptions of the same meaning.
"""

from rpc import exceptions


class InstanceNotFound(exceptions.NovaXenSplitError):
    msg_fmt = "Instance %(instance_uuid)s could not be found on this hypervisor."


class InstanceUserDataTooLarge(exceptions.NovaXenSplitError):
    msg_fmt = ("User data of instance %(instance_uuid)s is %(length)d bytes once "
               "decoded; the limit is %(maxsize)d bytes.")


class InstanceUserDataMalformed(exceptions.NovaXenSplitError):
    msg_fmt = "User data of instance %(instance_uuid)s is not base64: %(reason)s"


class FlavorDiskSmallerThanImage(exceptions.NovaXenSplitError):
    msg_fmt = ("Flavor's disk is too small for requested image. Flavor disk "
               "is %(flavor_size)d bytes, image is %(image_size)d bytes.")


class InvalidFlavor(exceptions.NovaXenSplitError):
    msg_fmt = "Flavor %(flavor)s cannot be booted: %(field)s %(reason)s"


class InvalidNetworkInfo(exceptions.NovaXenSplitError):
    msg_fmt = "Invalid network information: %(field)s %(reason)s"


class InstanceExists(exceptions.NovaXenSplitError):
    msg_fmt = "Instance %(instance_uuid)s already exists on this hypervisor as %(vm)s."


class AgentStartupFailed(exceptions.NovaXenSplitError):
    """init_host could not get a usable agent; the driver must not take work."""

    msg_fmt = "The agent for host %(host)s is not usable: %(reason)s"



class NetworkNotFound(exceptions.NovaXenSplitError):
    msg_fmt = ("No XAPI network has bridge or name %(bridge)s, needed by VIF %(vif)s "
               "(its network's bridge, else [xenserver] ovs_integration_bridge).")
