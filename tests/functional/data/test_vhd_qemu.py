"""The encoder's VHD streams read back by qemu-img, an independent decoder.

qemu-img has no consistency check for vpc images ("This image format does
not support checks"), so structure is checked field by field in
tests/unit/data/test_vhd.py and content by converting back here.
"""

import filecmp
import json
import os
import shutil
import subprocess

import pytest

from agent import vhd
from tests.conftest import need
from tests.diskfiles import make_disk

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def _qemu_img():
    need(shutil.which("qemu-img"), "qemu-img is not installed")


def qemu_img(*args):
    out = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def write_stream(stream, path):
    with open(path, "wb") as f:
        for piece in stream:
            f.write(piece)
    return str(path)


SOURCES = {
    "empty": (16 * MiB, []),
    "full": (6 * MiB, [(0, "random:6")]),
    "sparse": (64 * MiB, [(4096, "bytes:hello"), (40 * MiB + 3, "random:3"),
                          (64 * MiB - 512, "bytes:end")]),
    "odd_3MiB_4KiB": (3 * MiB + 4096, [(0, "random:3.00390625")]),
    "odd_1MiB_minus_512": (MiB - 512, [(MiB - 1024, "bytes:tail")]),
    "one_GiB_not_chs_exact": (1024 * MiB, [(700 * MiB, "random:1")]),
}


def _materialise(spec):
    kind, _, arg = spec.partition(":")
    return arg.encode() if kind == "bytes" else os.urandom(int(float(arg) * MiB))


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_qemu_img_converts_the_stream_back_to_the_source(tmp_path, name):
    size, writes = SOURCES[name]
    source = make_disk(tmp_path / "src.raw", size,
                       [(off, _materialise(spec)) for off, spec in writes])
    stream = vhd.VhdStream.from_file(source)
    image = write_stream(stream, tmp_path / "disk.vhd")
    assert os.path.getsize(image) == stream.length

    info = json.loads(qemu_img("info", "--output=json", "-f", "vpc", image))
    qemu_img("convert", "-f", "vpc", "-O", "raw", image, str(tmp_path / "back.raw"))

    assert info["virtual-size"] == size
    assert filecmp.cmp(source, tmp_path / "back.raw", shallow=False)


def test_qemu_img_compare_finds_the_stream_identical_to_a_larger_disk(tmp_path):
    source = make_disk(tmp_path / "src.raw", 3 * MiB, [(MiB, os.urandom(MiB))])
    image = write_stream(vhd.VhdStream.from_file(source, virtual_size=64 * MiB),
                         tmp_path / "disk.vhd")
    padded = make_disk(tmp_path / "padded.raw", 64 * MiB)
    with open(source, "rb") as src, open(padded, "r+b") as dst:
        dst.write(src.read())

    qemu_img("compare", "-f", "vpc", "-F", "raw", image, padded)
    info = json.loads(qemu_img("info", "--output=json", "-f", "vpc", image))
    assert info["virtual-size"] == 64 * MiB


def test_a_sparse_source_costs_only_its_data_blocks(tmp_path):
    size = 1024 * MiB
    source = make_disk(tmp_path / "src.raw", size,
                       [(i * 100 * MiB, os.urandom(64 * 1024)) for i in range(10)])
    stream = vhd.VhdStream.from_file(source)

    assert len(stream.blocks) == 10
    assert stream.length < 10 * (2 * MiB + 512) + 8 * 1024


def test_a_block_device_source_is_encoded_whole(tmp_path, loop_devices):
    source = make_disk(tmp_path / "src.raw", 8 * MiB, [(5 * MiB, os.urandom(4096))])
    attach = subprocess.run(["losetup", "-f", "--show", source], capture_output=True,
                            text=True, timeout=30)
    assert attach.returncode == 0, attach.stderr
    device = attach.stdout.strip()
    try:
        stream = vhd.VhdStream.from_file(device)
        image = write_stream(stream, tmp_path / "disk.vhd")
    finally:
        subprocess.run(["losetup", "-d", device], check=True, timeout=30)
    qemu_img("convert", "-f", "vpc", "-O", "raw", image, str(tmp_path / "back.raw"))

    assert stream.virtual_size == 8 * MiB and list(stream.blocks) == [2]
    assert filecmp.cmp(source, tmp_path / "back.raw", shallow=False)
