"""The benchmarks' inputs: raw images on disk.

``make_dense`` and ``make_sparse`` write the images; ``drop_page_cache_of``
makes the next read of a file come from the disk. The image service that
serves them is ``nova_xen_split.cmd.image_service``.
"""

import os

MiB = 1 << 20


def make_dense(path, size_bytes):
    block = os.urandom(4 * MiB)
    with open(path, "wb") as f:
        for _ in range(size_bytes // len(block)):
            f.write(block)


def make_sparse(path, size_bytes, data_fraction):
    """``data_fraction`` of the image in 1 MiB runs spread evenly."""
    runs = int(size_bytes * data_fraction) // MiB
    stride = size_bytes // runs
    with open(path, "wb") as f:
        f.truncate(size_bytes)
        for index in range(runs):
            f.seek(index * stride)
            f.write(os.urandom(MiB))
    return runs * MiB


def drop_page_cache_of(path):
    """Start the next measurement cold and without the previous one's dirty
    pages still being written back (which would be charged to it)."""
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
