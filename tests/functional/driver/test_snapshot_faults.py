"""Snapshots into an image service that fails: the stand-in's fault injection.

A real Glance cannot be told to refuse or cut an upload, or to refuse a
token (it runs without authentication here), so these use the loopback
stand-in (nova_xen_split/cmd/image_service.py), which takes images in as
Glance v2 does and fails on request.
"""

import uuid

import pytest

from nova_xen_split import objects
from rpc import exceptions
from tests.functional.driver.conftest import make_instance, spawn


class TaskStates:
    def __init__(self):
        self.calls = []

    def __call__(self, task_state, expected_state=None):
        self.calls.append(task_state)


def _booted(pair):
    instance = make_instance(objects.Flavor(root_gb=0), config_drive="")
    spawn(pair, instance, files=())
    return instance


def _queued(image_service, name):
    """A queued image named ``name``, with a new uuid as Glance gives it."""
    return image_service.create({"id": str(uuid.uuid4()), "name": name, "disk_format": "raw",
                                 "container_format": "bare"})


def test_a_snapshot_goes_into_the_stand_in_as_a_vhd_tarball(xapi_sim, make_pair,
                                                            image_service):
    pair = make_pair(xapi_sim, image_url=image_service.url)
    instance = _booted(pair)
    counts = pair.counts()
    image_id = _queued(image_service, "snap-ok")
    states = TaskStates()
    pair.driver.snapshot(objects.RequestContext(auth_token="t"), instance, image_id, states)
    assert states.calls == ["image_pending_upload", "image_uploading"]
    record = image_service.record(image_id)
    assert (record["status"], record["disk_format"], record["container_format"]) == (
        "active", "vhd", "ovf")
    assert pair.counts() == counts
    pair.driver.destroy(None, instance)


# "cut-then-locked": a real Glance on sqlite answers a DELETE with HTTP 500
# "database is locked" while its worker still puts the cut upload back to
# queued; it cannot be made to do so on demand, so the stand-in refuses the
# first two DELETEs, and the image must still go after them.
@pytest.mark.parametrize("fault", ["refused", "cut", "cut-then-locked"])
def test_an_upload_the_image_service_fails_leaves_no_image_and_no_vdi(
        xapi_sim, make_pair, image_service, fault):
    pair = make_pair(xapi_sim, image_url=image_service.url)
    instance = _booted(pair)
    counts = pair.counts()
    image_id = _queued(image_service, "snap-" + fault)
    if fault == "refused":
        image_service.upload_errors[image_id] = (500, "store full")
    else:
        image_service.upload_cut_after[image_id] = 1 << 20
    if fault == "cut-then-locked":
        image_service.delete_errors[image_id] = [(500, "database is locked")] * 2
    with pytest.raises(exceptions.ImageUploadFailed) as err:
        pair.driver.snapshot(objects.RequestContext(), instance, image_id, TaskStates())
    assert image_id in str(err.value)
    assert ("HTTP 500" if fault == "refused" else "broke after") in str(err.value)
    assert image_service.delete_errors.get(image_id, []) == []   # every refusal was met
    assert image_service.status(image_id) is None      # deleted, not left queued
    assert pair.counts() == counts                      # the snapshot VDI is gone
    pair.driver.destroy(None, instance)


def test_a_refused_token_fails_the_snapshot_without_showing_the_token(
        xapi_sim, make_pair, image_service):
    pair = make_pair(xapi_sim, image_url=image_service.url)
    instance = _booted(pair)
    counts = pair.counts()
    image_id = _queued(image_service, "snap-token")
    image_service.token = "the-right-token"
    try:
        with pytest.raises(exceptions.ImageUploadFailed) as err:
            pair.driver.snapshot(objects.RequestContext(auth_token="a-wrong-token"),
                                 instance, image_id, TaskStates())
    finally:
        image_service.token = None
    assert "HTTP 401" in str(err.value) and "a-wrong-token" not in str(err.value)
    assert "a-wrong-token" not in pair.agent.output_tail(400)
    assert image_service.status(image_id) == "queued"   # untouched: nothing was sent
    assert pair.counts() == counts
    pair.driver.destroy(None, instance)
