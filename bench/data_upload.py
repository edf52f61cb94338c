"""Throughput and memory of the agent's uploader against xapi-sim.

One run, one machine: a dense and a sparse disk image are sent into fresh
VDIs of a simulator started for the run, in every upload format, beside two
baselines measured in the same run: ``cp`` of the dense file on the same disk,
and a plain ``PUT /import_raw_vdi?format=raw`` of every byte (the simulator's
own import rate). Also the VHD encoder alone (stream to nowhere), and the
independent backend's path: a loopback image service (sendfile) read by
``agent.images`` into ``upload_stream``. Prints
MB/s of disk bytes covered and bytes sent; then, in a second untimed pass,
the peak Python memory (tracemalloc) of each upload; the process's peak RSS
at the end. ``--dir /dev/shm`` takes the disk out of the figures.

    .venv/bin/python -m bench.data_upload [--size-mib 1024] [--sparse-percent 5]
"""

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc

from oslo_config import cfg

from agent import images, upload, vhd
from nova_xen_split.cmd.image_service import ImageService
from nova_xen_split.xenhost import conf as nxs_conf
from nova_xen_split.xenhost import xapi

MiB = 1024 * 1024
PASSWORD = "bench"


def start_sim(state_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "dom0.simulator.server", "--state-dir", state_dir,
         "--port", "0", "--password", PASSWORD, "--no-compute-vm", "--no-loop-devices"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    for line in proc.stdout:
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            return proc, m.group(1)
    proc.wait(30)
    raise SystemExit("xapi-sim did not start")


def make_image(path, size, data_percent):
    """``data_percent`` of the disk as non-zero 1 MiB pieces spread evenly."""
    noise = os.urandom(MiB)
    pieces = size // MiB
    every = max(1, round(100 / data_percent)) if data_percent < 100 else 1
    with open(path, "wb") as f:
        f.truncate(size)
        for index in range(0, pieces, every):
            f.seek(index * MiB)
            f.write(index.to_bytes(8, "little") + noise[8:])
    subprocess.run(["sync"], check=True, timeout=600)


def new_vdi(session, size):
    sr = session.call("SR.get_all")[0]
    return session.call("VDI.create", {
        "name_label": "bench", "name_description": "", "SR": sr,
        "virtual_size": str(size), "type": "user", "sharable": False, "read_only": False,
        "other_config": {}, "sm_config": {}, "xenstore_data": {}, "tags": []})


def measure(label, size, action, results):
    """Time ``action``; MB/s counts the disk bytes covered (``size``)."""
    started = time.monotonic()
    sent = action()
    seconds = time.monotonic() - started
    results.append((label, size / seconds / 1e6, seconds, sent))


def peak_memory(action):
    """Peak bytes Python allocated while ``action`` ran (tracemalloc: untimed pass)."""
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def start_image_service(paths):
    """The image service (in a thread) serving each file as its base name,
    without a checksum: the uploads are measured, not the check."""
    service = ImageService(send_md5=False)
    for path in paths:
        service.add(path, os.path.basename(path))
    service.start()
    conf = cfg.ConfigOpts()
    nxs_conf.register_opts(conf)
    conf([], default_config_files=[])
    conf.set_override("api_servers", [service.url], group="glance")
    return service, conf


def send(session, vdi, kind, path, size, image_conf=None):
    """One upload of ``path``; returns the body bytes sent (None: not counted)."""
    sent = [0]

    def track(done, total):
        sent[0] = done

    if kind == "stream":
        with open(path, "rb", buffering=0) as reader:
            upload.upload_stream(session, vdi, reader, size)
        return None
    if kind == "image":
        with images.open_image(image_conf, os.path.basename(path), "token") as reader:
            upload.upload_stream(session, vdi, reader, reader.size_bytes)
        return None
    upload.upload_file(session, vdi, path, kind, progress=track)
    return sent[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--sparse-percent", type=float, default=5.0)
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    size = args.size_mib * MiB
    work = tempfile.mkdtemp(prefix="nxs-bench-", dir=args.dir)
    proc = None
    try:
        dense, sparse = os.path.join(work, "dense.raw"), os.path.join(work, "sparse.raw")
        make_image(dense, size, 100)
        make_image(sparse, size, args.sparse_percent)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        proc, url = start_sim(os.path.join(work, "sim"))
        session = xapi.XapiSession(url, "root", PASSWORD).login()
        results = []

        def cp():
            subprocess.run(["cp", "--sparse=never", dense, os.path.join(work, "copy")],
                           check=True, timeout=3600)
            subprocess.run(["sync"], check=True, timeout=600)
            os.unlink(os.path.join(work, "copy"))
            return size

        measure("baseline: cp dense (same disk, synced)", size, cp, results)

        def encode_only(path):
            def run():
                stream = vhd.VhdStream.from_file(path)
                return sum(len(piece) for piece in stream)
            return run

        measure("vhd encoder alone, dense", size, encode_only(dense), results)
        measure("vhd encoder alone, sparse", size, encode_only(sparse), results)

        cases = [
            ("baseline: plain raw PUT, dense", "raw", dense),
            ("upload_file vhd, dense", "vhd", dense),
            ("upload_file chunked, dense", "chunked", dense),
            ("upload_stream, dense", "stream", dense),
            ("baseline: plain raw PUT, sparse", "raw", sparse),
            ("upload_file vhd, sparse", "vhd", sparse),
            ("upload_file chunked, sparse", "chunked", sparse),
            ("upload_stream, sparse", "stream", sparse),
            ("image service -> upload_stream, dense", "image", dense),
            ("image service -> upload_stream, sparse", "image", sparse),
            # Again at the end: the disk's state drifts during a run.
            ("baseline: plain raw PUT, dense (again)", "raw", dense),
            ("baseline: plain raw PUT, sparse (again)", "raw", sparse),
        ]
        image_server, image_conf = start_image_service([dense, sparse])
        for label, kind, path in cases:
            vdi = new_vdi(session, size)
            # Start every case with no dirty pages of the last one pending.
            subprocess.run(["sync"], check=True, timeout=600)
            measure(label, size, lambda: send(session, vdi, kind, path, size, image_conf),  # noqa: B023
                    results)
            session.call("VDI.destroy", vdi)
        memory = []
        for label, kind, path in cases:
            if label.startswith("baseline"):
                continue
            vdi = new_vdi(session, size)
            peak = peak_memory(
                lambda: send(session, vdi, kind, path, size, image_conf))  # noqa: B023
            memory.append((label, peak))
            session.call("VDI.destroy", vdi)
        session.logout()
        image_server.stop()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
        shutil.rmtree(work, ignore_errors=True)

    print("setup: %d MiB images (dense: every byte non-zero; sparse: %.1f%% data in "
          "1 MiB pieces), xapi-sim on loopback, %d CPUs, python %s"
          % (args.size_mib, args.sparse_percent, os.cpu_count(), sys.version.split()[0]))
    print("%-42s %9s %8s %12s" % ("case", "MB/s", "seconds", "bytes sent"))
    for label, rate, seconds, sent in results:
        print("%-42s %9.1f %8.2f %12s" % (label, rate, seconds, "-" if sent is None else sent))
    print("peak Python memory per upload (tracemalloc, separate untimed pass):")
    for label, peak in memory:
        print("  %-40s %8.1f MiB" % (label, peak / MiB))
    rates = {label: rate for label, rate, *_ in results}
    base = max(rates["baseline: plain raw PUT, dense"],
               rates["baseline: plain raw PUT, dense (again)"])
    print("ratios against the better of the two baselines")
    for label in ("upload_file vhd, dense", "upload_file chunked, dense",
                  "upload_stream, dense", "image service -> upload_stream, dense"):
        print("%s vs plain raw PUT: %.0f%%" % (label, 100 * rates[label] / base))
    sparse_base = max(rates["baseline: plain raw PUT, sparse"],
                      rates["baseline: plain raw PUT, sparse (again)"])
    for label in ("upload_file vhd, sparse", "upload_file chunked, sparse",
                  "upload_stream, sparse", "image service -> upload_stream, sparse"):
        print("%s vs plain raw PUT of the same image: %.1fx" % (label,
                                                               rates[label] / sparse_base))
    print("peak RSS of this process: %.1f MiB before the uploads, %.1f MiB at the end"
          % (rss_before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


if __name__ == "__main__":
    main()
