"""Configuration options shared by the driver and the agent.

Every option lives here, with help text, so that ``oslo-config-generator``
(``tox -e genconfig``) writes them all into ``etc/nova-xen-split.conf.sample``.
Modules read options from the ``ConfigOpts`` they are handed; nothing reads a
global behind the caller's back, so tests can run several configurations in
one process.
"""

import socket

from oslo_config import cfg

DEFAULT_OPTS = [
    cfg.StrOpt(
        "host",
        default=socket.gethostname(),
        sample_default="<hostname>",
        help="Name of the hypervisor this driver/agent pair serves. It is the "
        "RPC server name of the agent, so one message broker can carry "
        "any number of pairs: each driver only reaches its own agent.",
    ),
    cfg.BoolOpt(
        "flat_injected",
        default=False,
        help="Write into the guest image before boot what Nova's "
        "flat_injected wrote, into the root disk's first partition: the "
        "instance's addresses as /etc/network/interfaces (Debian's ifupdown), "
        "its SSH key added to /root/.ssh/authorized_keys, and its metadata "
        "as /meta.js (JSON). Needs the image to be mounted, so it is refused "
        "at startup in independent mode.",
    ),
    cfg.StrOpt(
        "default_ephemeral_format",
        default="ext4",
        choices=["ext3", "ext4", "vfat"],
        help="Filesystem for ephemeral disks when the flavor does not name one.",
    ),
    cfg.StrOpt(
        "state_path",
        default="/var/lib/nova-xen-split",
        help="Top-level directory for the agent's and driver's runtime state.",
    ),
]

XENSERVER_OPTS = [
    cfg.StrOpt(
        "connection_url",
        default="http://127.0.0.1",
        help="URL of the XAPI endpoint of the hypervisor (its pool master), "
        "e.g. https://xenserver.example.org.",
    ),
    cfg.StrOpt(
        "connection_username",
        default="root",
        help="User name for the XAPI session.",
    ),
    cfg.StrOpt(
        "connection_password",
        secret=True,
        help="Password for the XAPI session. Never logged.",
    ),
    cfg.IntOpt(
        "login_timeout",
        default=10,
        min=1,
        help="Seconds to wait for XAPI to accept a login before the service "
        "refuses to start.",
    ),
    cfg.StrOpt(
        "independent_compute",
        default="auto",
        choices=[
            ("auto", "Detect: in_guest when this machine is a VM on the host "
             "it serves, else independent."),
            ("true", "Always independent: all disk work goes to dom0 plugins."),
            ("false", "Always in_guest: fails at startup when no local VM "
             "on the served host can be found."),
        ],
        help="How the agent touches disks.",
    ),
    cfg.BoolOpt(
        "check_host",
        default=False,
        help="Check that the agent's VM is resident on the host it serves "
        "before every operation. Meaningless without a local VM, so "
        "refused at startup in independent mode.",
    ),
    cfg.StrOpt(
        "vm_uuid_file",
        default="/sys/hypervisor/uuid",
        help="File holding the uuid of the VM this process runs in, as a Xen "
        "guest kernel exposes it.",
    ),
    cfg.ListOpt(
        "xenstore_read_command",
        default=["xenstore-read"],
        help="Command (argument list) used to read the VM path from xenstore "
        "when vm_uuid_file cannot be read.",
    ),
    cfg.StrOpt(
        "device_dir",
        default="/dev",
        help="Directory where block devices of VBDs plugged into this VM "
        "appear (in_guest backend).",
    ),
    cfg.IntOpt(
        "block_device_creation_timeout",
        default=10,
        min=1,
        max=3600,
        help="Seconds to wait for a plugged VBD's block device to appear "
        "(at most 3600, what the dom0 plugin allows).",
    ),
    cfg.IntOpt(
        "vbd_unplug_retries",
        default=10,
        min=0,
        help="How often an unplug that XAPI rejects as transient is retried, "
        "one second apart.",
    ),
    cfg.StrOpt(
        "ovs_integration_bridge",
        default="br-int",
        help="Bridge (or name) of the XAPI network a VIF joins when its network "
        "information names no bridge: the Open vSwitch integration bridge "
        "Neutron's agent manages (the old XenAPI driver's option of the same "
        "name). Driver only.",
    ),
    cfg.StrOpt(
        "image_plugin",
        default="vhd_images.py",
        help="Name of the dom0 plugin that fetches VHD image chains.",
    ),
    cfg.StrOpt(
        "partition_plugin",
        default="partition_utils.py",
        help="Name of the dom0 plugin that partitions and formats disks.",
    ),
    cfg.StrOpt(
        "cache_images",
        default="all",
        choices=[
            ("all", "Cache every image."),
            ("some", "Cache only images whose property cache_in_nova is true."),
            ("none", "Cache no image: every spawn downloads its image."),
        ],
        help="Keep one VDI per image in the SR (marked with the image's id and "
        "checksum) and give each new instance a VDI.clone of it, as the old "
        "XenAPI driver did: on XenServer's VHD SRs a clone is copy-on-write, "
        "so only the first spawn of an image on a host downloads it. Cache "
        "VDIs that no instance uses are removed by Nova's image cache manager "
        "([image_cache] remove_unused_base_images, "
        "remove_unused_original_minimum_age_seconds). Images with separate "
        "kernels or ramdisks, and ami images, are never cached.",
    ),
]

GLANCE_OPTS = [
    cfg.ListOpt(
        "api_servers",
        default=["http://127.0.0.1:9292"],
        help="Image service endpoints (http or https) the agent and dom0 "
        "fetch image data from.",
    ),
    cfg.IntOpt(
        "num_retries",
        default=0,
        min=0,
        help="How often a failed image download is retried on the next "
        "endpoint.",
    ),
    cfg.DictOpt(
        "file_url_mounts",
        default={},
        help="Image stores shared with the agent's host, as "
        "IMAGE_SERVICE_DIR:LOCAL_DIR pairs (the same directory, as the image "
        "service and as this host see it). When an image's record shows a "
        "file:// location under one of them (Glance's "
        "show_multiple_locations or show_image_direct_url), the agent reads "
        "the image from that file instead of downloading it: no HTTP, and "
        "the holes of a sparse image (Glance's filesystem store with "
        "filesystem_thin_provisioning = true) are skipped unread. A location "
        "that cannot be used (outside these directories, not a regular file, "
        "not the image's size) is logged and the image downloaded. Empty: "
        "always download.",
    ),
    cfg.BoolOpt(
        "verify_checksum",
        default=True,
        help="Check each downloaded image (raw downloads and the VHD tarballs "
        "the dom0 plugin fetches) against the image's multihash "
        "(os_hash_algo/os_hash_value of its record, which Glance computes "
        "since Rocky; SHA-512 unless Glance's hashing_algorithm says "
        "otherwise), as glanceclient checks Nova's downloads, or, for images "
        "without one, against the MD5 checksum the image service sends with "
        "the download (Content-MD5). A mismatch fails the fetch and leaves no "
        "VDI. MD5 and SHA-512 cost about one second of CPU per 600 MiB "
        "downloaded; SHA-256 on a CPU with SHA extensions less than half of "
        "that. An image read from a file location (file_url_mounts) is "
        "hashed beside the copy, against the same multihash, else the "
        "record's MD5 checksum; its holes are hashed as zeros, not read. An "
        "image without either is read unchecked, with a log line.",
    ),
]

AGENT_OPTS = [
    cfg.FloatOpt(
        "rpc_timeout",
        default=60.0,
        min=0.1,
        help="Seconds the driver waits for an answer to a short agent call.",
    ),
    cfg.FloatOpt(
        "long_rpc_timeout",
        default=1800.0,
        min=0.1,
        help="Seconds the driver waits for long agent calls (image fetches, "
        "disk copies).",
    ),
    cfg.IntOpt(
        "rpc_workers",
        default=8,
        min=1,
        max=256,
        help="Calls the agent serves at once; more wait for a free worker.",
    ),
    cfg.StrOpt(
        "socket_path",
        default="$state_path/agent.sock",
        help="Unix socket of the embedded transport, used when "
        "[DEFAULT] transport_url is unset or unix:///path.",
    ),
    cfg.StrOpt(
        "socket_group",
        help="Group allowed to connect to the agent's Unix socket (mode 0660). "
        "Unset: owner only (mode 0600).",
    ),
    cfg.FloatOpt(
        "startup_timeout",
        default=60.0,
        min=0.0,
        help="Seconds the driver's init_host waits for the agent to answer "
        "describe() before it refuses to start.",
    ),
    cfg.IntOpt(
        "progress_interval",
        default=5,
        min=1,
        help="Seconds between progress log lines of long transfers.",
    ),
    cfg.FloatOpt(
        "settle_interval",
        default=30.0,
        min=0.1,
        help="Seconds between the agent's settling rounds: it destroys what "
        "it could not destroy when it was due (XAPI was unreachable), its "
        "half-made VDIs that no operation is working on, and the VDIs of "
        "instances the driver gave up on.",
    ),
    cfg.StrOpt(
        "privsep_start_method",
        default="helper",
        choices=[
            ("helper", "Run privsep-helper through [agent] root_helper "
             "(production: the agent itself runs unprivileged)."),
            ("fork", "Fork the privileged daemon from the agent itself; only "
             "when the agent already runs as root (tests, containers)."),
        ],
        help="How the in_guest backend starts its oslo.privsep daemon, which "
        "runs the disk tools (partition, mkfs, grow, copy, mount).",
    ),
    cfg.StrOpt(
        "root_helper",
        default="sudo",
        help="Command (split like a shell would) put before privsep-helper "
        "when privsep_start_method = helper. Ignored when "
        "[nxs_agent_privileged] helper_command is set.",
    ),
    cfg.FloatOpt(
        "partition_wait_timeout",
        default=20.0,
        min=0.1,
        max=600.0,
        help="Seconds to wait for a new or changed partition to show up as "
        "a block device (udev works asynchronously); at most 600, what the "
        "dom0 plugin allows, which waits whole seconds (rounded up).",
    ),
    cfg.FloatOpt(
        "image_cache_wait_timeout",
        default=900.0,
        min=0.0,
        help="Seconds a fetch of an image waits while another fetch (of this "
        "agent, or of another agent on the same SR) fills that image's cache "
        "VDI. Past it, the fetch downloads the image for its instance alone.",
    ),
]

# Nova's own options ([image_cache], nova/conf/imagecache.py). Under
# nova-compute, Nova has registered them already and its definitions win;
# the agent and the tools register these, with Nova's names and defaults.
IMAGE_CACHE_OPTS = [
    cfg.BoolOpt(
        "remove_unused_base_images",
        default=True,
        help="Whether the periodic image cache manager removes image cache "
        "VDIs that no instance uses (Nova's option).",
    ),
    cfg.IntOpt(
        "remove_unused_original_minimum_age_seconds",
        default=24 * 3600,
        help="Seconds an unused image cache VDI must have gone without a "
        "clone before the image cache manager removes it (Nova's option).",
    ),
]


def register_opts(conf):
    """Register every option of the project on ``conf``."""
    conf.register_opts(DEFAULT_OPTS)
    conf.register_opts(XENSERVER_OPTS, group="xenserver")
    conf.register_opts(GLANCE_OPTS, group="glance")
    conf.register_opts(AGENT_OPTS, group="agent")
    register_nova_owned(conf, IMAGE_CACHE_OPTS, "image_cache")


def register_nova_owned(conf, opts, group):
    """Register options that Nova defines too, unless Nova has: its own
    definition (same name, maybe other help) stays and is read."""
    for opt in opts:
        try:
            conf.register_opt(opt, group=group)
        except cfg.DuplicateOptError:
            pass


def check_values(conf):
    """Read every option of the project once, so a value out of its range
    or of the wrong type is refused at startup (oslo.config checks a value
    only when it is read) with cfg's one-line error naming the option."""
    for group, opts in (("DEFAULT", DEFAULT_OPTS), ("xenserver", XENSERVER_OPTS),
                        ("glance", GLANCE_OPTS), ("agent", AGENT_OPTS),
                        ("image_cache", IMAGE_CACHE_OPTS)):
        section = conf if group == "DEFAULT" else conf[group]
        for opt in opts:
            section[opt.dest]


# Options that ask the agent's backend for a capability (the names of
# rpc.methods.CAPABILITIES that describe() publishes): the agent refuses to
# start, and the driver's init_host to take work, when one is set and the
# backend the agent chose has not got the capability.
OPTIONS_NEEDING = (
    ("DEFAULT", "flat_injected", "preconfigure_instance"),
    ("xenserver", "check_host", "check_host"),
)


def options_refused(conf, capabilities):
    """``[(option, capability)]`` of the options set in ``conf`` that the
    published ``capabilities`` ({name: bool}) cannot serve; ``option`` as
    an operator writes it (``[DEFAULT] flat_injected``). A capability an
    older agent does not publish counts as missing."""
    refused = []
    for group, name, capability in OPTIONS_NEEDING:
        value = conf[name] if group == "DEFAULT" else conf[group][name]
        if value and not (capabilities or {}).get(capability):
            refused.append(("[%s] %s" % (group, name), capability))
    return refused


# The section of the agent's oslo.privsep context (agent/privileged.py).
PRIVSEP_SECTION = "nxs_agent_privileged"


def list_opts():
    """The options for ``oslo-config-generator``."""
    from oslo_privsep import priv_context

    return [
        ("DEFAULT", DEFAULT_OPTS),
        ("xenserver", XENSERVER_OPTS),
        ("glance", GLANCE_OPTS),
        ("agent", AGENT_OPTS),
        ("image_cache", IMAGE_CACHE_OPTS),
        (PRIVSEP_SECTION, priv_context.OPTS),
    ]
