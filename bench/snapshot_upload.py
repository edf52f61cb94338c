"""Snapshot upload through the agent against XAPI's VHD export alone.

One run, everything on this machine:

* ``xapi-sim`` (no compute VM) holding a VDI of ``--size-mib`` with
  ``--data-percent`` of it data (1 MiB runs spread evenly, random bytes);
* a real ``nova-xen-split-agent`` process (independent mode, Unix socket);
* the image service: a real Glance (nova_xen_split/cmd/glance_server.py;
  ``--target glance``, the default when Glance is installed), the loopback stand-in writing
  uploads to disk and hashing them as Glance does (MD5 and SHA-512;
  ``--target stand-in``), or the stand-in receiving the bytes and dropping
  them, as the export's baseline below does (``--target sink``): what the
  agent's side costs, the image service's own work left out.

Each round measures, interleaved:

* ``export``: ``GET /export_raw_vdi?format=vhd`` of the snapshot VDI, the
  body received and dropped: what any uploader that streams XAPI's export
  pays at least;
* ``upload``: the agent's ``upload_snapshot`` of the same VDI into a new
  queued image (the export streamed into the image service as a VHD
  tarball), until the image is active;
* ``ingest``: the same tarball, saved to a file once, sent with
  ``sendfile`` in a plain ``PUT /v2/images/<id>/file`` into a new queued
  image: what the image service takes at most, whoever uploads.

Prints the medians, the ratio upload / export (target <= 1.2), the ratio
upload / max(export, ingest) (what the uploader adds over the slower of
its two ends), and the agent's CPU per upload (``/proc/<pid>/stat``).

Run as root (the simulator plugs loop devices):
    .venv/bin/python bench/snapshot_upload.py [--rounds N] [--target glance|stand-in]
"""

import argparse
import http.client
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.parse

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from agent_import import cpu_seconds, start_agent, write_agent_config  # noqa: E402
from inputs import drop_page_cache_of  # noqa: E402

from agent import snapshot  # noqa: E402
from nova_xen_split.cmd import demo_env  # noqa: E402
from nova_xen_split.cmd.image_service import ImageService  # noqa: E402
from nova_xen_split.xenhost import marks, xapi  # noqa: E402

MiB = 1 << 20


def make_snapshot(session, sim, size_bytes, data_percent, instance_uuid, agent_host):
    """A VDI with data, snapshotted and marked as the driver marks it: (ref, uuid, path)."""
    pool = session.call("pool.get_all")[0]
    sr = session.call("pool.get_default_SR", pool)
    root = session.call("VDI.create", {
        "name_label": "bench root", "name_description": "", "SR": sr,
        "virtual_size": str(size_bytes), "type": "user", "sharable": False,
        "read_only": False, "other_config": {}, "xenstore_data": {}, "sm_config": {},
        "tags": []})
    root_path = os.path.join(sim.state_dir, "sr", session.call("SR.get_uuid", sr),
                             session.call("VDI.get_uuid", root) + ".raw")
    runs = max(1, size_bytes * data_percent // 100 // MiB)
    stride = size_bytes // runs
    with open(root_path, "r+b") as f:
        for index in range(runs):
            f.seek(index * stride)
            f.write(os.urandom(MiB))
    snap = session.call("VDI.snapshot", root, {})
    session.call("VDI.set_other_config", snap, marks.snapshot_marks(instance_uuid, agent_host))
    session.call("VDI.destroy", root)
    uuid = session.call("VDI.get_uuid", snap)
    return snap, uuid, os.path.join(os.path.dirname(root_path), uuid + ".raw")


def get_export(session, vdi_ref):
    """``GET /export_raw_vdi?format=vhd`` of the VDI: (connection, response)."""
    url = urllib.parse.urlsplit(session.http_url("/export_raw_vdi", vdi=vdi_ref,
                                                 format="vhd"))
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    conn.request("GET", "%s?%s" % (url.path, url.query))
    return conn, conn.getresponse()


def save_tarball(session, vdi_ref, path):
    """The VDI's VHD export as the agent's tarball, in a file; its length."""
    conn, response = get_export(session, vdi_ref)
    member = int(response.getheader("Content-Length"))
    with open(path, "wb") as f:
        f.write(snapshot.tar_header(member))
        shutil.copyfileobj(response, f, 4 * MiB)
        f.write(snapshot.tar_tail(member))
    conn.close()
    return snapshot.tar_length(member)


def time_ingest(images_url, image_id, path):
    """Seconds for the image service to take ``path`` as the image's data."""
    url = urllib.parse.urlsplit(images_url)
    length = os.path.getsize(path)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    start = time.monotonic()
    conn.putrequest("PUT", "/v2/images/%s/file" % image_id, skip_accept_encoding=True)
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Content-Length", str(length))
    conn.endheaders()
    with open(path, "rb") as f:
        conn.sock.sendfile(f)
    response = conn.getresponse()
    response.read()
    elapsed = time.monotonic() - start
    conn.close()
    if response.status != 204:
        raise SystemExit("ingest: HTTP %d" % response.status)
    return elapsed


def time_export(session, vdi_ref):
    """Seconds to receive the VDI's VHD export and drop it; (seconds, bytes)."""
    buffer = memoryview(bytearray(4 * MiB))
    start = time.monotonic()
    conn, response = get_export(session, vdi_ref)
    total = 0
    while True:
        got = response.readinto(buffer)
        if not got:
            break
        total += got
    elapsed = time.monotonic() - start
    conn.close()
    if total != int(response.getheader("Content-Length")):
        raise SystemExit("export ended short")
    return elapsed, total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--data-percent", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--target", choices=("glance", "stand-in", "sink"), default=None)
    parser.add_argument("--work-dir", default=None)
    args = parser.parse_args()
    from nova_xen_split.cmd import glance_server
    target = args.target or ("glance" if glance_server.available() else "stand-in")
    work = tempfile.mkdtemp(prefix="nxs-bench-snap-", dir=args.work_dir)
    sim = agent = service = glance = None
    try:
        if target == "glance":
            glance = glance_server.GlanceProcess(os.path.join(work, "glance")).start()
            images_url = glance.url

            def new_image(**formats):
                return glance.create_image(name="bench snapshot", **formats)["id"]
        else:
            os.makedirs(os.path.join(work, "uploads"))
            service = ImageService(upload_dir=os.path.join(work, "uploads"),
                                   hash_uploads=target == "stand-in",
                                   keep_uploads=target == "stand-in")
            images_url = service.url

            def new_image(**formats):
                return demo_env.create_image(images_url, "bench snapshot")
        sim = demo_env.Simulator(os.path.join(work, "sim"), compute_vm=False).start()
        session = xapi.XapiSession(sim.url, "root", demo_env.SIM_PASSWORD,
                                   timeout=3600).login()
        if service is not None:
            service.start()   # a thread: the uploads it keeps are seen here
        log = open(os.path.join(work, "agent.log"), "w")
        agent, api, _, mode = start_agent(write_agent_config(work, sim, images_url), log,
                                          "bench-agent")
        instance = "5e1f0c9a-7b2d-4c3e-9f1a-2b3c4d5e6f70"
        snap, snap_uuid, snap_path = make_snapshot(
            session, sim, args.size_mib * MiB, args.data_percent, instance, "bench-agent")
        tarball = os.path.join(work, "snapshot.tar")
        save_tarball(session, snap, tarball)
        rounds = []
        for _ in range(args.rounds + 1):   # the first is a warm-up, not counted
            ingest_id = new_image(disk_format="vhd", container_format="ovf")
            ingest = time_ingest(images_url, ingest_id, tarball)
            (glance or service).delete(ingest_id)
            drop_page_cache_of(snap_path)
            export, vhd_bytes = time_export(session, snap)
            drop_page_cache_of(snap_path)
            image_id = new_image()
            cpu = cpu_seconds(agent.pid)
            start = time.monotonic()
            result = api.upload_snapshot(instance_uuid=instance, vdi_uuid=snap_uuid,
                                         image_id=image_id)
            upload = time.monotonic() - start
            rounds.append({"export": export, "upload": upload, "ingest": ingest,
                           "cpu": cpu_seconds(agent.pid) - cpu,
                           "bytes": result["size_bytes"], "vhd": vhd_bytes})
            if glance is not None:
                glance.delete(image_id)
            else:
                service.delete(image_id)
        rounds = rounds[1:]
        api.close()

        def median(key):
            return statistics.median(r[key] for r in rounds)

        ratio = statistics.median(r["upload"] / r["export"] for r in rounds)
        print("snapshot_upload: agent (%s mode) into %s; VDI %d MiB, %d %% data; VHD %d "
              "bytes, tarball %d bytes; %d round(s), medians" % (
                  mode, {"glance": "a real Glance (gunicorn)",
                         "stand-in": "the loopback stand-in (hashing MD5 + SHA-512)",
                         "sink": "the loopback stand-in dropping the bytes"}[target],
                  args.size_mib, args.data_percent, rounds[0]["vhd"], rounds[0]["bytes"],
                  len(rounds)))
        print("%-44s %8s %10s   %s" % ("measurement", "seconds", "MiB/s", "every round (s)"))
        for key, what in (("export", "VHD export alone (received, dropped)"),
                          ("ingest", "image service's ingest alone (file PUT)"),
                          ("upload", "upload_snapshot (export -> image service)")):
            print("%-44s %8.2f %10.1f   %s" % (what, median(key),
                                              median("vhd") / MiB / median(key),
                                              " ".join("%.2f" % r[key] for r in rounds)))
        print("upload / export alone = %.2f (target <= 1.2) %s"
              % (ratio, "MET" if ratio <= 1.2 else "MISSED"))
        slower = statistics.median(r["upload"] / max(r["export"], r["ingest"])
                                   for r in rounds)
        print("upload / max(export alone, ingest alone) = %.2f" % slower)
        print("agent CPU per upload: %.2f s (%.2f s per GiB of VHD)"
              % (median("cpu"), median("cpu") / (median("vhd") / (1 << 30))))
    finally:
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(60)
        for thing in (sim, service, glance):
            if thing is not None:
                thing.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
