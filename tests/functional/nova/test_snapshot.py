"""Nova's ``createImage`` server action on our driver, in both agent modes
(over the local socket: the transport is not what is under test): the
snapshot lands in the run's real Glance as a VHD tarball, qemu-img reads
it, and a second server boots from it."""

import json
import os
import subprocess
import tarfile
import time
import uuid

from tests.functional.nova import base

# Seconds to wait for the snapshot's image to leave queued/saving.
IMAGE_TIMEOUT = 120


class CreateImage:

    def test_create_image_makes_a_vhd_image_in_glance_that_boots_a_second_server(self):
        before = self._left_on_the_simulator()
        flavor = self._flavor("nxs.tiny")
        first = self._boot(flavor)
        (vm,) = self._guest_vms()
        root_bytes = self._root_bytes(vm)

        answer = self.api.post_server_action(
            first["id"], {"createImage": {"name": "nxs-snap"}})
        image_id = answer["image_id"]
        self.addCleanup(self.glance_server.delete, image_id)
        self.notifier.wait_for_versioned_notifications("instance.snapshot.end", timeout=120)
        first = self._wait_for_server_parameter(
            first, {"status": "ACTIVE", "OS-EXT-STS:task_state": None},
            max_retries=base.WAIT_RETRIES)

        record = self._active_image(image_id)
        self.assertEqual(("nxs-snap", "vhd", "ovf"), (
            record["name"], record["disk_format"], record["container_format"]))
        self.assertEqual(first["id"], record.get("instance_uuid"))
        info = self._vhd_info(image_id)
        self.assertEqual(("vpc", root_bytes), (info["format"], info["virtual-size"]))

        second = self._boot_from(image_id, flavor)
        self.assertEqual(image_id, second["image"]["id"])
        vms = [v for v in self._guest_vms() if v["uuid"] != vm["uuid"]]
        self.assertEqual(["Running"], [v["power_state"] for v in vms])

        self._delete_server(second)
        self._delete_server(first)
        self.assertEqual(before, self._left_on_the_simulator())

    def _active_image(self, image_id):
        deadline = time.monotonic() + IMAGE_TIMEOUT
        while True:
            record = self.glance_server.image(image_id)
            if record is not None and record["status"] not in ("queued", "saving"):
                self.assertEqual("active", record["status"])
                return record
            if time.monotonic() > deadline:
                self.fail("image %s still %s after %d s" % (
                    image_id, record and record["status"], IMAGE_TIMEOUT))
            time.sleep(0.5)

    def _vhd_info(self, image_id):
        """qemu-img's view of the 0.vhd inside the image's tarball."""
        tarball = self.glance_server.download(image_id, os.path.join(self.work, "snap.tar"))
        with tarfile.open(tarball) as tar:
            self.assertEqual(["0.vhd"], tar.getnames())
            tar.extract("0.vhd", self.work)
        out = subprocess.run(
            ["qemu-img", "info", "--output=json", os.path.join(self.work, "0.vhd")],
            capture_output=True, text=True, timeout=120)
        self.assertEqual(0, out.returncode, out.stderr)
        return json.loads(out.stdout)

    def _boot_from(self, image_id, flavor_id):
        body = self._build_server(name="nxs-%s" % uuid.uuid4().hex[:6],
                                  image_uuid=image_id, flavor_id=flavor_id,
                                  networks="none")
        server = self.api.post_server({"server": body})
        return self._wait(server, "ACTIVE")

    def _root_bytes(self, vm):
        xapi = self._xapi()
        for vbd in vm["VBDs"]:
            if xapi.VBD.get_userdevice(vbd) == "0":
                return int(xapi.VDI.get_virtual_size(xapi.VBD.get_VDI(vbd)))
        return None


class IndependentLocalSocket(CreateImage, base.XenSplitTestCase):
    COMPUTE_VM, TRANSPORT = False, "unix"


class InGuestLocalSocket(CreateImage, base.XenSplitTestCase):
    COMPUTE_VM, TRANSPORT = True, "unix"
