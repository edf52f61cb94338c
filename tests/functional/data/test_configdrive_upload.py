"""A config drive built here, uploaded into a simulator VDI, read back from it.

The ISO goes through each upload format into a 64 MiB VDI (as the
independent backend does), comes back with ``GET /export_raw_vdi``, and
isoinfo/bsdtar read the exported disk.
"""

import json
import shutil
import subprocess
import urllib.request

import pytest

from agent import configdrive, upload
from nova_xen_split.xenhost import xapi
from tests.conftest import need

UUID = "3f0e5a7c-8d2b-4e61-9c4a-5b7d1e2f3a40"


@pytest.fixture
def session(xapi_sim):
    s = xapi.XapiSession(xapi_sim.url, "root", xapi_sim.password).login()
    yield s
    s.logout()


@pytest.mark.parametrize("fmt", ["vhd", "chunked"])
def test_uploaded_config_drive_reads_back_with_its_metadata(session, tmp_path, fmt):
    for tool in ("isoinfo", "bsdtar"):
        need(shutil.which(tool), "%s is not installed" % tool)
    iso = str(tmp_path / "cd.iso")
    configdrive.build_configdrive(iso, {"uuid": UUID, "hostname": "vm"},
                                  user_data=b"#cloud-config\n")
    sr = session.call("SR.get_all")[0]
    vdi = session.call("VDI.create", {
        "name_label": "config drive", "name_description": "", "SR": sr,
        "virtual_size": str(configdrive.CONFIGDRIVE_SIZE_BYTES), "type": "user",
        "sharable": False, "read_only": False, "other_config": {}, "sm_config": {},
        "xenstore_data": {}, "tags": []})

    upload.upload_file(session, vdi, iso, fmt)

    exported = tmp_path / "exported.raw"
    url = session.http_url("/export_raw_vdi", vdi=vdi, format="raw")
    with urllib.request.urlopen(url, timeout=60) as response, open(exported, "wb") as f:
        shutil.copyfileobj(response, f)
    info = subprocess.run(["isoinfo", "-d", "-i", str(exported)], capture_output=True,
                          text=True, timeout=60, check=True).stdout
    assert "Volume id: config-2" in info
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["bsdtar", "-xf", str(exported), "-C", str(out)], check=True, timeout=60)
    meta = json.loads((out / "openstack" / "latest" / "meta_data.json").read_bytes())
    assert meta["uuid"] == UUID
    assert (out / "openstack" / "latest" / "user_data").read_bytes() == b"#cloud-config\n"
