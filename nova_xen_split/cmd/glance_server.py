"""A real Glance (the OpenStack image service) on loopback, for the tests and
the benchmarks (never for the product: the demo takes ``--glance-url``).

:class:`GlanceProcess` runs Glance's own API application
(``glance.wsgi.api:application``) under gunicorn, the way Glance is deployed
since its standalone ``glance-api`` server went away, with:

* a sqlite database made by ``glance-manage db_sync``;
* no authentication (``[paste_deploy] flavor`` empty): every request runs in
  Glance's unauthenticated context, which has no project and no role, so the
  policy rules before secure RBAC are enforced (the new defaults refuse it
  everything) and images are made ``private`` or ``shared`` (``public``
  needs the admin role: 403);
* one filesystem store (``enabled_backends = fs:file``) with
  ``filesystem_thin_provisioning``, so a raw image with holes stays sparse;
  image locations shown (``show_multiple_locations``,
  ``show_image_direct_url``), as a shared store needs;
* file stores for Glance's staging and task areas, and
  ``enabled_import_methods`` written as a list (Glance answers 500 to an
  image create otherwise).

Glance is installed by ``.ci/install --tests`` (the ``glance-test`` extra);
where it is not, :func:`available` is False, and the tests' ``glance``
fixture skips (fails under ``NXS_REQUIRE_REAL=1``).
"""

import http.client
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import uuid

def _bin(name):
    return os.path.join(os.path.dirname(sys.executable), name)


def _paste_ini():
    """glance-api-paste.ini as the glance package installed it."""
    for root in (sys.prefix, sysconfig.get_paths()["data"]):
        path = os.path.join(root, "etc", "glance", "glance-api-paste.ini")
        if os.path.exists(path):
            return path
    return None


def available():
    """Whether Glance, gunicorn and Glance's paste pipeline are installed."""
    # Not imported here: Glance's imports bring eventlet's deprecation warning.
    if importlib.util.find_spec("glance") is None:
        return False
    return all(os.access(_bin(name), os.X_OK) for name in ("gunicorn", "glance-manage")) \
        and _paste_ini() is not None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONF_TEMPLATE = """\
[DEFAULT]
enabled_backends = fs:file
show_multiple_locations = true
show_image_direct_url = true
enabled_import_methods = [glance-direct,web-download]
worker_self_reference_url = {url}
log_file = {base}/glance-api.log
debug = false

[database]
connection = sqlite:///{base}/glance.sqlite

[paste_deploy]
flavor =

[glance_store]
default_backend = fs

[fs]
filesystem_store_datadir = {base}/images
filesystem_thin_provisioning = true

[os_glance_staging_store]
filesystem_store_datadir = {base}/staging

[os_glance_tasks_store]
filesystem_store_datadir = {base}/tasks

[oslo_concurrency]
lock_path = {base}/locks

[oslo_policy]
# The unauthenticated context has no project and no role: Glance's
# project-scoped defaults would refuse it everything (403), the rules they
# replaced let it manage images it does not own. Admin-only actions stay
# refused (publicize_image).
enforce_new_defaults = false
enforce_scope = false
"""


class GlanceProcess:
    """One Glance API server on a free loopback port, its state in ``base_dir``.

    ``url`` is its endpoint (``http://127.0.0.1:PORT``); ``images_dir`` the
    directory of its filesystem store (what ``file://`` locations name).
    """

    def __init__(self, base_dir):
        self.base_dir = os.path.abspath(str(base_dir))
        self.conf_dir = os.path.join(self.base_dir, "etc")
        self.images_dir = os.path.join(self.base_dir, "images")
        self.url = None
        self.proc = None
        self.server_log = None

    def start(self, timeout=120):
        for name in ("etc", "images", "staging", "tasks", "locks"):
            os.makedirs(os.path.join(self.base_dir, name), exist_ok=True)
        port = _free_port()
        self.url = "http://127.0.0.1:%d" % port
        conf = os.path.join(self.conf_dir, "glance-api.conf")
        with open(conf, "w") as f:
            f.write(CONF_TEMPLATE.format(url=self.url, base=self.base_dir))
        shutil.copy(_paste_ini(), os.path.join(self.conf_dir, "glance-api-paste.ini"))
        sync = subprocess.run([_bin("glance-manage"), "--config-file", conf, "db_sync"],
                              capture_output=True, text=True, timeout=timeout)
        if sync.returncode != 0:
            raise RuntimeError("glance-manage db_sync failed: %s" % sync.stderr[-2000:])
        env = dict(os.environ, OS_GLANCE_CONFIG_DIR=self.conf_dir)
        self.server_log = os.path.join(self.base_dir, "gunicorn.log")
        with open(self.server_log, "wb") as log:
            self.proc = subprocess.Popen(
                [_bin("gunicorn"), "--bind", "127.0.0.1:%d" % port, "--workers", "1",
                 "--threads", "8", "--timeout", "600", "--log-level", "info",
                 "--no-control-socket",
                 "glance.wsgi.api:application"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=self.base_dir, start_new_session=True)
        # Gunicorn listens before its worker has loaded Glance: wait for an answer.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if self.request("GET", "/v2/images", timeout=5)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("Glance did not start: %s" % self.log_tail())

    def log_tail(self, chars=4000):
        """The end of gunicorn's and Glance's logs, for a failure message."""
        text = ""
        for path in (self.server_log, os.path.join(self.base_dir, "glance-api.log")):
            try:
                with open(path, errors="replace") as f:
                    text += f.read()[-chars:]
            except OSError:
                pass
        return text

    def stop(self, timeout=30):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    # -- Glance v2, as a client would speak it --------------------------------

    def request(self, method, path, body=None, headers=None, timeout=60):
        """(status, parsed JSON or raw bytes) of one request."""
        host, port = self.url[len("http://"):].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.getheader("Content-Type", "").startswith("application/json") and data:
            return response.status, json.loads(data)
        return response.status, data

    def create_image(self, image_id=None, **fields):
        """A new (queued) image record; returns it."""
        record = {"id": image_id or str(uuid.uuid4()), "disk_format": "raw",
                  "container_format": "bare", "visibility": "private"}
        record.update(fields)
        status, answer = self.request("POST", "/v2/images", json.dumps(record),
                                      {"Content-Type": "application/json"})
        if status != 201:
            raise RuntimeError("image create: HTTP %d %r" % (status, answer))
        return answer

    def upload(self, image_id, path):
        """Upload a file as the image's data (streamed); returns the record."""
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            status, answer = self.request(
                "PUT", "/v2/images/%s/file" % image_id, f,
                {"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                timeout=600)
        if status != 204:
            raise RuntimeError("image upload: HTTP %d %r" % (status, answer))
        return self.image(image_id)

    def add_image(self, path, image_id=None, **fields):
        """Create and upload an image from a file; returns its active record."""
        record = self.create_image(image_id, **fields)
        return self.upload(record["id"], path)

    def image(self, image_id):
        """The image's record, or None if Glance has none."""
        status, answer = self.request("GET", "/v2/images/%s" % image_id)
        if status == 404:
            return None
        if status != 200:
            raise RuntimeError("image show: HTTP %d %r" % (status, answer))
        return answer

    def images(self):
        status, answer = self.request("GET", "/v2/images?limit=1000")
        return answer["images"]

    def delete(self, image_id):
        status, _ = self.request("DELETE", "/v2/images/%s" % image_id)
        return status in (204, 404)

    def download(self, image_id, path):
        """Write the image's data to ``path``."""
        host, port = self.url[len("http://"):].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=600)
        try:
            conn.request("GET", "/v2/images/%s/file" % image_id)
            response = conn.getresponse()
            if response.status != 200:
                raise RuntimeError("image download: HTTP %d" % response.status)
            with open(path, "wb") as f:
                shutil.copyfileobj(response, f, 4 << 20)
        finally:
            conn.close()
        return path
