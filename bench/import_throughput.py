"""How fast xapi-sim's ``PUT /import_raw_vdi`` writes, beside ``cp`` of the same bytes.

Two uploads, each timed from the first body byte sent until the import task
reports success, and compared with ``cp`` of the same source file to the same
filesystem in the same run, and with the same bytes sent over loopback TCP to
a reader that discards them (what no HTTP upload here can beat):

* a 1 GiB dense raw file of random data (``format=raw``);
* a 4 GiB dynamic VHD with 5 % of its 2 MiB blocks allocated, made with
  ``qemu-img convert -O vpc`` from a sparse raw file (``format=vhd``).

Page cache: caches cannot be dropped here, so both sides run on equal terms:
each source file is read once before timing (warm), destinations are new
files on the filesystem of the simulator's SR, ``sync`` runs before each
timing so neither side pays for what an earlier step left dirty, and neither
side syncs its own output unless ``--sync`` is given (then both fsync it
inside the timing). The machine may be shared: the load average is printed.
After one untimed round of each (the first large write of a run often pays
for reclaiming memory), each measurement runs ``--rounds`` times,
alternating cp and import; the best of each is compared (the least disturbed
by other work on the machine), the medians too, and the median of the
per-round ratios (each round's cp and import ran side by side).

    .venv/bin/python bench/import_throughput.py [--work-dir DIR] [--rounds N] [--sync]
"""

import argparse
import http.client
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import XenAPI

MiB = 1 << 20
GiB = 1 << 30
BLOCK = 2 * MiB
LISTEN_RE = re.compile(r"xapi-sim listening on (http://127\.0\.0\.1:\d+)")


def run(cmd, timeout=600):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError("%s failed (%d): %s" % (cmd, proc.returncode, proc.stderr))
    return proc.stdout


def write_random(path, size, offsets=None):
    """Random data: the whole file, or one 2 MiB block at each offset."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in (range(0, size, 4 * MiB) if offsets is None else offsets):
            f.seek(offset)
            f.write(os.urandom(min(4 * MiB if offsets is None else BLOCK, size - offset)))


def warm(path):
    with open(path, "rb") as f:
        while f.read(8 * MiB):
            pass


def meminfo(*keys):
    values = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, rest = line.split(":", 1)
            values[name] = int(rest.split()[0]) // 1024
    return ", ".join("%s %d MiB" % (k, values[k]) for k in keys)


class Simulator:
    def __init__(self, state_dir):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dom0.simulator.server", "--state-dir", state_dir,
             "--port", "0", "--no-compute-vm"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        self.url = None
        while time.monotonic() < deadline and self.url is None:
            line = self.proc.stdout.readline()
            if not line:
                break
            match = LISTEN_RE.search(line)
            if match:
                self.url = match.group(1)
        if self.url is None:
            self.stop()
            raise RuntimeError("xapi-sim did not start")
        self.session = XenAPI.Session(self.url)
        self.session.xenapi.login_with_password("root", "xapi-sim", "1.0", "bench")
        self.x = self.session.xenapi
        pool = self.x.pool.get_all()[0]
        self.sr = self.x.pool.get_default_SR(pool)
        self.sr_path = self.x.PBD.get_device_config(self.x.SR.get_PBDs(self.sr)[0])["path"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)
        self.proc.stdout.close()

    def new_vdi(self, size):
        vdi = self.x.VDI.create({"name_label": "bench", "SR": self.sr,
                                 "virtual_size": str(size), "type": "user",
                                 "sharable": False, "read_only": False, "other_config": {}})
        path = os.path.join(self.sr_path, self.x.VDI.get_uuid(vdi) + ".raw")
        return vdi, path

    def upload(self, vdi, path, fmt):
        """PUT the file; returns seconds from the first body byte to task success."""
        task = self.x.task.create("bench upload", "")
        split = urllib.parse.urlsplit(self.url)
        query = urllib.parse.urlencode({"session_id": self.session.handle, "vdi": vdi,
                                        "format": fmt, "task_id": task})
        conn = http.client.HTTPConnection(split.hostname, split.port, timeout=600)
        size = os.path.getsize(path)
        try:
            conn.putrequest("PUT", "/import_raw_vdi?" + query)
            conn.putheader("Content-Length", str(size))
            conn.endheaders()
            # XAPI answers before it reads the body; read that answer first.
            response = http.client.HTTPResponse(conn.sock, method="PUT")
            response.begin()
            if response.status != 200:
                raise RuntimeError("import answered %d" % response.status)
            started = time.monotonic()
            with open(path, "rb") as f:
                conn.sock.sendfile(f)
            while self.x.task.get_status(task) == "pending":
                time.sleep(0.005)
            elapsed = time.monotonic() - started
        finally:
            conn.close()
        status = self.x.task.get_status(task)
        if status != "success":
            raise RuntimeError("import task %s: %s" % (status, self.x.task.get_error_info(task)))
        self.x.task.destroy(task)
        return elapsed


def settle():
    """Write back what earlier steps left dirty, so it slows neither side."""
    os.sync()


def time_cp(src, dst, sync):
    settle()
    started = time.monotonic()
    run(["cp", src, dst])
    if sync:
        fd = os.open(dst, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return time.monotonic() - started


def time_loopback(src):
    """Seconds to move the file over loopback TCP to a reader that discards it.

    The ceiling of any HTTP upload on this machine: the same ``sendfile``
    sender and 4 MiB ``recv_into`` reads as the import, but no disk writes.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    done = []

    def receive():
        conn, _ = listener.accept()
        view = memoryview(bytearray(4 * MiB))
        with conn:
            while conn.recv_into(view):
                pass
        done.append(time.monotonic())

    reader = threading.Thread(target=receive)
    reader.start()
    settle()
    with socket.create_connection(listener.getsockname()) as sender, open(src, "rb") as f:
        started = time.monotonic()
        sender.sendfile(f)
    reader.join()
    listener.close()
    return done[0] - started


def time_import(sim, src, fmt, vdi_size, sync):
    vdi, vdi_path = sim.new_vdi(vdi_size)
    settle()
    elapsed = sim.upload(vdi, src, fmt)
    if sync:
        started = time.monotonic()
        fd = os.open(vdi_path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        elapsed += time.monotonic() - started
    return vdi, vdi_path, elapsed


def measure(sim, name, src, fmt, vdi_size, check, args, work):
    size = os.path.getsize(src)
    warm(src)
    print("\n%s: %s, %d bytes (%s)" % (name, os.path.basename(src), size, fmt))
    print("  page cache before timing: source warm (read once); %s; load average %s"
          % (meminfo("Cached", "Dirty", "Writeback", "MemFree"),
             " ".join("%.2f" % v for v in os.getloadavg())))
    # One untimed round first: the first large write of a run often pays for
    # reclaiming memory, whichever side does it.
    warmup_dst = os.path.join(work, "cp-copy")
    time_cp(src, warmup_dst, False)
    os.unlink(warmup_dst)
    vdi, _, _ = time_import(sim, src, fmt, vdi_size, False)
    sim.x.VDI.destroy(vdi)
    cp_times, import_times, tcp_times = [], [], []
    for round_no in range(1, args.rounds + 1):
        dst = os.path.join(work, "cp-copy")
        cp_s = time_cp(src, dst, args.sync)
        os.unlink(dst)
        tcp_times.append(time_loopback(src))
        vdi, vdi_path, imp_s = time_import(sim, src, fmt, vdi_size, args.sync)
        check(vdi_path)
        allocated = os.stat(vdi_path).st_blocks * 512
        sim.x.VDI.destroy(vdi)
        print("  round %d: cp %7.1f MB/s (%.2f s)   import %7.1f MB/s (%.2f s; %.0f MB/s of "
              "virtual disk, %d MiB allocated)"
              % (round_no, size / cp_s / 1e6, cp_s, size / imp_s / 1e6, imp_s,
                 vdi_size / imp_s / 1e6, allocated // MiB))
        cp_times.append(cp_s)
        import_times.append(imp_s)
    best_cp, best_import = min(cp_times), min(import_times)
    ratio = best_cp / best_import
    print("  best:    cp %7.1f MB/s   import %7.1f MB/s   import/cp = %.0f %%"
          % (size / best_cp / 1e6, size / best_import / 1e6, 100 * ratio))
    median_cp, median_import = statistics.median(cp_times), statistics.median(import_times)
    print("  median:  cp %7.1f MB/s   import %7.1f MB/s   import/cp = %.0f %%"
          % (size / median_cp / 1e6, size / median_import / 1e6,
             100 * median_cp / median_import))
    # cp and the import alternate, so each round's pair ran under the same
    # load: the median of the per-round ratios is the least noisy figure.
    paired = statistics.median(c / i for c, i in zip(cp_times, import_times, strict=True))
    print("  paired:  median of the per-round import/cp ratios = %.0f %%" % (100 * paired))
    print("  loopback TCP alone (no disk writes), best %.1f MB/s, median %.1f MB/s: "
          "import reaches %.0f %% / %.0f %% of it"
          % (size / min(tcp_times) / 1e6, size / statistics.median(tcp_times) / 1e6,
             100 * min(tcp_times) / best_import,
             100 * statistics.median(tcp_times) / median_import))
    return ratio, median_cp / median_import, paired


def same_content(expected_raw, size):
    def check(vdi_path):
        run(["cmp", "-n", str(size), expected_raw, vdi_path])
    return check


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", help="where sources and the simulator state go "
                        "(default: a new directory under /var/tmp)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sync", action="store_true", help="fsync outputs inside timing")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="nxs-bench-", dir=args.work_dir or "/var/tmp")
    sim = None
    try:
        dense = os.path.join(work, "dense.raw")
        write_random(dense, GiB)
        sparse_raw = os.path.join(work, "sparse.raw")
        blocks = 4 * GiB // BLOCK
        chosen = sorted(random.Random(42).sample(range(blocks), blocks // 20))
        write_random(sparse_raw, 4 * GiB, [b * BLOCK for b in chosen])
        sparse_vhd = os.path.join(work, "sparse.vhd")
        run(["qemu-img", "convert", "-f", "raw", "-O", "vpc",
             "-o", "subformat=dynamic,force_size=on", sparse_raw, sparse_vhd])
        sim = Simulator(os.path.join(work, "state"))
        fs = run(["df", "--output=source,fstype", work]).splitlines()[-1].split()
        print("setup: work dir %s on %s (%s), %d CPUs, Python %s, cp = %s"
              % (work, fs[0], fs[1], os.cpu_count(), sys.version.split()[0],
                 run(["cp", "--version"]).splitlines()[0]))
        print("sync before each timing; outputs %s; one untimed round, then %d "
              "(cp and import alternate; best of each compared)"
              % ("fsynced inside timing" if args.sync else "left in the page cache",
                 args.rounds))
        dense_best, dense_median, dense_paired = measure(sim, "dense raw", dense, "raw", GiB,
                              same_content(dense, GiB), args, work)
        measure(sim, "sparse VHD (5 % of blocks)", sparse_vhd, "vhd", 4 * GiB,
                same_content(sparse_raw, 4 * GiB), args, work)
        print("\ndense import reaches %.0f %% of cp best against best, %.0f %% median "
              "against median, %.0f %% median of per-round ratios (target >= 70 %%)"
              % (100 * dense_best, 100 * dense_median, 100 * dense_paired))
    finally:
        if sim is not None:
            sim.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
