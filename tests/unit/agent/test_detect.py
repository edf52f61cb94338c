"""Finding the local VM's uuid: the uuid file, else xenstore."""

import stat
import uuid

from oslo_config import cfg

from agent import detect
from nova_xen_split.xenhost import conf as nxs_conf


def _conf(uuid_file, command):
    conf = cfg.ConfigOpts()
    nxs_conf.register_opts(conf)
    conf([])
    conf.set_override("vm_uuid_file", str(uuid_file), group="xenserver")
    conf.set_override("xenstore_read_command", command, group="xenserver")
    return conf


def _fake_xenstore_read(tmp_path, domid, vm_path):
    """An executable that answers like xenstore-read for two keys."""
    script = tmp_path / "xenstore-read"
    script.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  domid) echo %s ;;\n'
        '  /local/domain/%s/vm) echo %s ;;\n'
        '  *) exit 1 ;;\n'
        "esac\n" % (domid, domid, vm_path))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return [str(script)]


def test_the_uuid_file_wins(tmp_path):
    vm_uuid = str(uuid.uuid4())
    uuid_file = tmp_path / "uuid"
    uuid_file.write_text(vm_uuid.upper() + "\n")

    assert detect.local_vm_uuid(_conf(uuid_file, ["false"])) == vm_uuid


def test_xenstore_is_asked_when_the_file_is_missing(tmp_path):
    vm_uuid = str(uuid.uuid4())
    command = _fake_xenstore_read(tmp_path, 7, "/vm/%s" % vm_uuid)

    assert detect.local_vm_uuid(_conf(tmp_path / "missing", command)) == vm_uuid


def test_xenstore_is_asked_when_the_file_holds_garbage(tmp_path):
    vm_uuid = str(uuid.uuid4())
    uuid_file = tmp_path / "uuid"
    uuid_file.write_text("not-a-uuid")
    command = _fake_xenstore_read(tmp_path, 3, "/vm/%s" % vm_uuid)

    assert detect.local_vm_uuid(_conf(uuid_file, command)) == vm_uuid


def test_no_file_and_no_xenstore_means_no_local_vm(tmp_path):
    conf = _conf(tmp_path / "missing", [str(tmp_path / "no-such-xenstore-read")])

    assert detect.local_vm_uuid(conf) is None


def test_a_xenstore_answer_that_is_not_a_vm_path_is_ignored(tmp_path):
    command = _fake_xenstore_read(tmp_path, 3, "/local/domain/3")

    assert detect.local_vm_uuid(_conf(tmp_path / "missing", command)) is None
