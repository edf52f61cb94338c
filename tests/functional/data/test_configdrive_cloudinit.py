"""cloud-init's own config-drive reader on a drive built here.

cloud-init is the consumer that matters: its ``ConfigDriveReader`` picks the
newest version directory it knows, reads the metadata, user data, network
and vendor data, and resolves injected files through ``content_path``. It
runs under the system Python (Debian's ``cloud-init`` package), on the tree
bsdtar extracts, since this kernel cannot mount iso9660. `.ci/install --tests`
installs that package; without it the test skips (fails under
NXS_REQUIRE_REAL=1).
"""

import base64
import json
import os
import shutil
import subprocess

from agent import configdrive
from tests.conftest import need

SYSTEM_PYTHON = "/usr/bin/python3"
UUID = "c5b2f9a0-7e1d-4f3b-a2c4-0d9e8f7a6b51"

READ_WITH_CLOUD_INIT = """
import base64, json, sys
from cloudinit.sources.helpers import openstack
reader = openstack.ConfigDriveReader(sys.argv[1])
found = reader.read_v2()
print(json.dumps({
    "version_dir": reader._find_working_version(),
    "uuid": found["metadata"]["uuid"],
    "hostname": found["metadata"].get("hostname"),
    "admin_pass": found["metadata"].get("admin_pass"),
    "userdata": base64.b64encode(found["userdata"]).decode(),
    "files": {p: base64.b64encode(c).decode() for p, c in found["files"].items()},
    "networkdata": found["networkdata"],
    "vendordata": found["vendordata"],
    "ec2_instance_id": found["ec2-metadata"]["instance-id"],
}))
"""


def cloud_init_available():
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import cloudinit.sources.helpers.openstack"],
                           capture_output=True, timeout=60)
    return probe.returncode == 0


def test_cloud_init_reads_metadata_user_data_and_injected_files(tmp_path):
    need(shutil.which("bsdtar"), "bsdtar is not installed")
    need(cloud_init_available(),
         "cloud-init is not installed for %s (bash .ci/install --tests installs it)"
         % SYSTEM_PYTHON)
    user_data = b"#cloud-config\nhostname: from-user-data\n"
    iso = str(tmp_path / "cd.iso")
    configdrive.build_configdrive(
        iso, {"uuid": UUID, "hostname": "vm-7", "name": "vm-7"}, user_data=user_data,
        network_data={"links": [{"id": "eth0", "type": "phy"}], "networks": [],
                      "services": []},
        vendor_data={"cloud-init": "#cloud-config\n"},
        files=[["/etc/issue.net", b"welcome\n"]], admin_password="pw-1")
    tree = tmp_path / "drive"
    tree.mkdir()
    subprocess.run(["bsdtar", "-xf", iso, "-C", str(tree)], check=True, timeout=60)

    out = subprocess.run([SYSTEM_PYTHON, "-c", READ_WITH_CLOUD_INIT, str(tree)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)

    assert found["version_dir"] in configdrive.OPENSTACK_VERSIONS
    assert found["uuid"] == UUID and found["hostname"] == "vm-7"
    assert found["admin_pass"] == "pw-1"
    assert base64.b64decode(found["userdata"]) == user_data
    assert {path: base64.b64decode(data) for path, data in found["files"].items()} == {
        "/etc/issue.net": b"welcome\n"}
    assert found["networkdata"]["links"][0]["id"] == "eth0"
    assert found["vendordata"] == {"cloud-init": "#cloud-config\n"}
    assert found["ec2_instance_id"] == UUID
