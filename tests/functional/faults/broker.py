"""A private RabbitMQ node that a test may stop, kill and start again.

Never the shared broker on 5672, which other tests (and other runs) use: a
node of its own name, AMQP and distribution ports, database, logs and
enabled plugins (none, so no management listener collides) in a temporary
directory. Stopped with ``rabbitmqctl -n NODE stop``, killed by the pid of
its own Erlang VM (from its pid file), nothing else.
"""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

START_SECONDS = 90


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateBroker:
    """Use :meth:`start`, :meth:`stop`/:meth:`kill`, and :meth:`remove` at the end.

    Debian's ``rabbitmq-server`` run as root switches to the ``rabbitmq``
    user (keeping the environment), so the node's directory is made in
    /tmp and given to that user.
    """

    def __init__(self):
        self.base_dir = tempfile.mkdtemp(prefix="nxs-broker-")
        os.chmod(self.base_dir, 0o700)
        self.port = free_port()
        self.node = "nxs-faults-%d@localhost" % self.port
        self.url = "rabbit://guest:guest@127.0.0.1:%d/" % self.port
        plugins = os.path.join(self.base_dir, "enabled_plugins")
        with open(plugins, "w") as f:
            f.write("[].\n")
        for sub in ("mnesia", "log"):
            os.mkdir(os.path.join(self.base_dir, sub))
        try:
            user = pwd.getpwnam("rabbitmq")
        except KeyError:
            user = None  # not Debian's package: the node runs as this user
        if user is not None:
            for root, dirs, files in os.walk(self.base_dir):
                for name in [root] + [os.path.join(root, n) for n in dirs + files]:
                    os.chown(name, user.pw_uid, user.pw_gid)
        self.env = dict(
            os.environ, RABBITMQ_NODENAME=self.node, RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_DIST_PORT=str(free_port()),
            RABBITMQ_MNESIA_BASE=os.path.join(self.base_dir, "mnesia"),
            RABBITMQ_LOG_BASE=os.path.join(self.base_dir, "log"),
            RABBITMQ_PID_FILE=os.path.join(self.base_dir, "node.pid"),
            RABBITMQ_ENABLED_PLUGINS_FILE=plugins,
            RABBITMQ_FEATURE_FLAGS_FILE=os.path.join(self.base_dir, "feature_flags"),
            RABBITMQ_CONFIG_FILE=os.path.join(self.base_dir, "none"))
        self.pid_file = self.env["RABBITMQ_PID_FILE"]

    def answers(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def start(self):
        subprocess.run(["rabbitmq-server", "-detached"], env=self.env, check=True,
                       capture_output=True, timeout=60, cwd=self.base_dir)
        deadline = time.monotonic() + START_SECONDS
        while not self.answers():
            assert time.monotonic() < deadline, "private broker %s did not start" % self.node
            time.sleep(0.2)
        return self

    def stop(self):
        """A clean stop, as an operator's ``rabbitmqctl stop``."""
        subprocess.run(["rabbitmqctl", "-n", self.node, "stop", self.pid_file],
                       env=self.env, capture_output=True, timeout=120)
        self._wait_gone()

    def kill(self):
        """SIGKILL of the node's Erlang VM: no connection closed cleanly."""
        os.kill(self._pid(), signal.SIGKILL)
        self._wait_gone()

    def remove(self):
        """Stop the node if it runs and remove its directory."""
        if self.answers():
            self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def _pid(self):
        with open(self.pid_file) as f:
            return int(f.read().strip())

    def _wait_gone(self):
        deadline = time.monotonic() + 60
        while self.answers():
            assert time.monotonic() < deadline, "private broker %s did not stop" % self.node
            time.sleep(0.1)
