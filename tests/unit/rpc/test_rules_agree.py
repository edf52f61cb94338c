"""The method table's rules, and the checks that do not trust it, agree.

The privileged daemon and the dom0 plugins check their arguments again
(they trust no caller), with patterns of their own. Whatever the table
accepts they must accept, or a request would pass the interface and fail
half-way through its work; whatever it refuses they must refuse too.
"""

import importlib
import itertools
import os
import string
import sys

import pytest

from agent import privileged
from rpc import exceptions, methods

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
FS_TYPES = ("ext3", "ext4", "vfat", "swap")


def _labels():
    """Every printable ASCII character alone, at the start and inside a
    label, and lengths around each filesystem's limit."""
    chars = string.printable.strip() + " "
    labels = set(chars)
    labels |= {c + "ab" for c in chars} | {"ab" + c + "d" for c in chars}
    labels |= {"x" * n for n in range(1, 20)} | {"a.b", "-a", ".a", "_a", "A-B_c.d"}
    return sorted(labels)


@pytest.fixture
def plugin_module(monkeypatch):
    """Import a dom0 plugin here, with the simulator's XenAPIPlugin."""
    monkeypatch.syspath_prepend(os.path.join(REPO, "dom0", "simulator", "pluginlib"))
    monkeypatch.syspath_prepend(os.path.join(REPO, "dom0", "plugins"))
    loaded = []

    def load(name):
        loaded.append(name)
        return importlib.import_module(name)

    yield load
    for name in loaded + ["nxs_mbr", "nxs_pluginlib", "nxs_vhd"]:
        sys.modules.pop(name, None)


def _table_accepts_label(fs_type, label):
    args = dict(instance_uuid="3f1c2a4e-8b6d-4c1e-9f0a-1b2c3d4e5f60",
                kind="swap" if fs_type == "swap" else "ephemeral", size_mb=64,
                fs_type=fs_type, label=label)
    try:
        methods.validate("generate_disk", args)
        return True
    except exceptions.InvalidRequest as e:
        assert e.kwargs["field"] == "label", e
        return False


def test_the_dom0_plugin_takes_exactly_the_labels_the_table_takes(plugin_module):
    partition_utils = plugin_module("partition_utils")
    disagree = []
    for fs_type, label in itertools.product(FS_TYPES, _labels()):
        try:
            partition_utils._label_arg({"fs_label": label}, fs_type)
            plugin = True
        except partition_utils.InvalidArgument:
            plugin = False
        if plugin != _table_accepts_label(fs_type, label):
            disagree.append((fs_type, label, plugin))
    assert disagree == []


def test_the_privileged_daemon_takes_exactly_the_labels_the_table_takes(monkeypatch):
    # The entrypoint runs here (client mode off) on a stand-in partition, and
    # its command is recorded instead of run: only its argument check is tested.
    privileged.agent_ctx.set_client_mode(False)
    monkeypatch.setattr(privileged, "_partition", lambda operation, name: "/nonexistent")
    ran = []
    monkeypatch.setattr(privileged, "_run", lambda *args, **kwargs: ran.append(args))
    disagree = []
    try:
        for fs_type, label in itertools.product(FS_TYPES, _labels()):
            try:
                privileged.mkfs("xvdb1", fs_type, label)
                daemon = True
            except exceptions.DiskOperationFailed:
                daemon = False
            if daemon != _table_accepts_label(fs_type, label):
                disagree.append((fs_type, label, daemon))
    finally:
        privileged.agent_ctx.set_client_mode(True)
    assert disagree == []
    assert ran  # good labels did reach the command


def test_the_dom0_image_plugin_takes_exactly_the_image_ids_the_table_takes(plugin_module):
    vhd_images = plugin_module("vhd_images")
    candidates = set(_labels()) | {".", "..", "a" * 64, "a" * 65, "../x", "a/b", "cirros-0.6.2",
                                   "3f1c2a4e-8b6d-4c1e-9f0a-1b2c3d4e5f60",
                                   "3F1C2A4E-8B6D-4C1E-9F0A-1B2C3D4E5F60",
                                   "3f1c2a4e-8b6d-4c1e-9f0a-1b2c3d4e5f60\n",
                                   "3f1c2a4e8b6d4c1e9f0a1b2c3d4e5f60"}
    disagree = []
    for image_id in sorted(candidates):
        plugin = bool(vhd_images.IMAGE_ID_RE.fullmatch(image_id))
        try:
            methods.validate("fetch_image", dict(
                instance_uuid="3f1c2a4e-8b6d-4c1e-9f0a-1b2c3d4e5f60", image_id=image_id,
                disk_format="vhd"))
            table = True
        except exceptions.InvalidRequest:
            table = False
        if plugin != table:
            disagree.append((image_id, plugin))
    assert disagree == []
