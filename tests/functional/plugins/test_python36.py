"""The plugins run by a real Python 3.6, dom0's Python on XenServer 8 / XCP-ng 8.

vermin (test_plugin_files.py) checks the syntax and library use statically
everywhere; where a Python 3.6 interpreter is installed, the plugins also run
under it here, through the simulator: a copy of the plugin directory whose
scripts name that interpreter in their ``#!`` line, given to xapi-sim with
``--plugin-dir``.
"""

import glob
import os
import shutil
import subprocess

import pytest

from tests.functional.plugins.conftest import MIB, SIZE, Dom0, download_args, tarball

# Image ids are Glance's: uuids.
IMAGE_ID = "0c2c5cf8-5b3f-4d2c-9a53-6e1d7f7d5a11"

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
PLUGIN_DIR = os.path.join(REPO, "dom0", "plugins")


def _python36():
    candidates = [os.environ.get("NXS_PYTHON36"), shutil.which("python3.6")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.6*/bin/python3.6")))
    for path in candidates:
        if not path or not os.access(path, os.X_OK):
            continue
        proc = subprocess.run([path, "-c", "import sys; print(sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=30)
        if proc.returncode == 0 and proc.stdout.strip() == "(3, 6)":
            return path
    return None


@pytest.fixture
def dom0_py36(loop_devices, make_sim, tmp_path):
    interpreter = _python36()
    if interpreter is None:
        pytest.skip("no Python 3.6 interpreter here (set NXS_PYTHON36); the static "
                    "vermin check still covers 3.6")
    plugin_dir = tmp_path / "plugins36"
    plugin_dir.mkdir()
    for name in os.listdir(PLUGIN_DIR):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(PLUGIN_DIR, name)) as f:
            text = f.read()
        executable = text.startswith("#!")
        if executable:
            text = "#!%s\n%s" % (interpreter, text.split("\n", 1)[1])
        (plugin_dir / name).write_text(text)
        os.chmod(str(plugin_dir / name), 0o755 if executable else 0o644)
    handle = Dom0(make_sim(extra_args=["--plugin-dir", str(plugin_dir)]))
    yield handle
    handle.close()


def test_partition_utils_verbs_run_under_python_3_6(dom0_py36):
    dom0 = dom0_py36
    vdi = dom0.new_vdi(32 * MIB)
    dev, _ = dom0.plug(vdi)
    assert dom0.call("partition_utils.py", "wait_for_dev", dev=dev, max_seconds="1")["dev"] \
        == dev
    dom0.call("partition_utils.py", "make_partition", dev=dev, partition_start="2048",
              partition_end="32767")
    made = dom0.call("partition_utils.py", "mkfs", dev=dev, partnum="1", fs_type="ext3",
                     fs_label="py36")
    assert made["label"] == "py36"
    dom0.unplug_all()
    dom0.api.VDI.resize(vdi, str(64 * MIB))
    dev, _ = dom0.plug(vdi)
    grown = dom0.call("partition_utils.py", "resize_partition_and_fs", dev=dev, partnum="1")
    assert grown["end"] == 64 * 2048 - 1
    assert dom0.call("partition_utils.py", "get_partitions", dev=dev)["partitions"][0][
        "end"] == 64 * 2048 - 1
    details = dom0.failure("partition_utils.py", "mkfs", dev="../x", partnum="1",
                           fs_type="ext4", fs_label="")
    assert details[2] == "InvalidArgument"


def test_download_vhd_and_kernel_copy_run_under_python_3_6(
        dom0_py36, image_service, chain_files):
    dom0 = dom0_py36
    image_service.images[IMAGE_ID] = tarball(
        [("0.vhd", chain_files["0.vhd"]), ("1.vhd", chain_files["1.vhd"])], compress=True)
    chain = dom0.call("vhd_images.py", "download_vhd",
                      **download_args(dom0, image_service, IMAGE_ID))
    dom0.api.SR.scan(dom0.sr)
    leaf = dom0.api.VDI.get_by_uuid(chain["root"])
    assert int(dom0.api.VDI.get_virtual_size(leaf)) == SIZE
    with open(os.path.join(dom0.sr_path, chain["root"] + ".raw"), "rb") as f:
        assert f.read() == chain_files["child"]

    dev, device = dom0.plug(leaf)
    copied = dom0.call("kernel.py", "copy_vdi", dev=dev, size_bytes="65536", kind="kernel")
    with open(copied["path"], "rb") as f:
        assert f.read() == chain_files["child"][:65536]
    assert dom0.call("kernel.py", "remove_file", path=copied["path"])["removed"] is True


def test_pluginlib_run_feeds_input_under_python_3_6():
    # Python 3.6's subprocess.run refuses ``stdin`` next to ``input``, even
    # stdin=None; 3.7 accepts it, and vermin cannot tell.
    interpreter = _python36()
    if interpreter is None:
        pytest.skip("no Python 3.6 interpreter here (set NXS_PYTHON36)")
    proc = subprocess.run(
        [interpreter, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
         "import nxs_pluginlib as p; "
         "print(p.run(['cat'], input_text='fed\\n')); print(p.run(['cat']))", PLUGIN_DIR],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["(0, 'fed\\n')", "(0, '')"]
