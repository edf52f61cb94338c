"""The agent's whole root-capable surface: one privsep context, a few verbs.

Each entrypoint takes plain data, checks it (device names must name a block
device under ``[xenserver] device_dir``; every number must be in range),
runs one short job with argument lists and timeouts, and returns plain data.
The in_guest backend is the only user; the rest of the agent can run
unprivileged.

The daemon reads ``device_dir`` from what :func:`start` recorded before it
forked, or (started through privsep-helper, which is handed the agent's
``--config-file``\\ s) from the global configuration.
"""

import contextlib
import json
import os
import re
import shlex
import stat
import subprocess
import tempfile

from oslo_config import cfg
from oslo_privsep import capabilities as caps
from oslo_privsep import priv_context

from nova_xen_split.xenhost import conf as nxs_conf
from rpc import exceptions, methods, schema

agent_ctx = priv_context.PrivContext(
    "agent",
    cfg_section=nxs_conf.PRIVSEP_SECTION,
    pypath=__name__ + ".agent_ctx",
    capabilities=[caps.CAP_SYS_ADMIN, caps.CAP_DAC_OVERRIDE, caps.CAP_CHOWN,
                  caps.CAP_FOWNER, caps.CAP_DAC_READ_SEARCH],
)

DEVICE_RE = re.compile(r"^(xvd|sd|hd)[a-z]{1,2}$")
PARTITION_RE = re.compile(r"^((xvd|sd|hd)[a-z]{1,2})([1-9][0-9]?)$")
DISK_OR_PARTITION_RE = re.compile(r"^(xvd|sd|hd)[a-z]{1,2}([1-9][0-9]?)?$")
# Filesystems files are written into (Nova mounted only Linux ones, to leave
# Windows images alone).
GUEST_FS_TYPES = ("ext2", "ext3", "ext4", "xfs", "btrfs")
PARTITION_TYPES = ("83", "82", "0c")
FS_TYPES = ("ext3", "ext4", "vfat", "swap")
MAX_SECTOR = 1 << 40
MAX_UID = (1 << 31) - 1
# The interface's 64 files, with /etc/network/interfaces and /meta.js.
MAX_FILES = 64 + 2
MAX_FILE_BYTES = 1 << 20
# The interface's files (1 MiB together), the network config and metadata.
MAX_TOTAL_BYTES = 3 << 20
SHORT_TIMEOUT = 120
LONG_TIMEOUT = 3600

_device_dir = None


def start(conf):
    """Start the privileged daemon as ``[agent] privsep_start_method`` says."""
    global _device_dir
    _device_dir = conf.xenserver.device_dir
    if conf.agent.privsep_start_method == "fork":
        agent_ctx.start(priv_context.Method.FORK)
    else:
        priv_context.init(root_helper=shlex.split(conf.agent.root_helper))
        agent_ctx.start(priv_context.Method.ROOTWRAP)


def stop():
    agent_ctx.stop()


# -- argument checks (run inside the daemon) --------------------------------

def _configured_device_dir():
    if _device_dir:
        return _device_dir
    try:
        return cfg.CONF.xenserver.device_dir
    except cfg.NoSuchOptError:
        nxs_conf.register_opts(cfg.CONF)
        return cfg.CONF.xenserver.device_dir


def _bad(operation, target, reason):
    return exceptions.DiskOperationFailed(operation=operation, target=target, reason=reason)


def _block_device(operation, name, pattern):
    """``<device_dir>/<name>`` if the name is well-formed and a block device."""
    if not isinstance(name, str) or not pattern.match(name):
        raise _bad(operation, repr(name)[:40], "not a device name")
    path = os.path.join(_configured_device_dir(), name)
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise _bad(operation, name, "no such device: %s" % e.strerror) from None
    if not stat.S_ISBLK(mode):
        raise _bad(operation, name, "not a block device")
    return path


def _disk(operation, name):
    return _block_device(operation, name, DEVICE_RE)


def _partition(operation, name):
    return _block_device(operation, name, PARTITION_RE)


def _int_in(operation, what, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(operation, what, "%r is not an integer in %d..%d" % (value, low, high))
    return value


def _run(operation, target, argv, stdin=None, timeout=SHORT_TIMEOUT, ok=(0,)):
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise _bad(operation, target, "%s timed out after %ss" % (argv[0], timeout)) from None
    except OSError as e:
        raise _bad(operation, target, "cannot run %s: %s" % (argv[0], e)) from None
    if proc.returncode not in ok:
        raise _bad(operation, target, "%s exited %d: %s" % (
            argv[0], proc.returncode, proc.stderr.strip()[-2000:]))
    return proc.stdout


def _table(operation, path):
    out = _run(operation, path, ["sfdisk", "--json", path], ok=(0, 1))
    if not out.strip():
        return {"label": None, "partitions": []}
    table = json.loads(out)["partitiontable"]
    return {
        "label": table.get("label"),
        "partitions": [
            {"num": int(re.search(r"(\d+)$", p["node"]).group(1)),
             "start": int(p["start"]), "size": int(p["size"]),
             "type": p.get("type"), "bootable": bool(p.get("bootable"))}
            for p in table.get("partitions", [])],
    }


def _tell_kernel(operation, path):
    """Have the kernel pick up the new table (BLKPG, as ``partx -u`` does).

    sfdisk's own BLKRRPART is refused by devices the kernel does not
    partition-scan (loop devices without partscan; the simulated hosts);
    udev still creates the ``<dev>N`` links afterwards, and callers wait.
    """
    _run(operation, path, ["partx", "-u", path], ok=(0, 1))


def _size_sectors(operation, path):
    out = _run(operation, path, ["blockdev", "--getsz", path])
    return int(out.strip())


# -- entrypoints ------------------------------------------------------------

@agent_ctx.entrypoint
def get_partitions(device):
    """The disk's msdos table: ``{"label", "partitions", "size_sectors"}``."""
    path = _disk("get_partitions", device)
    table = _table("get_partitions", path)
    table["size_sectors"] = _size_sectors("get_partitions", path)
    return table


@agent_ctx.entrypoint
def make_partition(device, start_sector, end_sector, partition_type, bootable):
    """Write a new msdos label with one primary partition.

    ``end_sector`` None means the end of the disk.
    """
    path = _disk("make_partition", device)
    _int_in("make_partition", "start_sector", start_sector, 1, MAX_SECTOR)
    if partition_type not in PARTITION_TYPES:
        raise _bad("make_partition", device, "partition type %r" % (partition_type,))
    line = "start=%d, type=%s" % (start_sector, partition_type)
    if end_sector is not None:
        _int_in("make_partition", "end_sector", end_sector, start_sector, MAX_SECTOR)
        line += ", size=%d" % (end_sector - start_sector + 1)
    if bootable:
        line += ", bootable"
    _run("make_partition", path, ["sfdisk", "-q", "--wipe", "always", path],
         stdin="label: dos\n%s\n" % line, ok=(0, 1))
    _tell_kernel("make_partition", path)
    return _table("make_partition", path)


@agent_ctx.entrypoint
def mkfs(partition, fs_type, label):
    """Make a filesystem (or swap) with a label on a partition."""
    path = _partition("mkfs", partition)
    if fs_type not in FS_TYPES:
        raise _bad("mkfs", partition, "unknown fs type %r" % (fs_type,))
    # The interface's own rule, checked again here: the daemon trusts no caller.
    if not methods.fs_label_matches(fs_type, label):
        raise _bad("mkfs", partition, "label %r not allowed for %s" % (label, fs_type))
    if fs_type == "swap":
        argv = ["mkswap", "-L", label, path]
    elif fs_type == "vfat":
        argv = ["mkfs.vfat", "-n", label.upper(), path]
    else:
        argv = ["mkfs", "-t", fs_type, "-F", "-q", "-L", label, path]
    _run("mkfs", partition, argv, timeout=LONG_TIMEOUT)


@agent_ctx.entrypoint
def check_fs(partition):
    """``e2fsck -fp``: repair what is safe; anything worse is an error."""
    path = _partition("check_fs", partition)
    # 1 = errors corrected: fine before a resize.
    _run("check_fs", partition, ["e2fsck", "-f", "-p", path], timeout=LONG_TIMEOUT,
         ok=(0, 1))


@agent_ctx.entrypoint
def grow_partition(device, partnum):
    """Move the end of the only partition to the end of the disk.

    Keeps its start, type and boot flag; returns the new table.
    """
    path = _disk("grow_partition", device)
    _int_in("grow_partition", "partnum", partnum, 1, 1)
    table = _table("grow_partition", path)
    parts = table["partitions"]
    if table["label"] != "dos" or len(parts) != 1 or parts[0]["num"] != 1:
        raise _bad("grow_partition", device, "needs an msdos label with exactly "
                   "partition 1, found %s" % [p["num"] for p in parts])
    # -N 1 changes only partition 1 (start, type, boot flag, boot code and
    # disk id stay); ", +" moves its end as far as the disk allows.
    _run("grow_partition", path, ["sfdisk", "-q", "--no-reread", "-N", "1", path],
         stdin=", +\n", ok=(0, 1))
    _tell_kernel("grow_partition", path)
    return _table("grow_partition", path)


@agent_ctx.entrypoint
def resize_fs(partition):
    """``resize2fs`` the filesystem to fill its partition, then check it."""
    path = _partition("resize_fs", partition)
    _run("resize_fs", partition, ["resize2fs", path], timeout=LONG_TIMEOUT)
    _run("resize_fs", partition, ["e2fsck", "-f", "-p", path], timeout=LONG_TIMEOUT,
         ok=(0, 1))


@agent_ctx.entrypoint
def chown_device(device, uid):
    """Give the device to ``uid`` (so the agent can stream into it); returns
    the previous owner, which the caller gives back afterwards."""
    path = _block_device("chown_device", device, DEVICE_RE)
    _int_in("chown_device", "uid", uid, 0, MAX_UID)
    previous = os.stat(path).st_uid
    os.chown(path, uid, -1)
    return previous


@agent_ctx.entrypoint
def copy_shrunk_fs(src_device, src_partition, dst_device, dst_partition):
    """Copy an ext filesystem into a smaller partition of another disk.

    The boot code and the gap before the partition come along; the source is
    only read: its filesystem is copied to a private sparse scratch file,
    shrunk there to the destination partition's size, then written out.
    """
    src_disk = _disk("copy_shrunk_fs", src_device)
    dst_disk = _disk("copy_shrunk_fs", dst_device)
    src = _partition("copy_shrunk_fs", src_partition)
    dst = _partition("copy_shrunk_fs", dst_partition)
    if src_disk == dst_disk or not src_partition.startswith(src_device) or \
            not dst_partition.startswith(dst_device):
        raise _bad("copy_shrunk_fs", dst_device, "partitions must be on two disks")
    dst_table = _table("copy_shrunk_fs", dst_disk)
    start = dst_table["partitions"][0]["start"]
    dst_bytes = dst_table["partitions"][0]["size"] * 512
    _copy_boot_area(src_disk, dst_disk, start)
    with tempfile.TemporaryDirectory(prefix="nxs-shrink-") as scratch:
        image = os.path.join(scratch, "fs.img")
        _run("copy_shrunk_fs", src_partition,
             ["dd", "if=" + src, "of=" + image, "bs=4M", "conv=sparse", "status=none"],
             timeout=LONG_TIMEOUT)
        _run("copy_shrunk_fs", src_partition, ["e2fsck", "-f", "-p", image],
             timeout=LONG_TIMEOUT, ok=(0, 1))
        _run("copy_shrunk_fs", src_partition,
             ["resize2fs", image, "%dK" % (dst_bytes // 1024)], timeout=LONG_TIMEOUT)
        _run("copy_shrunk_fs", dst_partition,
             ["dd", "if=" + image, "of=" + dst, "bs=4M", "conv=fsync", "status=none"],
             timeout=LONG_TIMEOUT)
    _run("copy_shrunk_fs", dst_partition, ["e2fsck", "-f", "-p", dst],
         timeout=LONG_TIMEOUT, ok=(0, 1))


def _copy_boot_area(src_disk, dst_disk, start_sector):
    """Boot code (first 446 bytes) and the gap up to the partition start."""
    with open(src_disk, "rb") as src, open(dst_disk, "r+b") as dst:
        dst.write(src.read(446))
        src.seek(512)
        dst.seek(512)
        dst.write(src.read(max(0, start_sector * 512 - 512)))
        dst.flush()
        os.fsync(dst.fileno())


@agent_ctx.entrypoint
def inject_files(partition, files, authorized_key=None):
    """Mount the partition, write ``[(path, bytes)]`` and add a key, unmount.

    ``partition`` is a partition, or a whole disk holding a filesystem.
    Paths are absolute inside the guest fs (the interface's rules: distinct,
    none under another, no ``.``/``..``/empty component); nothing may
    resolve outside it (guest symlinks included). Every target is checked
    against the mounted fs before the first file is written, so a path the
    guest has as a directory, or under a file, changes nothing.

    ``authorized_key`` (one OpenSSH public key line) is added to
    ``/root/.ssh/authorized_keys`` after what the image has there, as Nova's
    ``flat_injected`` did, unless that line is already in the file (a
    retried request adds it once); ``/root/.ssh`` ends up ``0700`` and the
    file ``0600``, both owned by root, as sshd's StrictModes wants.

    Only a Linux filesystem (:data:`GUEST_FS_TYPES`, as blkid probes it) is
    mounted, by its probed type and ``nosuid,nodev,noexec``; anything else
    (a Windows image's NTFS, no filesystem at all) is left untouched.
    Returns ``{"fs_type": <probed type or None>, "written": <files written,
    the key counting as one>}``.
    """
    path = _block_device("inject_files", partition, DISK_OR_PARTITION_RE)
    try:
        files = schema.GuestFiles(MAX_FILES, MAX_FILE_BYTES, MAX_TOTAL_BYTES).check(files)
    except schema.Reject as e:
        raise _bad("inject_files", partition, "files%s %s" % (e.field_suffix, e.reason)) \
            from None
    try:
        if authorized_key is not None:
            authorized_key = methods.SSH_KEY_KIND.check(authorized_key)
    except schema.Reject as e:
        raise _bad("inject_files", partition, "authorized_key " + e.reason) from None
    if authorized_key is not None and any(
            schema.paths_overlap(name, methods.AUTHORIZED_KEYS_PATH) for name, _ in files):
        raise _bad("inject_files", partition, "files name %s, where the key goes"
                   % methods.AUTHORIZED_KEYS_PATH)
    fs_type = _probe_fs_type("inject_files", partition, path)
    if fs_type not in GUEST_FS_TYPES:
        return {"fs_type": fs_type, "written": 0}
    with tempfile.TemporaryDirectory(prefix="nxs-mnt-") as root:
        _run("inject_files", partition, ["mount", "-t", fs_type, "-o", "nosuid,nodev,noexec",
                                         path, root])
        try:
            real_root = os.path.realpath(root)
            targets = [_guest_target(partition, real_root, name) for name, _ in files]
            if authorized_key is not None:
                key_target = _guest_target(partition, real_root, methods.AUTHORIZED_KEYS_PATH)
                if key_target[0] != os.path.join(real_root, "root", ".ssh"):
                    # A link would have the modes set on whatever it names.
                    raise _bad("inject_files", partition, "/root or /root/.ssh is a "
                               "symlink in the guest; the key is not written through it")
                # Before the files: it makes /root 0700 if the image has none.
                _add_key(partition, real_root, key_target, authorized_key)
            for (parent, base), (name, data) in zip(targets, files, strict=True):
                with _guest_file(partition, name, parent, base, os.O_TRUNC, 0o644,
                                 0o755) as fd:
                    _write_all(fd, data)
        finally:
            _run("inject_files", partition, ["umount", root])
    return {"fs_type": fs_type, "written": len(files) + (authorized_key is not None)}


KEY_COMMENT = b"# Added by nova-xen-split (flat_injected)\n"
# An authorized_keys file is read to see whether the key is already there;
# past this size the key is appended without looking.
MAX_KEYS_FILE_READ = 1 << 20


@contextlib.contextmanager
def _guest_file(partition, name, parent, base, flags, mode, dir_mode):
    """An fd of the guest file ``parent/base`` (``name`` in the guest), its
    missing parent directories made with ``dir_mode``; never through a
    symlink. Errors are ``DiskOperationFailed`` naming the guest path."""
    try:
        _make_dirs(parent, dir_mode)
        if os.path.realpath(parent) != parent:
            raise _bad("inject_files", partition, "%s leaves the filesystem" % name)
        fd = os.open(os.path.join(parent, base),
                     os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | flags, mode)
    except OSError as e:
        raise _bad("inject_files", partition, "cannot write %s: %s"
                   % (name, e.strerror or e)) from None
    try:
        yield fd
    except OSError as e:
        raise _bad("inject_files", partition, "cannot write %s: %s"
                   % (name, e.strerror or e)) from None
    finally:
        os.close(fd)


def _make_dirs(path, mode):
    """Make ``path`` and its missing parents, each with exactly ``mode``
    (``os.makedirs`` gives the parents ``0777`` less the umask, and the
    daemon's umask may be 0); returns the directories made, outermost first."""
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    missing.reverse()
    for directory in missing:
        os.mkdir(directory, mode)
        os.chmod(directory, mode)
    return missing


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# SELinux contexts of the targeted policy for what _add_key makes, so that
# sshd (ssh_home_t) may read the key on an enforcing guest.
SELINUX_CONTEXTS = {
    "/root": b"system_u:object_r:admin_home_t:s0\0",
    "/root/.ssh": b"system_u:object_r:ssh_home_t:s0\0",
    methods.AUTHORIZED_KEYS_PATH: b"system_u:object_r:ssh_home_t:s0\0",
}


def _add_key(partition, real_root, target, key):
    """Append ``key`` to the guest's authorized_keys unless it is there.

    On a guest with SELinux (``/etc/selinux`` is a directory), what this
    makes (``/root``, ``/root/.ssh``, the file) gets its context as the
    ``security.selinux`` attribute: a file made outside the guest has none,
    and an enforcing guest's sshd would not read it.
    """
    parent, base = target
    line = key.strip().encode("ascii")
    try:
        made = _make_dirs(parent, 0o700)
        made_file = not os.path.lexists(os.path.join(parent, base))
    except OSError as e:
        raise _bad("inject_files", partition, "cannot write %s: %s"
                   % (methods.AUTHORIZED_KEYS_PATH, e.strerror or e)) from None
    with _guest_file(partition, methods.AUTHORIZED_KEYS_PATH, parent, base, os.O_APPEND, 0o600,
                     0o700) as fd:
        if _has_selinux(real_root):
            for path in made + ([os.path.join(parent, base)] if made_file else []):
                guest_path = "/" + os.path.relpath(path, real_root)
                os.setxattr(path, "security.selinux", SELINUX_CONTEXTS[guest_path],
                            follow_symlinks=False)
        dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchmod(dir_fd, 0o700)
            os.fchown(dir_fd, 0, 0)
        finally:
            os.close(dir_fd)
        os.fchmod(fd, 0o600)
        os.fchown(fd, 0, 0)
        size = os.fstat(fd).st_size
        existing = os.pread(fd, min(size, MAX_KEYS_FILE_READ), 0) if size else b""
        if line in (old.strip() for old in existing.splitlines()):
            return
        lead = b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b""
        _write_all(fd, lead + KEY_COMMENT + line + b"\n")


def _has_selinux(real_root):
    try:
        return stat.S_ISDIR(os.lstat(os.path.join(real_root, "etc", "selinux")).st_mode)
    except OSError:
        return False


def _probe_fs_type(operation, target, path):
    """The filesystem type blkid finds on ``path`` by its signatures, or None."""
    out = _run(operation, target, ["blkid", "-p", "-o", "export", path], ok=(0, 2))
    for line in out.splitlines():
        if line.startswith("TYPE="):
            return line[len("TYPE="):]
    return None


def _guest_target(partition, real_root, name):
    """``(parent directory, file name)`` of guest path ``name`` under the
    mounted fs at ``real_root``, refused if it cannot be written as a file."""
    target = os.path.join(real_root, name.lstrip("/"))
    parent = os.path.realpath(os.path.dirname(target))
    if not (parent + "/").startswith(real_root + "/"):
        raise _bad("inject_files", partition, "%s leaves the filesystem" % name)
    existing = parent
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise _bad("inject_files", partition, "%s: the guest has a file, not a directory, "
                   "at %s" % (name, "/" + os.path.relpath(existing, real_root)))
    base = os.path.basename(target)
    try:
        mode = os.lstat(os.path.join(parent, base)).st_mode
    except FileNotFoundError:
        return parent, base
    except NotADirectoryError:
        raise _bad("inject_files", partition, "%s: a parent is not a directory in the "
                   "guest" % name) from None
    if not stat.S_ISREG(mode):
        raise _bad("inject_files", partition, "%s is a %s in the guest, not a file"
                   % (name, "directory" if stat.S_ISDIR(mode) else "symlink"
                      if stat.S_ISLNK(mode) else "special file"))
    return parent, base
