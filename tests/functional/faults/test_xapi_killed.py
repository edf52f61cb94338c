"""XAPI dies in the middle of an image import."""

import os
import signal
import threading
import time
import uuid

import pytest

from nova_xen_split.xenhost import marks
from rpc import exceptions

MiB = 1 << 20
IMAGE_MB = 64
NOTICED_WITHIN_SECONDS = 5.0


def _instance_vdis(session, instance_uuid):
    return [rec["uuid"] for rec in session.xenapi.VDI.get_all_records().values()
            if marks.vdi_instance(rec["other_config"]) == instance_uuid]


@pytest.mark.parametrize("sr_type", ["ext", "lvm"])
def test_xapi_killed_mid_import_ends_the_fetch_at_once_and_leaves_nothing(
        loop_devices, make_sim, make_agent, image_server, tmp_path, sr_type):
    sim = make_sim(compute_vm=False, extra_args=["--sr-type", sr_type])
    port = sim.url.rsplit(":", 1)[1]
    agent = make_agent(sim, "independent", image_server)
    image = tmp_path / "dense.raw"
    image.write_bytes(os.urandom(IMAGE_MB * MiB))
    image_server.delay = 0.5  # seconds per MiB (2 MiB/s): the fetch would take ~30 s
    image_id = image_server.add(image)
    instance = str(uuid.uuid4())
    outcome = {}

    def fetch():
        try:
            outcome["result"] = agent.endpoint.fetch_image(
                instance_uuid=instance, image_id=image_id, disk_format="raw")
        except Exception as e:  # noqa: BLE001 -- what it raised is the assertion
            outcome["error"] = e
        outcome["ended"] = time.monotonic()

    worker = threading.Thread(target=fetch)
    worker.start()
    watcher = sim.session()
    deadline = time.monotonic() + 30
    while not _instance_vdis(watcher, instance):
        assert time.monotonic() < deadline and worker.is_alive(), outcome
        time.sleep(0.05)
    time.sleep(1.0)  # well into the upload

    sim.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    worker.join(60)

    assert not worker.is_alive()
    took = outcome["ended"] - killed
    print("fetch ended %.1f s after XAPI was killed: %r" % (took, outcome.get("error")))
    assert isinstance(outcome.get("error"), exceptions.XapiFailure), outcome
    assert outcome["error"].code == "CONNECTION_FAILED"
    assert took < NOTICED_WITHIN_SECONDS
    # The VDI could not be destroyed while XAPI was dead; once it is back
    # (same state, same address), the agent's next settling round removes it.
    sim.extra_args = sim.extra_args + ["--port", port]
    sim.start()
    watcher = sim.session()
    assert _instance_vdis(watcher, instance), "nothing left to settle: the test proves nothing"
    agent.backend.settle()
    assert _instance_vdis(watcher, instance) == []
    assert agent.tagged_vbds() == []
