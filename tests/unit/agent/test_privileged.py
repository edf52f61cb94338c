"""The privileged entrypoints refuse arguments outside their bounds.

The entrypoints run in this process (privsep client mode off), so each
refusal is shown to happen before any command runs; that they work is shown
against real loop devices in tests/functional/agent.
"""

import pytest

from agent import privileged
from rpc import exceptions


@pytest.fixture
def in_process(tmp_path, monkeypatch):
    privileged.agent_ctx.set_client_mode(False)
    monkeypatch.setattr(privileged, "_device_dir", str(tmp_path))
    (tmp_path / "xvdb").write_bytes(b"")  # a regular file, not a block device
    yield tmp_path
    privileged.agent_ctx.set_client_mode(True)


@pytest.mark.parametrize("call,reason", [
    (lambda: privileged.mkfs("../sda1", "ext4", "x"), "not a device name"),
    (lambda: privileged.mkfs("/dev/sda1", "ext4", "x"), "not a device name"),
    (lambda: privileged.mkfs("xvdc1", "ext4", "x"), "no such device"),
    (lambda: privileged.make_partition("xvdb", 2048, None, "83", False),
     "not a block device"),
    (lambda: privileged.chown_device("xvdb; rm -rf /", 0), "not a device name"),
    (lambda: privileged.get_partitions("loop0"), "not a device name"),
    (lambda: privileged.inject_files("sda0", []), "not a device name"),
    (lambda: privileged.inject_files("/dev/sda", []), "not a device name"),
    (lambda: privileged.inject_files("xvdc", []), "no such device"),  # a disk name is fine
])
def test_devices_must_be_block_devices_named_under_device_dir(in_process, call, reason):
    with pytest.raises(exceptions.DiskOperationFailed, match=reason):
        call()


def test_numbers_and_choices_are_checked(in_process, monkeypatch):
    # Pretend xvdb is a block device so the number checks are reached.
    monkeypatch.setattr(privileged, "_disk", lambda operation, name: "/nonexistent")
    monkeypatch.setattr(privileged, "_block_device",
                        lambda operation, name, pattern: "/nonexistent")
    with pytest.raises(exceptions.DiskOperationFailed, match="start_sector"):
        privileged.make_partition("xvdb", 0, None, "83", False)
    with pytest.raises(exceptions.DiskOperationFailed, match="end_sector"):
        privileged.make_partition("xvdb", 2048, 100, "83", False)
    with pytest.raises(exceptions.DiskOperationFailed, match="partition type"):
        privileged.make_partition("xvdb", 2048, None, "ee", False)
    with pytest.raises(exceptions.DiskOperationFailed, match="uid"):
        privileged.chown_device("xvdb", -1)
    with pytest.raises(exceptions.DiskOperationFailed, match="unknown fs type"):
        privileged.mkfs("xvdb1", "xfs", "x")
    with pytest.raises(exceptions.DiskOperationFailed, match="label"):
        privileged.mkfs("xvdb1", "ext4", "a b")
    with pytest.raises(exceptions.DiskOperationFailed, match=r"files\[0\]\[0\] must be an abs"):
        privileged.inject_files("xvdb1", [("relative/path", b"x")])
    with pytest.raises(exceptions.DiskOperationFailed, match=r"files\[0\]\[0\] must name a"):
        privileged.inject_files("xvdb1", [("/etc/../../x", b"x")])
    with pytest.raises(exceptions.DiskOperationFailed, match=r"files\[1\]\[0\] lies under"):
        privileged.inject_files("xvdb1", [("/etc/a", b"x"), ("/etc/a/b", b"y")])
    with pytest.raises(exceptions.DiskOperationFailed, match="authorized_key must match"):
        privileged.inject_files("xvdb1", [], authorized_key="ssh-rsa A a\nssh-rsa B b")
    with pytest.raises(exceptions.DiskOperationFailed,
                       match="files name /root/.ssh/authorized_keys, where the key goes"):
        privileged.inject_files("xvdb1", [("/root/.ssh", b"x")], authorized_key="ssh-rsa A")
