"""Image fetch through the agent's independent backend, against baselines.

One run, everything on this machine:

* a loopback image service (``/v2/images/<id>/file``) serving a 1 GiB dense
  raw image and a 4 GiB raw image with 5 % data;
* ``xapi-sim`` (no compute VM) and a real ``nova-xen-split-agent`` process
  (independent mode, Unix-socket transport) that fetches both with
  ``fetch_image(disk_format=raw)``;
* baselines measured in the same run: ``cp`` of the same files on the same
  disk, the simulator's own import rate (one ``PUT /import_raw_vdi`` of the
  dense file's bytes with Content-Length, sent with sendfile), and sending
  the sparse image as plain raw the same way.

Prints MB/s, the ratios against the targets (dense ≥ 80 % of the
simulator's import rate; sparse ≥ 10× faster than plain raw) and the
agent's peak RSS (VmHWM; target < 150 MiB).

Run as root (the simulator plugs loop devices):
    .venv/bin/python bench/agent_import.py [--work-dir DIR]
"""

import argparse
import http.client
import http.server
import os
import shutil
import signal
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from oslo_config import cfg  # noqa: E402

from nova_xen_split import conf as nxs_conf  # noqa: E402
from nova_xen_split import xapi  # noqa: E402
from rpc import client as rpc_client  # noqa: E402
from rpc import transports  # noqa: E402
from tests.conftest import SimProcess  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
AGENT = os.path.join(os.path.dirname(sys.executable), "nova-xen-split-agent")


# -- the image service ----------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        path = self.server.images.get(self.path.split("/")[3])
        size = os.path.getsize(path)
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        self.wfile.flush()
        with open(path, "rb") as f:
            # Holes go out from a zero buffer, data with sendfile: the bytes
            # on the wire are the image's, without the kernel materialising
            # zero pages for every hole (an image service would not either).
            offset = 0
            while offset < size:
                data = _next_data(f.fileno(), offset, size)
                while offset < data:
                    count = min(len(_ZEROS), data - offset)
                    self.connection.sendall(_ZEROS[:count])
                    offset += count
                if offset >= size:
                    break
                hole = os.lseek(f.fileno(), offset, os.SEEK_HOLE)
                self.connection.sendfile(f, offset, hole - offset)
                offset = hole

    def log_message(self, *args):
        pass


_ZEROS = memoryview(bytes(4 * MiB))


def _next_data(fd, offset, size):
    try:
        return min(os.lseek(fd, offset, os.SEEK_DATA), size)
    except OSError:  # ENXIO: only a hole is left
        return size


class ImageService(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def __init__(self, images):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.images = images


# -- inputs ------------------------------------------------------------------------

def make_dense(path, size_bytes):
    block = os.urandom(4 * MiB)
    with open(path, "wb") as f:
        for _ in range(size_bytes // len(block)):
            f.write(block)


def make_sparse(path, size_bytes, data_fraction):
    """``data_fraction`` of the image in 1 MiB runs spread evenly."""
    runs = int(size_bytes * data_fraction) // MiB
    stride = size_bytes // runs
    with open(path, "wb") as f:
        f.truncate(size_bytes)
        for index in range(runs):
            f.seek(index * stride)
            f.write(os.urandom(MiB))
    return runs * MiB


def drop_page_cache_of(path):
    """Start the next measurement cold and without the previous one's dirty
    pages still being written back (which would be charged to it)."""
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# -- baselines ---------------------------------------------------------------------

def time_cp(src, dst):
    start = time.monotonic()
    subprocess.run(["cp", src, dst], check=True, timeout=3600)
    elapsed = time.monotonic() - start
    os.unlink(dst)
    return elapsed


def new_vdi(session, size_bytes, label):
    pool = session.call("pool.get_all")[0]
    sr = session.call("pool.get_default_SR", pool)
    return session.call("VDI.create", {
        "name_label": label, "name_description": "bench", "SR": sr,
        "virtual_size": str(size_bytes), "type": "user", "sharable": False,
        "read_only": False, "other_config": {}, "xenstore_data": {}, "sm_config": {},
        "tags": []})


def time_plain_put(session, path):
    """The simulator's own import: one raw PUT of every byte, via sendfile."""
    size = os.path.getsize(path)
    vdi = new_vdi(session, size, "bench plain raw")
    task = session.call("task.create", "bench", "plain raw import")
    url = urllib.parse.urlsplit(session.http_url(
        "/import_raw_vdi", vdi=vdi, task_id=task, format="raw"))
    start = time.monotonic()
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    conn.putrequest("PUT", "%s?%s" % (url.path, url.query), skip_accept_encoding=True)
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    response = http.client.HTTPResponse(conn.sock, method="PUT")
    response.begin()
    if response.status != 200:
        raise SystemExit("plain PUT refused: HTTP %d" % response.status)
    with open(path, "rb") as f:
        conn.sock.sendfile(f)
    session.wait_for_task(task, timeout=3600)
    elapsed = time.monotonic() - start
    conn.close()
    session.call("VDI.destroy", vdi)
    return elapsed


# -- the agent ---------------------------------------------------------------------

def write_agent_config(work, sim, image_url):
    path = os.path.join(work, "agent.conf")
    with open(path, "w") as f:
        f.write("[DEFAULT]\nhost = bench-agent\nstate_path = %s\n"
                "transport_url = unix://%s/agent.sock\n" % (work, work))
        f.write("[xenserver]\nconnection_url = %s\nconnection_password = %s\n"
                "vm_uuid_file = %s/none\nxenstore_read_command = false\n"
                % (sim.url, sim.password, work))
        f.write("[glance]\napi_servers = %s\n" % image_url)
        f.write("[agent]\nlong_rpc_timeout = 3600\nrpc_timeout = 60\n")
    return path


def peak_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", default=None,
                        help="where images, copies and the simulator state go")
    parser.add_argument("--dense-mib", type=int, default=1024)
    parser.add_argument("--sparse-mib", type=int, default=4096)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="nxs-bench-", dir=args.work_dir)
    sim = agent = None
    try:
        dense, sparse = os.path.join(work, "dense.raw"), os.path.join(work, "sparse.raw")
        dense_bytes, sparse_bytes = args.dense_mib * MiB, args.sparse_mib * MiB
        make_dense(dense, dense_bytes)
        sparse_data = make_sparse(sparse, sparse_bytes, 0.05)
        images = {"dense": dense, "sparse": sparse}
        service = ImageService(images)
        threading.Thread(target=service.serve_forever, daemon=True).start()
        image_url = "http://127.0.0.1:%d" % service.server_address[1]

        sim = SimProcess(os.path.join(work, "sim"), compute_vm=False).start()
        session = xapi.XapiSession(sim.url, "root", sim.password, timeout=3600).login()

        config = write_agent_config(work, sim, image_url)
        log = open(os.path.join(work, "agent.log"), "w")
        agent = subprocess.Popen([AGENT, "--config-file", config], stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        conf = cfg.ConfigOpts()
        nxs_conf.register_opts(conf)
        transports.register_opts(conf)
        conf(["--config-file", config])
        api = rpc_client.AgentAPI(conf, host="bench-agent")
        deadline = time.monotonic() + 60
        while True:
            try:
                mode = api.describe()["mode"]
                break
            except Exception:
                if time.monotonic() > deadline or agent.poll() is not None:
                    raise SystemExit("agent did not start; see %s" % log.name) from None
                time.sleep(0.2)
        rss_idle = peak_rss_kib(agent.pid)

        results = {}
        for name in ("dense", "sparse"):
            drop_page_cache_of(images[name])
            results["cp " + name] = time_cp(images[name], images[name] + ".copy")
        drop_page_cache_of(dense)
        results["sim import dense"] = time_plain_put(session, dense)
        drop_page_cache_of(sparse)
        results["plain raw sparse"] = time_plain_put(session, sparse)
        for name in ("dense", "sparse"):
            drop_page_cache_of(images[name])
            start = time.monotonic()
            fetched = api.fetch_image(instance_uuid=str(uuid.uuid4()), image_id=name,
                                      disk_format="raw", auth_token=None)
            results["agent " + name] = time.monotonic() - start
            api.destroy_vdis(vdi_uuids=[v["uuid"] for v in fetched["vdis"]])
        rss_peak = peak_rss_kib(agent.pid)
        api.close()

        def rate(name, size):
            return size / MiB / results[name]

        print("agent_import: independent backend (mode reported: %s), xapi-sim, "
              "loopback image service; work dir on %s" % (mode, work))
        print("  dense image:  %d MiB of random data" % args.dense_mib)
        print("  sparse image: %d MiB, %d MiB of data (5 %%) in 1 MiB runs"
              % (args.sparse_mib, sparse_data // MiB))
        print("%-22s %10s %10s" % ("measurement", "seconds", "MB/s"))
        for name, size in (("cp dense", dense_bytes), ("sim import dense", dense_bytes),
                           ("agent dense", dense_bytes), ("cp sparse", sparse_bytes),
                           ("plain raw sparse", sparse_bytes),
                           ("agent sparse", sparse_bytes)):
            print("%-22s %10.2f %10.1f" % (name, results[name], rate(name, size)))
        dense_ratio = results["sim import dense"] / results["agent dense"]
        sparse_ratio = results["plain raw sparse"] / results["agent sparse"]
        print("dense: agent / simulator import rate = %.0f %% (target >= 80 %%) %s"
              % (100 * dense_ratio, "MET" if dense_ratio >= 0.8 else "MISSED"))
        print("dense: agent / cp rate = %.0f %%"
              % (100 * results["cp dense"] / results["agent dense"]))
        print("sparse: plain raw time / agent time = %.1fx (target >= 10x) %s"
              % (sparse_ratio, "MET" if sparse_ratio >= 10 else "MISSED"))
        log.flush()
        with open(log.name) as agent_log:
            for line in agent_log:
                if "PUT(s)" in line:
                    print("agent log:", line.split("] ", 1)[-1].strip())
        print("agent peak RSS (VmHWM): %.1f MiB (idle %.1f MiB; target < 150 MiB) %s"
              % (rss_peak / 1024, rss_idle / 1024,
                 "MET" if rss_peak < 150 * 1024 else "MISSED"))
    finally:
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(agent.pid, signal.SIGKILL)
        if sim is not None:
            sim.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
