"""Sparse disk files for tests: make one, read it, see what it occupies."""

import os


def make_disk(path, size, writes=()):
    """A sparse file of ``size`` bytes holding ``writes`` ((offset, bytes), ...)."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in writes:
            f.seek(offset)
            f.write(data)
    return str(path)


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def allocated_bytes(path):
    """Bytes the file really occupies on disk (holes excluded)."""
    return os.stat(path).st_blocks * 512
