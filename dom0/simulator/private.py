"""Files and directories only the simulator's user may read.

The state directory holds the database (every VM's and VDI's record) and
every VDI's bytes; on a shared machine another local user must not read
them. The state directory is made 0700 and every file the
simulator writes is created 0600 (whatever the umask), so a file copied or
moved out of the directory stays private too.
"""

import os

DIR_MODE = 0o700
FILE_MODE = 0o600


def make_dir(path):
    """Create ``path`` (and its parents) if needed; ``path`` itself ends 0700."""
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    os.chmod(path, DIR_MODE)


def open_fd(path, flags):
    """``os.open`` of a file created 0600: O_CREAT is implied."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # an existing file, or a umask that took a bit off
    except BaseException:
        os.close(fd)
        raise
    return fd


def create(path, mode="xb"):
    """A new private file, opened with ``mode`` ("xb" fails if it exists)."""
    flags = {"xb": os.O_WRONLY | os.O_EXCL, "wb": os.O_WRONLY | os.O_TRUNC,
             "w": os.O_WRONLY | os.O_TRUNC}[mode]
    return os.fdopen(open_fd(path, flags), mode.replace("x", "w"))


def replace_text(path, text):
    """Write ``text`` to ``path`` atomically: a private temporary file renamed
    over it, so readers see the old or the new content."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    try:
        with create(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
