"""Volumes are out of scope: Nova is told so with its own typed exception."""

import uuid

from tests.functional.nova import base


class VolumesRefused(base.XenSplitTestCase):

    def test_attaching_a_volume_fails_with_novas_error_and_changes_nothing(self):
        server = self._boot(self._flavor("nxs.tiny"))
        (vm,) = self._guest_vms()
        volume_id = str(uuid.uuid4())
        self.api.post_server_volume(server["id"], {"volumeAttachment": {"volumeId": volume_id}})
        event = self._wait_for_action_fail_completion(
            server, "attach_volume", "compute_attach_volume")
        # nova.exception.VolumeAttachFailed's message, with our reason.
        self.assertIn("could not be attached", event["details"])
        self.assertIn("does not attach volumes", event["details"])
        self.assertEqual([], self.api.get_server_volumes(server["id"]))
        server = self._wait(server, "ACTIVE")
        (after,) = self._guest_vms()
        self.assertEqual((vm["uuid"], sorted(vm["VBDs"])), (after["uuid"], sorted(after["VBDs"])))
        self._delete_server(server)
