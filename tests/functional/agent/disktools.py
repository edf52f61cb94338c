"""Independent checks of disk images: util-linux, e2fsprogs, bsdtar.

The agent's VDIs are sparse files in the simulator's SR directory; these
helpers read them with the standard tools (never with the agent's code).
"""

import glob
import json
import os
import re
import subprocess


def run(argv, ok=(0,), stdin=None):
    proc = subprocess.run(argv, capture_output=True, timeout=120, input=stdin)
    assert proc.returncode in ok, "%s exited %d: %s" % (
        argv, proc.returncode, proc.stderr.decode(errors="replace"))
    return proc.stdout.decode(errors="replace")


def vdi_file(sim, vdi_uuid):
    found = glob.glob(os.path.join(sim.state_dir, "sr", "*", vdi_uuid + ".raw"))
    assert found, "no file for VDI %s" % vdi_uuid
    return found[0]


def partitions(path):
    """``sfdisk --json`` of a disk image: list of {start, size, type, bootable}."""
    table = json.loads(run(["sfdisk", "--json", path]))["partitiontable"]
    return table


def partition_offset(path, num=1):
    part = partitions(path)["partitions"][num - 1]
    return int(part["start"]) * 512


def probe(path, offset):
    """``blkid -p`` of what lies at ``offset``: {"TYPE": ..., "LABEL": ...}."""
    out = run(["blkid", "-p", "-O", str(offset), "-o", "export", path], ok=(0, 2))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def e2fsck_clean(path, offset):
    proc = subprocess.run(["e2fsck", "-fn", "%s?offset=%d" % (path, offset)],
                          capture_output=True, text=True, timeout=300)
    return proc.returncode == 0, proc.stdout + proc.stderr


def ext_write(path, offset, guest_path, data, tmp_path):
    src = tmp_path / ("debugfs-src-%d" % abs(hash(guest_path)))
    src.write_bytes(data)
    run(["debugfs", "-w", "-R", "write %s %s" % (src, guest_path),
         "%s?offset=%d" % (path, offset)])


def ext_mkdir(path, offset, guest_dir):
    run(["debugfs", "-w", "-R", "mkdir %s" % guest_dir, "%s?offset=%d" % (path, offset)])


def ext_exists(path, offset, guest_path):
    """Whether the ext filesystem has ``guest_path`` (debugfs exits 0 either way)."""
    proc = subprocess.run(["debugfs", "-R", "stat %s" % guest_path,
                           "%s?offset=%d" % (path, offset)],
                          capture_output=True, text=True, timeout=60)
    if "File not found" in proc.stderr:
        return False
    assert "Inode:" in proc.stdout, proc.stdout + proc.stderr
    return True


def ext_read(path, offset, guest_path):
    proc = subprocess.run(["debugfs", "-R", "cat %s" % guest_path,
                           "%s?offset=%d" % (path, offset)],
                          capture_output=True, timeout=60)
    return proc.stdout


def ext_block_count(path, offset):
    out = run(["dumpe2fs", "-h", "%s?offset=%d" % (path, offset)])
    for line in out.splitlines():
        if line.startswith("Block count:"):
            return int(line.split(":")[1])

    raise AssertionError("no block count in dumpe2fs output")


def iso_file(path, member):
    """A member of an ISO9660 image, read with bsdtar."""
    return run(["bsdtar", "-xOf", path, member])


def ext_stat(path, offset, guest_path):
    """``(mode, uid, gid)`` of ``guest_path`` (mode with its type bits)."""
    out = run(["debugfs", "-R", "stat %s" % guest_path, "%s?offset=%d" % (path, offset)])
    mode = re.search(r"Mode:\s+(\d+)", out).group(1)
    ftype = re.search(r"Type:\s+(\w+)", out).group(1)
    uid, gid = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", out).groups()
    return ftype, int(mode, 8), int(uid), int(gid)


def ext_debugfs(path, offset, *commands):
    """Run debugfs write commands (``sif``, ``symlink``...) on the fs."""
    for command in commands:
        run(["debugfs", "-w", "-R", command, "%s?offset=%d" % (path, offset)])


def ext_selinux_context(path, offset, guest_path):
    """The ``security.selinux`` attribute of ``guest_path`` as text, or None."""
    out = run(["debugfs", "-R", "ea_list %s" % guest_path, "%s?offset=%d" % (path, offset)])
    found = re.search(r'security\.selinux \(\d+\) = "([^"\\]*)', out)
    return found.group(1) if found else None
