"""The dom0 image plugin (``vhd_images.download_vhd``) against a plain download.

One run, everything on this machine:

* a loopback image service (``/v2/images/<id>/file``, X-Auth-Token checked)
  serving an uncompressed tarball of one dynamic VHD made by ``qemu-img
  convert -O vpc`` from a raw disk of ``--size-mib`` with every other 2 MiB
  block random (half the disk allocated);
* ``xapi-sim`` (no compute VM), the plugin called with ``host.call_plugin``
  exactly as the agent calls it;
* the baseline, measured in the same run: ``curl -s ... | tar -x`` of the
  same URL into a directory on the same filesystem (download + unpack, no
  checks, no re-linking).

Prints the seconds and MB/s (tarball bytes / wall time) of each, the ratio,
and the ``SR.scan`` time that follows (the simulator materialising the VHD
as a raw VDI — not the plugin's work, shown for scale).

Run as root (the simulator plugs loop devices):
    .venv/bin/python bench/dom0_download_vhd.py [--size-mib 1024] [--work-dir DIR]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import XenAPI  # noqa: E402

from nova_xen_split.cmd import demo_env  # noqa: E402
from nova_xen_split.cmd.image_service import ImageService  # noqa: E402

BLOCK = 2 << 20
TOKEN = "bench-token"
IMAGE_ID = "b0000000-0000-4000-8000-000000000002"


def make_tarball(work, size_mib):
    raw = os.path.join(work, "disk.raw")
    with open(raw, "wb") as f:
        f.truncate(size_mib << 20)
        for offset in range(0, size_mib << 20, 2 * BLOCK):
            f.seek(offset)
            f.write(os.urandom(BLOCK))
    vhd = os.path.join(work, "image.vhd")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc",
                    "-o", "subformat=dynamic,force_size=on", raw, vhd],
                   check=True, timeout=600)
    os.unlink(raw)
    tar_path = os.path.join(work, "image.tar")
    with tarfile.open(tar_path, "w") as tar:
        tar.add(vhd, arcname="image.vhd")
    os.unlink(vhd)
    return tar_path


def serve(tar_path):
    """The image service (in a thread) with the tarball as image IMAGE_ID,
    the token checked and no checksum (the baseline checks none either)."""
    service = ImageService(token=TOKEN, send_md5=False)
    service.add(tar_path, IMAGE_ID, disk_format="vhd", container_format="ovf")
    return service.start(), service.url


def baseline(endpoint, target_dir):
    os.makedirs(target_dir)
    start = time.monotonic()
    curl = subprocess.Popen(["curl", "-sf", "-H", "X-Auth-Token: " + TOKEN,
                             endpoint + "/v2/images/%s/file" % IMAGE_ID], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", target_dir], stdin=curl.stdout, check=True,
                   timeout=1800)
    curl.stdout.close()
    if curl.wait(60) != 0:
        raise RuntimeError("curl failed")
    subprocess.run(["sync", "-f", target_dir], check=True, timeout=600)
    return time.monotonic() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--work-dir", default=None)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="nxs-bench-vhd-", dir=args.work_dir)
    sim = None
    server = None
    try:
        tar_path = make_tarball(work, args.size_mib)
        tar_mb = os.path.getsize(tar_path) / 1e6
        server, endpoint = serve(tar_path)
        sim = demo_env.Simulator(os.path.join(work, "sim"), compute_vm=False).start()
        session = XenAPI.Session(sim.url)
        session.xenapi.login_with_password("root", demo_env.SIM_PASSWORD, "1.0", "bench")
        api = session.xenapi
        host = api.host.get_all()[0]
        sr = api.pool.get_default_SR(api.pool.get_all()[0])
        sr_path = api.PBD.get_device_config(api.SR.get_PBDs(sr)[0])["path"]

        base_s = baseline(endpoint, os.path.join(sr_path, ".baseline"))
        shutil.rmtree(os.path.join(sr_path, ".baseline"))

        start = time.monotonic()
        api.host.call_plugin(host, "vhd_images.py", "download_vhd", {
            "image_id": IMAGE_ID, "endpoint": endpoint, "auth_token": TOKEN,
            "sr_path": sr_path})
        plugin_s = time.monotonic() - start
        start = time.monotonic()
        api.SR.scan(sr)
        scan_s = time.monotonic() - start
        session.xenapi.session.logout()

        print("setup: %d MiB virtual disk, half allocated; tarball %.0f MB; loopback "
              "HTTP; SR on %s; %d CPUs" % (args.size_mib, tar_mb, work, os.cpu_count()))
        print("%-34s %8s %9s" % ("", "seconds", "MB/s"))
        print("%-34s %8.2f %9.0f" % ("baseline curl | tar -x", base_s, tar_mb / base_s))
        print("%-34s %8.2f %9.0f" % ("download_vhd (host.call_plugin)", plugin_s,
                                     tar_mb / plugin_s))
        print("plugin / baseline throughput: %.0f %%" % (100 * base_s / plugin_s))
        print("SR.scan afterwards (simulator materialises the VDI): %.2f s" % scan_s)
    finally:
        if sim is not None:
            sim.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
