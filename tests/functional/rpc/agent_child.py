"""An agent in its own process, for tests that kill and restart one.

    python -m tests.functional.rpc.agent_child TRANSPORT_URL HOST INCARNATION [METHOD=SECONDS]

Serves a RecordingEndpoint whose describe() reports INCARNATION as its
``vm_uuid`` (and METHOD takes SECONDS), prints ``ready`` once listening,
stops cleanly on SIGTERM.
"""

import signal
import sys
import threading

from rpc import server
from tests.functional.rpc.conftest import make_conf
from tests.functional.rpc.endpoint import RecordingEndpoint


class IncarnationEndpoint(RecordingEndpoint):
    def __init__(self, host, incarnation):
        super().__init__(host)
        self.incarnation = incarnation

    def describe(self):
        return dict(self._serve("describe", {}), vm_uuid=self.incarnation)


def main():
    url, host, incarnation = sys.argv[1:4]
    endpoint = IncarnationEndpoint(host, incarnation)
    for delay in sys.argv[4:]:
        method, seconds = delay.split("=")
        endpoint.delay[method] = float(seconds)
    agent = server.AgentServer(make_conf(url, host), endpoint)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    agent.start()
    print("ready", flush=True)
    stop.wait()
    agent.stop()
    agent.wait()


if __name__ == "__main__":
    main()
