"""The remote interface between the driver and the agent, declared once.

Like an ``oslo.privsep`` module, this file is the whole surface: the server
dispatches only the methods listed in :data:`METHODS` and checks every
argument against its declaration before any endpoint code runs. The client
uses the same table to fail early and to pick each call's timeout.

Versioning follows ``oslo.messaging``: a call pins the version that added
its method; a server speaking ``X.Y`` serves any call pinned at ``X.Z`` with
``Z <= Y``. Adding a method or an optional argument bumps the minor
version; anything else bumps the major. A call that sends an argument added
later than its method is pinned at that argument's version (:func:`pin`),
so a newer client still reaches an older server with every call that does
not need what is new.

History: 1.0 the first interface; 1.1 ``preconfigure_instance`` takes
``ssh_key`` and ``metadata`` (what Nova's ``flat_injected`` wrote besides
the network configuration); 1.2 ``remove_boot_files`` (the driver no
longer calls a dom0 plugin itself), and ``describe`` publishes the
``check_host`` and ``pool_join`` capabilities; 1.3 ``auto_configure_disk``
and ``preconfigure_instance`` take the ``instance_uuid`` whose VDI they may
touch (the agent refuses any other instance's); 1.4 ``get_console_log``
(the tail of a running instance's console log, read in dom0: Nova's
``get_console_output``); 1.5 ``upload_snapshot``
(a snapshot VDI of the instance's root into an image of the image service,
as a VHD tarball); 1.6 ``cache_image`` and
``manage_image_cache`` (Nova's image cache hooks: one cache VDI per image,
cloned for each root).
"""

import re

from rpc import exceptions
from rpc.schema import (
    MISSING, Arg, Bytes, Enum, GuestFiles, Int, JsonDict, List, Reject, Str, StrMap, Uuid,
    paths_overlap,
)

VERSION = "1.6"

# An image id is Glance's: the pattern of ``id`` in the image schema of
# glance/api/v2/images.py (a uuid, hex digits of either case), anchored at
# the very end as JSON Schema's "$" is. It goes into a URL path, so nothing
# else (".", "..", "/", "%2f") may reach the image service.
IMAGE_ID = (r"^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}"
            r"-([0-9a-fA-F]){12}\Z")
# One HTTP header value (X-Auth-Token): printable ASCII, no space, no CR/LF.
AUTH_TOKEN = r"^[\x21-\x7e]+\Z"
# A filesystem label per filesystem, as mkfs, mkswap and the dom0 plugin
# take it: never starting with "-" (mkfs would read an option), at most 16
# characters, and for FAT at most 11 and no ".". FS_LABEL is the widest.
FS_LABELS = {
    "ext3": r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,15}\Z",
    "ext4": r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,15}\Z",
    "swap": r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,15}\Z",
    "vfat": r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,10}\Z",
}
FS_LABEL = FS_LABELS["ext4"]
# The smallest generated disk: room for the 1 MiB partition gap and a filesystem.
MIN_DISK_MB = 4
MIB = 1024 * 1024
# One OpenSSH public key line (authorized_keys format): printable ASCII and
# spaces, no line break, so it can only ever add itself to the file.
SSH_KEY = r"^[\x21-\x7e][\x20-\x7e]*\Z"
SSH_KEY_KIND = Str(min_len=1, max_len=16384, pattern=SSH_KEY)
# Where preconfigure_instance writes its arguments in the guest (Nova's
# flat_injected places).
NETWORK_CONFIG_PATH = "/etc/network/interfaces"
AUTHORIZED_KEYS_PATH = "/root/.ssh/authorized_keys"
METADATA_PATH = "/meta.js"
PRECONFIGURE_PLACES = (("network_config", NETWORK_CONFIG_PATH),
                       ("ssh_key", AUTHORIZED_KEYS_PATH),
                       ("metadata", METADATA_PATH))


def _no_file_where_an_argument_goes(args):
    """A rule of ``preconfigure_instance``: no file lies where one of the
    other arguments sent is written."""
    placed = [(arg, path) for arg, path in PRECONFIGURE_PLACES if args[arg] is not None]
    for index, (name, _) in enumerate(args["files"] or ()):
        for arg, path in placed:
            if paths_overlap(name, path):
                return "files[%d]" % index, "overlaps %s, where %s goes" % (path, arg)
    return None


# What a backend can serve: describe() publishes {name: bool} for each, and
# the driver, nova-xen-split-status and the agent's own startup decide from
# that, never from the mode's name. The text names the feature in refusals.
CAPABILITIES = {
    "fetch_vhd": "Booting from VHD images",
    "fetch_raw": "Booting from raw images",
    "fetch_kernel_ramdisk": "Booting from separate kernel/ramdisk images",
    "auto_configure_disk": "Growing a root disk's partition and filesystem",
    "generate_disk": "Making swap and ephemeral disks",
    "generate_configdrive": "Making config drives",
    "resize_down": "Resizing a disk down",
    "preconfigure_instance": "Injecting network configuration, an SSH key and files "
                             "into an image",
    "check_host": "Checking that the agent's VM is resident on the served host",
    "pool_join": "Joining a XenServer pool aggregate",
}
# The most of a console log one call returns (what the dom0 plugin allows).
MAX_CONSOLE_BYTES = MIB
# A dom0 boot file (kernel or ramdisk) as the kernel plugin names it: an
# absolute path, no component starting with ".".
BOOT_FILE_PATH = r"^(/[A-Za-z0-9_][A-Za-z0-9_.-]*)+/(kernel|ramdisk)-[A-Za-z0-9_]{1,64}\Z"

_VERSION_RE = re.compile(r"^[0-9]{1,4}\.[0-9]{1,4}\Z")

# Injected files: [path inside the guest, contents] pairs. Nova's own
# quotas allow 5 files of 10 KiB by default; 64 files and 1 MiB in all leave
# operators room while bounding what one request makes the agent hold.
_FILES = GuestFiles(max_items=64, max_bytes=MIB, max_total_bytes=MIB)
# What the largest request may carry, with its encoding: the config drive's
# files (1 MiB), user data (64 KiB) and three JSON documents of 1 MiB. A
# frame of the local socket is refused above it before it is read.
MAX_REQUEST_BYTES = 8 * MIB


def parse_version(version):
    """``"1.4"`` → ``(1, 4)``; anything else raises ``ValueError``."""
    if not isinstance(version, str):
        raise ValueError("version must be a string")
    if not _VERSION_RE.match(version):
        raise ValueError("version must look like MAJOR.MINOR (ASCII digits)")
    major, _, minor = version.partition(".")
    return int(major), int(minor)


def fs_label_matches(fs_type, label):
    """Whether ``label`` is a label a ``fs_type`` filesystem takes."""
    pattern = FS_LABELS.get(fs_type)
    return pattern is not None and isinstance(label, str) and \
        re.match(pattern, label) is not None


class Rule:
    """A rule across the arguments of one call: ``holds(args)`` is true for
    a good call (its arguments already checked one by one); otherwise the
    call is refused naming ``field``, with ``reason``.

    A method's ``rules`` are callables ``rule(args)`` answering ``None`` or
    the problem as ``(field, reason)``; a rule that must name the element
    at fault (``files[2]``) is a plain function of that shape.
    """

    def __init__(self, field, holds, reason):
        self.field = field
        self.holds = holds
        self.reason = reason

    def __call__(self, args):
        return None if self.holds(args) else (self.field, self.reason)


class Method:
    """One remote method: its name, the version that added it, its arguments
    and the rules across them.

    ``long`` calls use ``[agent] long_rpc_timeout`` on the client; ``control``
    calls are cheap and read-only, so the server answers them outside the
    bounded worker pool (a slow image fetch never delays a ``describe``).
    ``returns`` names the keys every result must carry.
    """

    def __init__(self, name, since, args=(), rules=(), returns=(), long=False,
                 control=False):
        self.name = name
        self.since = since
        for arg in args:
            if arg.since is not None and \
                    parse_version(arg.since) <= parse_version(since):
                raise ValueError("%s.%s: since %s is not after its method's %s"
                                 % (name, arg.name, arg.since, since))
        self.args = {arg.name: arg for arg in args}
        self.rules = tuple(rules)
        self.returns = tuple(returns)
        self.long = long
        self.control = control

    @property
    def secret_args(self):
        """Names of the arguments that must never be logged or echoed."""
        return frozenset(name for name, arg in self.args.items() if arg.secret)


METHODS = {m.name: m for m in (
    Method("describe", "1.0", control=True,
           returns=("mode", "vm_uuid", "host_uuid", "host", "version", "capabilities")),
    Method("fetch_image", "1.0", long=True, args=(
        Arg("instance_uuid", Uuid()),
        Arg("image_id", Str(pattern=IMAGE_ID)),
        Arg("disk_format", Enum("vhd", "raw", "ami", "aki", "ari")),
        Arg("kernel_id", Str(pattern=IMAGE_ID), nullable=True),
        Arg("ramdisk_id", Str(pattern=IMAGE_ID), nullable=True),
        Arg("auth_token", Str(min_len=1, max_len=8192, pattern=AUTH_TOKEN), nullable=True,
            secret=True),
    ), rules=(
        Rule("kernel_id", lambda a: a["kernel_id"] is None or a["disk_format"] == "ami",
             "separate kernel/ramdisk images go with disk_format ami"),
        Rule("ramdisk_id", lambda a: a["ramdisk_id"] is None or a["disk_format"] == "ami",
             "separate kernel/ramdisk images go with disk_format ami"),
    ), returns=("vdis",)),
    Method("auto_configure_disk", "1.0", long=True, args=(
        Arg("vdi_uuid", Uuid()),
        Arg("new_gb", Int(1, 65536)),
        Arg("instance_uuid", Uuid(), nullable=True, since="1.3"),
    ), returns=("uuid", "size_bytes")),
    Method("generate_disk", "1.0", long=True, args=(
        Arg("instance_uuid", Uuid()),
        Arg("kind", Enum("ephemeral", "swap")),
        Arg("size_mb", Int(1, 67108864)),
        Arg("fs_type", Enum("ext3", "ext4", "vfat", "swap")),
        Arg("label", Str(pattern=FS_LABEL)),
    ), rules=(
        Rule("fs_type", lambda a: (a["kind"] == "swap") == (a["fs_type"] == "swap"),
             "a swap disk takes fs_type swap, an ephemeral disk a filesystem"),
        Rule("size_mb", lambda a: a["size_mb"] >= MIN_DISK_MB,
             "at least %d MiB are needed for a partition and a filesystem" % MIN_DISK_MB),
        Rule("label", lambda a: fs_label_matches(a["fs_type"], a["label"]),
             "is not a label this fs_type takes (vfat: at most 11 characters, no '.')"),
    ), returns=("uuid", "size_bytes")),
    Method("generate_configdrive", "1.0", long=True, args=(
        Arg("instance_uuid", Uuid()),
        Arg("metadata", JsonDict(max_bytes=MIB)),
        Arg("user_data", Bytes(max_bytes=65536), nullable=True),
        Arg("network_data", JsonDict(max_bytes=MIB), nullable=True),
        Arg("vendor_data", JsonDict(max_bytes=MIB), nullable=True),
        Arg("files", _FILES),
        Arg("admin_password", Str(max_len=1024), nullable=True, secret=True),
    ), rules=(
        Rule("metadata", lambda a: a["metadata"].get("uuid") == a["instance_uuid"],
             "meta_data uuid must be the instance uuid"),
    ), returns=("uuid", "size_bytes")),
    Method("resize_disk", "1.0", long=True, args=(
        Arg("instance_uuid", Uuid()),
        Arg("vdi_uuid", Uuid()),
        Arg("new_gb", Int(1, 65536)),
    ), returns=("uuid", "size_bytes")),
    Method("preconfigure_instance", "1.0", args=(
        Arg("vdi_uuid", Uuid()),
        Arg("network_config", Str(max_len=MIB), nullable=True),
        Arg("files", _FILES, nullable=True),
        Arg("ssh_key", SSH_KEY_KIND, nullable=True, since="1.1"),
        Arg("metadata", StrMap(max_items=128, max_len=255), nullable=True, since="1.1"),
        Arg("instance_uuid", Uuid(), nullable=True, since="1.3"),
    ), rules=(
        _no_file_where_an_argument_goes,
    )),
    Method("upload_snapshot", "1.5", long=True, args=(
        Arg("instance_uuid", Uuid()),
        Arg("vdi_uuid", Uuid()),
        Arg("image_id", Str(pattern=IMAGE_ID)),
        Arg("auth_token", Str(min_len=1, max_len=8192, pattern=AUTH_TOKEN), nullable=True,
            secret=True),
    ), returns=("image_id", "size_bytes")),
    Method("cleanup_attached_vdis", "1.0", returns=("unplugged", "destroyed")),
    Method("remove_boot_files", "1.2", args=(
        Arg("paths", List(Str(max_len=1024, pattern=BOOT_FILE_PATH), min_items=1,
                          max_items=2)),
    ), rules=(
        Rule("paths", lambda a: len(set(a["paths"])) == len(a["paths"]),
             "names a file twice"),
    ), returns=("removed",)),
    Method("get_console_log", "1.4", args=(
        Arg("instance_uuid", Uuid()),
        Arg("max_bytes", Int(1, MAX_CONSOLE_BYTES)),
    ), returns=("log", "truncated")),
    Method("cache_image", "1.6", long=True, args=(
        Arg("image_id", Str(pattern=IMAGE_ID)),
        Arg("auth_token", Str(min_len=1, max_len=8192, pattern=AUTH_TOKEN), nullable=True,
            secret=True),
    ), returns=("uuid", "fetched")),
    Method("manage_image_cache", "1.6", long=True, args=(
        Arg("min_age_seconds", Int(0, 10 * 365 * 86400)),
    ), returns=("removed", "kept_in_use", "kept_recent")),
    Method("destroy_vdis", "1.0", args=(
        Arg("vdi_uuids", List(Uuid(), min_items=1, max_items=64)),
    ), rules=(
        Rule("vdi_uuids", lambda a: len(set(a["vdi_uuids"])) == len(a["vdi_uuids"]),
             "names a VDI twice"),
    ), returns=("destroyed",)),
)}


def version_serves(have, need):
    """True when an interface at ``have`` can serve a call pinned at ``need``."""
    have_major, have_minor = parse_version(have)
    need_major, need_minor = parse_version(need)
    return have_major == need_major and have_minor >= need_minor


def lookup(method_name):
    """The declaration of ``method_name``; unknown → ``InvalidRequest``."""
    method = METHODS.get(method_name) if isinstance(method_name, str) else None
    if method is None:
        raise exceptions.InvalidRequest(
            method=str(method_name)[:64], field="method",
            reason="not declared by interface %s" % VERSION)
    return method


def pin(method_name, args):
    """The version a call must be pinned at: its method's, or that of the
    newest argument it sends (one that is not ``None``)."""
    method = lookup(method_name)
    need = method.since
    for name, value in (args.items() if isinstance(args, dict) else ()):
        arg = method.args.get(name)
        if value is not None and arg is not None and arg.since is not None and \
                parse_version(arg.since) > parse_version(need):
            need = arg.since
    return need


def validate(method_name, args, version=None):
    """Check a call completely; return the arguments as the endpoint gets them.

    Every declared argument is present in the result (omitted nullable ones
    as ``None``). Raises ``InvalidRequest(method, field, reason)`` on an
    undeclared method, a missing, unknown, mistyped or out-of-range argument,
    or a call breaking one of its method's rules across arguments.
    The reason never contains an argument's value. With ``version`` (the
    interface a server speaks), an argument added after it is refused, as
    that server's own table would not have it.
    """
    method = lookup(method_name)
    if not isinstance(args, dict):
        raise exceptions.InvalidRequest(method=method.name, field="args",
                                        reason="arguments must be a mapping")
    unknown = sorted(str(name)[:64] for name in args if name not in method.args)
    if unknown:
        raise exceptions.InvalidRequest(method=method.name, field=unknown[0],
                                        reason="is not an argument of %s" % method.name)
    if version is not None:
        newer = pin(method.name, args)
        if parse_version(newer) > parse_version(version):
            name = min(name for name, arg in method.args.items()
                       if arg.since == newer and args.get(name) is not None)
            raise exceptions.InvalidRequest(
                method=method.name, field=name,
                reason="is an argument of %s since %s, newer than interface %s"
                % (method.name, newer, version))
    checked = {}
    for name, arg in method.args.items():
        try:
            checked[name] = arg.check(args.get(name, MISSING))
        except Reject as e:
            raise exceptions.InvalidRequest(method=method.name, field=name + e.field_suffix,
                                            reason=e.reason) from None
    for rule in method.rules:
        problem = rule(checked)
        if problem is not None:
            raise exceptions.InvalidRequest(method=method.name, field=problem[0],
                                            reason=problem[1])
    return checked


def check_result(method_name, result):
    """Return the problem with an endpoint's result, or ``None`` if it is fine."""
    if not isinstance(result, dict):
        return "%s returned %s, not a dict" % (method_name, type(result).__name__)
    missing = [key for key in METHODS[method_name].returns if key not in result]
    if missing:
        return "%s result lacks %s" % (method_name, ", ".join(missing))
    return None


def loggable(method_name, args):
    """``args`` fit for a log line: secrets masked, bytes reduced to a length."""
    return {name: ("***" if _is_secret(name) and value is not None else _short(value))
            for name, value in (args or {}).items()}


_SECRET_ARGS = frozenset().union(*(m.secret_args for m in METHODS.values()))


def _is_secret(name):
    # Also masks look-alikes in calls to undeclared methods.
    name = str(name).lower()
    return name in _SECRET_ARGS or "password" in name or "token" in name


def _short(value):
    if isinstance(value, (bytes, bytearray)):
        return "<%d bytes>" % len(value)
    if isinstance(value, dict):
        return "<dict of %d keys>" % len(value)
    if isinstance(value, (list, tuple)):
        return [_short(item) for item in value[:8]] + (["..."] if len(value) > 8 else [])
    if isinstance(value, str) and len(value) > 80:
        return value[:77] + "..."
    return value
