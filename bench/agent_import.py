"""Image fetch through the agent's independent backend, against baselines.

One run, everything on this machine:

* a loopback image service (``/v2/images/<id>/file``) serving a 1 GiB dense
  raw image and a 4 GiB raw image with 5 % data;
* ``xapi-sim`` (no compute VM) and a real ``nova-xen-split-agent`` process
  (independent mode, Unix-socket transport) that fetches both with
  ``fetch_image(disk_format=raw)`` twice: downloaded from the image service
  (``agent dense``/``agent sparse``), and read from the image's file, which
  the image's record shows as its location and ``[glance] file_url_mounts``
  lets the agent read, as with a Glance filesystem store shared with the
  agent's host (``agent ... (file)``); the downloads are timed without a
  checksum (the image service sends none, so the agent checks none), and
  once more with a checksum, which the agent checks by default (``agent
  checked ...``), to show what the check costs: the record's multihash as
  Glance computes it (``--checksum``, SHA-512 by default as in Glance), or
  the download's Content-MD5 alone (``--checksum md5``, as for images
  uploaded before Glance's multihash);
* baselines measured in the same run: ``cp`` of the same files on the same
  disk, the simulator's own import rate (one ``PUT /import_raw_vdi`` of the
  dense file's bytes with Content-Length, sent with sendfile), sending the
  sparse image as plain raw the same way, and the floor: the time to merely
  read each image from the image service (a GET whose body is received and
  dropped), which no agent that streams the image can beat; for the dense
  image also the relay: the download spliced into a plain PUT by a process
  that never touches the bytes, the least any agent relaying a download
  pays (the image crosses loopback TCP twice); and the agent's reading side
  alone (``read-ahead``: the download read into the upload's windows with
  the zero check, nothing uploaded), run in this process with the agent's
  code.

The machine may be shared, so every measurement runs ``--rounds`` times,
interleaved (one round measures everything once, baselines beside the agent);
the figures are medians, and each ratio is the median of the ratios within
a round. Prints MB/s, the ratios against the targets (dense ≥ 80 % of the
simulator's import rate; sparse ≥ 10× faster than plain raw), the highest
sparse ratio the floor allows, and the agent's peak RSS (VmHWM over all
rounds; target < 150 MiB).

The floor matters for the sparse image: the image service streams every
byte of a raw image, zeros included (Glance has no sparse download), so an
agent that streams it can skip sending the zeros to XAPI but not receiving
them. Its time cannot go below the floor, and "plain raw time / floor" is
the highest sparse ratio reachable on the machine at hand, whatever the
agent does; the bytes sent to XAPI are shown beside it.

Checked downloads are held to hashing speed: each image's SHA-512 (the
``--checksum``) computed alone in this process (``hash ...``, the file read
from the page cache), and the target ``checked <= 1.15 x max(hash alone,
unchecked)``. The agent's CPU (user + system, all its threads, from
``/proc/<pid>/stat``) is read around every fetch and shown per GiB of
image. ``--glance`` also serves both images from a real Glance
(``nova_xen_split/cmd/glance_server.py``; installed by ``.ci/install
--tests``) to a second agent, which downloads them checked against
Glance's own SHA-512 (``glance checked ...``).

Real XAPI plugs the VDI into dom0 and starts vhd-tool for every PUT, which
the simulator does not charge for unless asked (``--sim-attach-seconds``);
the agent's log lines at the end give its PUT counts.

Run as root (the simulator plugs loop devices):
    .venv/bin/python bench/agent_import.py [--work-dir DIR] [--rounds N]
"""

import argparse
import hashlib
import http.client
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from inputs import drop_page_cache_of, make_dense, make_sparse  # noqa: E402  (bench/ is the script's directory)
from oslo_config import cfg  # noqa: E402

from agent import images as agent_images  # noqa: E402
from agent import readahead, upload  # noqa: E402
from nova_xen_split.cmd import demo_env  # noqa: E402
from nova_xen_split.cmd.image_service import ImageService  # noqa: E402
from nova_xen_split.xenhost import conf as nxs_conf  # noqa: E402
from nova_xen_split.xenhost import xapi  # noqa: E402
from rpc import client as rpc_client  # noqa: E402
from rpc import transports  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
AGENT = os.path.join(os.path.dirname(sys.executable), "nova-xen-split-agent")


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


def start_plain_put(session, vdi, task, size):
    """Headers of a raw PUT of ``size`` bytes, XAPI's early answer read."""
    url = urllib.parse.urlsplit(session.http_url(
        "/import_raw_vdi", vdi=vdi, task_id=task, format="raw"))
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    conn.putrequest("PUT", "%s?%s" % (url.path, url.query), skip_accept_encoding=True)
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    response = http.client.HTTPResponse(conn.sock, method="PUT")
    response.begin()
    if response.status != 200:
        raise SystemExit("plain PUT refused: HTTP %d" % response.status)
    return conn, response


def end_plain_put(session, task, conn, response):
    # XAPI closes the connection when the import has ended; the task is
    # asked then, as the agent does, so no polling delay is timed.
    while response.read(65536):
        pass
    session.wait_for_task(task, timeout=3600)
    conn.close()


def time_plain_put(session, path):
    """The simulator's own import: one raw PUT of every byte, via sendfile."""
    size = os.path.getsize(path)
    vdi = new_vdi(session, size, "bench plain raw")
    task = session.call("task.create", "bench", "plain raw import")
    start = time.monotonic()
    conn, response = start_plain_put(session, vdi, task, size)
    with open(path, "rb") as f:
        conn.sock.sendfile(f)
    end_plain_put(session, task, conn, response)
    elapsed = time.monotonic() - start
    session.call("VDI.destroy", vdi)
    return elapsed


def sid(label):
    """The stand-in's image id for one of this bench's images: a uuid, as
    Glance's ids are (the interface takes nothing else), the same every run."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "nxs-bench/" + label))


def time_relay(session, image_url, image_id, size):
    """The relay floor: the image moved from the image service into a raw PUT
    by a process that never touches its bytes (``splice`` socket → pipe →
    socket, no zero check, no framing). An agent that relays a download
    pays at least this: the image crosses loopback TCP twice."""
    vdi = new_vdi(session, size, "bench relay")
    task = session.call("task.create", "bench", "relay")
    url = urllib.parse.urlsplit(image_url)
    start = time.monotonic()
    get = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    get.request("GET", "/v2/images/%s/file" % image_id)
    image = get.getresponse()
    if int(image.getheader("Content-Length")) != size:
        raise SystemExit("image service sent another size")
    conn, response = start_plain_put(session, vdi, task, size)
    # What the response's reader already holds goes first, then the socket.
    held = image.fp.peek(1)[:size]
    conn.sock.sendall(image.fp.read(len(held)))
    moved = len(held)
    # Blocking sockets: a timeout makes them non-blocking underneath.
    get.sock.settimeout(None)
    conn.sock.settimeout(None)
    pipe_r, pipe_w = os.pipe()
    try:
        while moved < size:
            got = os.splice(get.sock.fileno(), pipe_w, min(1 << 20, size - moved))
            if not got:
                raise SystemExit("image service closed early")
            left = got
            while left:
                left -= os.splice(pipe_r, conn.sock.fileno(), left)
            moved += got
    finally:
        os.close(pipe_r)
        os.close(pipe_w)
    end_plain_put(session, task, conn, response)
    elapsed = time.monotonic() - start
    get.close()
    session.call("VDI.destroy", vdi)
    return elapsed


def time_readahead(conf, image_id):
    """Seconds the agent's reading side takes alone: the download opened as
    the agent opens it, read into the upload's two windows with the zero
    check, every window handed straight back (no upload). Beside the floor
    it shows whether reading, or sharing the CPUs with the upload, is what
    a download's time is made of."""
    start = time.monotonic()
    with agent_images.open_image(conf, image_id, None) as reader, \
            readahead.ReadAhead(reader, reader.size_bytes,
                                upload.WINDOW_BYTES // 2) as windows:
        for window in windows:
            windows.release(window)
    return time.monotonic() - start


def time_floor(image_url, image_id):
    """Seconds to receive the image from the image service and drop it."""
    url = urllib.parse.urlsplit(image_url)
    buffer = memoryview(bytearray(MiB))
    start = time.monotonic()
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    conn.request("GET", "/v2/images/%s/file" % image_id)
    response = conn.getresponse()
    remaining = int(response.getheader("Content-Length"))
    while remaining:
        got = response.readinto(buffer[:min(len(buffer), remaining)])
        if not got:
            raise SystemExit("image service closed early")
        remaining -= got
    elapsed = time.monotonic() - start
    conn.close()
    return elapsed


# -- the agent ---------------------------------------------------------------------

def start_agent(config, log, host):
    """An agent process on ``config``, answering: (process, AgentAPI, conf, mode)."""
    agent = subprocess.Popen([AGENT, "--config-file", config], stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    conf = cfg.ConfigOpts()
    nxs_conf.register_opts(conf)
    transports.register_opts(conf)
    conf(["--config-file", config])
    api = rpc_client.AgentAPI(conf, host=host)
    deadline = time.monotonic() + 60
    while True:
        try:
            return agent, api, conf, api.describe()["mode"]
        except Exception:
            if time.monotonic() > deadline or agent.poll() is not None:
                raise SystemExit("agent did not start; see %s" % log.name) from None
            time.sleep(0.2)


def start_glance(work, images):
    """A real Glance holding both images: (GlanceProcess, {name: image id})."""
    from nova_xen_split.cmd import glance_server
    if not glance_server.available():
        raise SystemExit("--glance: Glance is not installed (.ci/install --tests)")
    glance = glance_server.GlanceProcess(os.path.join(work, "glance")).start()
    ids = {}
    for name, path in images.items():
        ids[name] = glance.add_image(path, name=name)["id"]
    return glance, ids


def write_agent_config(work, sim, image_url, host="bench-agent"):
    # The images live in ``work``, which the agent sees at the same path.
    path = os.path.join(work, "agent.conf")
    with open(path, "w") as f:
        f.write("[DEFAULT]\nhost = %s\nstate_path = %s\n"
                "transport_url = unix://%s/agent.sock\n" % (host, work, work))
        # Every round must fetch the image: with the image cache on, the
        # rounds after the first would clone the cached VDI instead.
        f.write("[xenserver]\nconnection_url = %s\nconnection_password = %s\n"
                "vm_uuid_file = %s/none\nxenstore_read_command = false\n"
                "cache_images = none\n"
                % (sim.url, demo_env.SIM_PASSWORD, work))
        f.write("[glance]\napi_servers = %s\nfile_url_mounts = %s:%s\n"
                % (image_url, work, work))
        f.write("[agent]\nlong_rpc_timeout = 3600\nrpc_timeout = 60\n")
    return path


def peak_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def cpu_seconds(pid):
    """User + system CPU seconds of a process, all its threads."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_agent_fetch(api, image_id, cpu=None, pid=None, name=None):
    """Seconds the agent takes to fetch the image (its VDI is destroyed after);
    with ``cpu`` (a dict) and ``pid``, the agent's CPU seconds go to
    ``cpu[name]``."""
    before = cpu_seconds(pid) if pid else None
    start = time.monotonic()
    fetched = api.fetch_image(instance_uuid=str(uuid.uuid4()), image_id=image_id,
                              disk_format="raw", auth_token=None)
    elapsed = time.monotonic() - start
    if before is not None:
        cpu[name] = cpu_seconds(pid) - before
    api.destroy_vdis(vdi_uuids=[v["uuid"] for v in fetched["vdis"]])
    return elapsed


def time_hash(path, algorithm):
    """Seconds to hash the file alone, read from the page cache (read once
    before, untimed): the speed a checked download is held to."""
    buffer = memoryview(bytearray(4 * MiB))
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buffer):
            pass
        f.seek(0)
        hasher = hashlib.new(algorithm)
        start = time.monotonic()
        while True:
            got = f.readinto(buffer)
            if not got:
                break
            hasher.update(buffer[:got])
        return time.monotonic() - start


def warm_up(session, api, images):
    """One untimed import each way: the first import after the images were
    written runs far slower than the next ones (seen on the simulator's own
    import as on the agent's), which says nothing about either."""
    drop_page_cache_of(images["dense"])
    time_plain_put(session, images["dense"])
    time_agent_fetch(api, sid("dense"))
    time_agent_fetch(api, sid("dense-file"))


def measure_round(session, api, conf, images, image_url, agent_pid, algorithm,
                  glance_api=None, glance_pid=None, glance_ids=None):
    """Every measurement once, baselines next to the agent: {name: seconds};
    the agents' CPU seconds go under "cpu <name>"."""
    results = {}
    cpu = {}
    for name in ("dense", "sparse"):
        results["hash " + name] = time_hash(images[name], algorithm)
        if glance_api is not None:
            drop_page_cache_of(images[name])
            results["glance checked " + name] = time_agent_fetch(
                glance_api, glance_ids[name], cpu, glance_pid, "glance checked " + name)
    for name in ("dense", "sparse"):
        # First, so that the last two uploads in the agent's log are the
        # unchecked downloads (see report).
        drop_page_cache_of(images[name])
        results["agent checked " + name] = time_agent_fetch(
            api, sid(name + "-checked"), cpu, agent_pid, "agent checked " + name)
    for name in ("dense", "sparse"):
        path = images[name]
        drop_page_cache_of(path)
        results["cp " + name] = time_cp(path, path + ".copy")
        drop_page_cache_of(path)
        results[("sim import " if name == "dense" else "plain raw ") + name] = \
            time_plain_put(session, path)
        drop_page_cache_of(path)
        results["agent " + name] = time_agent_fetch(api, sid(name), cpu, agent_pid,
                                                    "agent " + name)
        drop_page_cache_of(path)
        results["floor " + name] = time_floor(image_url, sid(name))
        drop_page_cache_of(path)
        results["read-ahead " + name] = time_readahead(conf, sid(name))
        if name == "dense":
            drop_page_cache_of(path)
            results["relay dense"] = time_relay(session, image_url, sid(name),
                                                os.path.getsize(path))
        drop_page_cache_of(path)
        results["agent file " + name] = time_agent_fetch(api, sid(name + "-file"), cpu, agent_pid,
                                                         "agent file " + name)
    results.update(("cpu " + name, seconds) for name, seconds in cpu.items())
    return results


def report(args, mode, work, rounds, dense_bytes, sparse_bytes, sparse_data, log_path,
           rss_idle, rss_peak):
    checked = args.checksum.upper()

    def median(name):
        return statistics.median(r[name] for r in rounds)

    def median_ratio(numerator, denominator):
        return statistics.median(r[numerator] / r[denominator] for r in rounds)

    print("agent_import: independent backend (mode reported: %s), xapi-sim charging "
          "%.2f s per import, loopback image service; work dir on %s; %d round(s), "
          "medians" % (mode, args.sim_attach_seconds, work, len(rounds)))
    print("  dense image:  %d MiB of random data" % args.dense_mib)
    print("  sparse image: %d MiB, %d MiB of data (5 %%) in 1 MiB runs"
          % (args.sparse_mib, sparse_data // MiB))
    print("%-40s %8s %10s   %s" % ("measurement", "seconds", "MiB/s", "every round (s)"))
    for name, size, what in (
            ("hash dense", dense_bytes, " (%s alone)" % checked),
            ("cp dense", dense_bytes, ""),
            ("sim import dense", dense_bytes, " (one PUT, sendfile)"),
            ("floor dense", dense_bytes, " (image service read alone)"),
            ("read-ahead dense", dense_bytes, " (agent's reading side, no upload)"),
            ("relay dense", dense_bytes, " (spliced relay, no zero check)"),
            ("agent dense", dense_bytes, ""),
            ("agent checked dense", dense_bytes, " (download, %s checked)" % checked),
            ("agent file dense", dense_bytes, " (file location)"),
            ("glance checked dense", dense_bytes, " (from Glance, checked)"),
            ("hash sparse", sparse_bytes, " (%s alone)" % checked),
            ("cp sparse", sparse_bytes, ""),
            ("plain raw sparse", sparse_bytes, " (one PUT, sendfile)"),
            ("floor sparse", sparse_bytes, " (image service read alone)"),
            ("read-ahead sparse", sparse_bytes, " (agent's reading side, no upload)"),
            ("agent sparse", sparse_bytes, ""),
            ("agent checked sparse", sparse_bytes, " (download, %s checked)" % checked),
            ("agent file sparse", sparse_bytes, " (file location)"),
            ("glance checked sparse", sparse_bytes, " (from Glance, checked)")):
        if name not in rounds[0]:
            continue
        print("%-40s %8.2f %10.1f   %s" % (
            name + what, median(name), size / MiB / median(name),
            " ".join("%.2f" % r[name] for r in rounds)))
    # Both the median of the per-round ratios and the ratio of the medians
    # are shown; a target counts as met only if both meet it.
    dense_ratios = (median_ratio("sim import dense", "agent dense"),
                    median("sim import dense") / median("agent dense"))
    sparse_ratios = (median_ratio("plain raw sparse", "agent sparse"),
                     median("plain raw sparse") / median("agent sparse"))
    dense_ratio, sparse_ratio = min(dense_ratios), min(sparse_ratios)
    file_dense_ratios = (median_ratio("sim import dense", "agent file dense"),
                         median("sim import dense") / median("agent file dense"))
    file_sparse_ratios = (median_ratio("plain raw sparse", "agent file sparse"),
                          median("plain raw sparse") / median("agent file sparse"))
    print("dense: agent / simulator import rate = %.0f %% (ratio of medians %.0f %%; "
          "target >= 80 %%) %s" % (100 * dense_ratios[0], 100 * dense_ratios[1],
                                   "MET" if dense_ratio >= 0.8 else "MISSED"))
    print("dense: agent / cp rate = %.0f %%; agent / floor rate = %.0f %%"
          % (100 * median_ratio("cp dense", "agent dense"),
             100 * median_ratio("floor dense", "agent dense")))
    print("dense: downloading, the image crosses loopback twice: relay / simulator import "
          "rate = %.0f %% is the most an agent relaying the download reaches here "
          "without looking at a byte; the agent reaches %.0f %% of the relay's rate"
          % (100 * median_ratio("sim import dense", "relay dense"),
             100 * median_ratio("relay dense", "agent dense")))
    print("sparse: plain raw time / agent time = %.1fx (ratio of medians %.1fx; "
          "target >= 10x) %s" % (sparse_ratios[0], sparse_ratios[1],
                                 "MET" if sparse_ratio >= 10 else "MISSED"))
    print("from the file location: dense agent / simulator import rate = %.0f %% (ratio "
          "of medians %.0f %%; target >= 80 %%) %s"
          % (100 * file_dense_ratios[0], 100 * file_dense_ratios[1],
             "MET" if min(file_dense_ratios) >= 0.8 else "MISSED"))
    print("from the file location: sparse plain raw time / agent time = %.1fx (ratio of "
          "medians %.1fx; target >= 10x) %s"
          % (file_sparse_ratios[0], file_sparse_ratios[1],
             "MET" if min(file_sparse_ratios) >= 10 else "MISSED"))
    print("sparse: downloading, the agent must read all %d MiB from the image service: plain raw "
          "time / floor = %.1fx is the most any streaming agent can reach here; the "
          "agent takes %.0f %% of the floor's time"
          % (args.sparse_mib, median_ratio("plain raw sparse", "floor sparse"),
             100 * median_ratio("agent sparse", "floor sparse")))
    print("downloading, the agent's reading side alone (zero check, windows, no upload) "
          "takes %.0f %% (dense) and %.0f %% (sparse) of the floor's time; the whole "
          "download, uploading as it reads, %.0f %% and %.0f %%"
          % (100 * median_ratio("read-ahead dense", "floor dense"),
             100 * median_ratio("read-ahead sparse", "floor sparse"),
             100 * median_ratio("agent dense", "floor dense"),
             100 * median_ratio("agent sparse", "floor sparse")))
    print("checking the download's %s (on by default) costs: dense %.0f %% more time, "
          "sparse %.0f %% more (simulator import / checked dense = %.0f %%; plain raw / "
          "checked sparse = %.1fx)"
          % (checked, 100 * (median_ratio("agent checked dense", "agent dense") - 1),
             100 * (median_ratio("agent checked sparse", "agent sparse") - 1),
             100 * median_ratio("sim import dense", "agent checked dense"),
             median_ratio("plain raw sparse", "agent checked sparse")))
    for name in ("dense", "sparse"):
        bound = "max(hash alone %.2f s, unchecked %.2f s)" % (median("hash " + name),
                                                             median("agent " + name))
        # The bound is the larger of the two, so the ratio to it is the smaller.
        worst = min(median_ratio("agent checked " + name, "hash " + name),
                    median_ratio("agent checked " + name, "agent " + name))
        print("%s: checked %.2f s = %.2f x %s; target <= 1.15 %s"
              % (name, median("agent checked " + name), worst, bound,
                 "MET" if worst <= 1.15 else "MISSED"))
        key = "glance checked " + name
        if key in rounds[0]:
            print("%s, from a real Glance (SHA-512 and MD5 from Glance): checked "
                  "%.2f s = %.2f x the hash alone" % (
                      name, median(key), median_ratio(key, "hash " + name)))
    for name in ("agent dense", "agent checked dense", "agent file dense", "agent sparse",
                 "agent checked sparse", "glance checked dense", "glance checked sparse"):
        if "cpu " + name in rounds[0]:
            size = dense_bytes if "dense" in name else sparse_bytes
            print("agent CPU (user+sys, all threads), %s: %.2f s, %.2f s per GiB of image"
                  % (name, median("cpu " + name), median("cpu " + name) / (size / GiB)))
    with open(log_path) as agent_log:
        sent = [line.split("] ", 1)[-1].strip() for line in agent_log
                if "PUT(s)" in line and "stream" in line]
    for line in sent[-2:]:
        print("agent log (last round):", line)
    sparse_sent = re.search(r"sent (\d+) bytes", sent[-1]) if sent else None
    if sparse_sent:
        print("sparse: bytes sent to XAPI: plain raw %d, agent %s: %.1fx fewer"
              % (sparse_bytes, sparse_sent.group(1), sparse_bytes / int(sparse_sent.group(1))))
    print("agent peak RSS (VmHWM): %.1f MiB (idle %.1f MiB; target < 150 MiB) %s"
          % (rss_peak / 1024, rss_idle / 1024,
             "MET" if rss_peak < 150 * 1024 else "MISSED"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", default=None,
                        help="where images, copies and the simulator state go")
    parser.add_argument("--dense-mib", type=int, default=1024)
    parser.add_argument("--sparse-mib", type=int, default=4096)
    parser.add_argument("--checksum", default="sha512",
                        choices=("md5", "sha256", "sha512"),
                        help="what the checked downloads are checked against: the "
                        "record's multihash of this algorithm (Glance's "
                        "hashing_algorithm, sha512 by default), or md5: the "
                        "download's Content-MD5 alone")
    parser.add_argument("--sim-attach-seconds", type=float, default=0.0,
                        help="seconds the simulator waits in each import before "
                        "reading its body, as real XAPI's dom0 plug of the VDI "
                        "takes (default: none, as the simulator's own import rate "
                        "is measured)")
    parser.add_argument("--glance", action="store_true",
                        help="also fetch both images from a real Glance (checked), "
                        "through a second agent")
    parser.add_argument("--rounds", type=int, default=3,
                        help="times every measurement runs (medians are shown)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="nxs-bench-", dir=args.work_dir)
    sim = agent = service = glance = glance_agent = None
    try:
        dense, sparse = os.path.join(work, "dense.raw"), os.path.join(work, "sparse.raw")
        dense_bytes, sparse_bytes = args.dense_mib * MiB, args.sparse_mib * MiB
        make_dense(dense, dense_bytes)
        sparse_data = make_sparse(sparse, sparse_bytes, 0.05)
        images = {"dense": dense, "sparse": sparse}
        # <name>: no checksum; <name>-file: the file as location; <name>-checked:
        # its Content-MD5 and, unless --checksum md5, the record's multihash.
        service = ImageService(send_md5=False)
        for name, path in images.items():
            service.add(path, sid(name))
            service.add(path, sid(name + "-file"), location=True)
            service.add(path, sid(name + "-checked"), content_md5=True,
                        multihash=None if args.checksum == "md5" else args.checksum)
        # Its own process, so that its sends do not take turns for this
        # process's interpreter lock with the measurements (the floor's reads).
        image_url = service.start_process().url

        sim = demo_env.Simulator(os.path.join(work, "sim"), compute_vm=False, extra_args=[
            "--import-attach-seconds", str(args.sim_attach_seconds)]).start()
        session = xapi.XapiSession(sim.url, "root", demo_env.SIM_PASSWORD,
                                   timeout=3600).login()

        config = write_agent_config(work, sim, image_url)
        log = open(os.path.join(work, "agent.log"), "w")
        agent, api, conf, mode = start_agent(config, log, "bench-agent")
        rss_idle = peak_rss_kib(agent.pid)
        glance_api = glance_ids = None
        if args.glance:
            glance, glance_ids = start_glance(work, images)
            glance_work = os.path.join(work, "glance-agent")
            os.makedirs(glance_work)
            glance_log = open(os.path.join(glance_work, "agent.log"), "w")
            glance_agent, glance_api, _, _ = start_agent(
                write_agent_config(glance_work, sim, glance.url, "bench-agent-glance"),
                glance_log, "bench-agent-glance")

        # The reading-side measurement downloads unchecked, as the agent's
        # plain downloads do; its "no checksum" warning says nothing here.
        logging.getLogger("agent.images").setLevel(logging.ERROR)
        warm_up(session, api, images)
        rounds = [measure_round(session, api, conf, images, image_url, agent.pid,
                                args.checksum if args.checksum != "md5" else "md5",
                                glance_api, glance_agent.pid if glance_agent else None,
                                glance_ids)
                  for _ in range(args.rounds)]
        rss_peak = peak_rss_kib(agent.pid)
        api.close()
        log.flush()
        report(args, mode, work, rounds, dense_bytes, sparse_bytes, sparse_data,
               log.name, rss_idle, rss_peak)
    finally:
        for process in (agent, glance_agent):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
        if glance is not None:
            glance.stop()
        if sim is not None:
            sim.stop()
        if service is not None:
            service.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
