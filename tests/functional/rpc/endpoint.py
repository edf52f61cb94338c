"""A test endpoint implementing the whole method table.

It records every call it receives, answers with results derived from the
arguments (so a caller can tell its answer from another call's), and can
be told to be slow or to raise. Used in-process by the contract suite and
in a child process by ``agent_child.py``.
"""

import threading

from rpc import methods

# Image ids are Glance's: uuids.
IMAGE_ID = "0c2c5cf8-5b3f-4d2c-9a53-6e1d7f7d5a11"

INSTANCE = "3f1c2a4e-8b6d-4c1e-9f0a-1b2c3d4e5f60"
VDI = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
ALL_BYTES = bytes(range(256))

# One valid call per declared method (what the driver would send).
VALID_ARGS = {
    "describe": {},
    "fetch_image": dict(instance_uuid=INSTANCE, image_id=IMAGE_ID, disk_format="vhd",
                        kernel_id=None, ramdisk_id=None, auth_token="gAAAA-secret-token"),
    "auto_configure_disk": dict(vdi_uuid=VDI, new_gb=20, instance_uuid=None),
    "generate_disk": dict(instance_uuid=INSTANCE, kind="ephemeral", size_mb=1024,
                          fs_type="ext4", label="ephemeral0"),
    "generate_configdrive": dict(
        instance_uuid=INSTANCE,
        metadata={"uuid": INSTANCE, "__nxs_bytes__": "not bytes", "meta": {"k": [1, 2.5]}},
        user_data=ALL_BYTES * 4, network_data={"links": []}, vendor_data=None,
        files=[["/etc/motd", ALL_BYTES], ["/root/empty", b""]], admin_password="hunter2"),
    "resize_disk": dict(instance_uuid=INSTANCE, vdi_uuid=VDI, new_gb=5),
    "preconfigure_instance": dict(vdi_uuid=VDI, network_config="auto eth0\n",
                                  files=[["/etc/hostname", b"vm1\n"]],
                                  ssh_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI k1@test",
                                  metadata={"role": "web", "empty": ""},
                                  instance_uuid=None),
    "upload_snapshot": dict(instance_uuid=INSTANCE, vdi_uuid=VDI,
                            image_id="5d6a8b2c-1e3f-4a5b-9c7d-0e1f2a3b4c5d",
                            auth_token="gAAAA-secret-token"),
    "cleanup_attached_vdis": {},
    "destroy_vdis": dict(vdi_uuids=[VDI, INSTANCE]),
    "remove_boot_files": dict(paths=["/boot/guest/kernel-a1b2c3",
                                     "/boot/guest/ramdisk-d4e5f6"]),
    "get_console_log": dict(instance_uuid=INSTANCE, max_bytes=65536),
    "cache_image": dict(image_id=IMAGE_ID, auth_token="gAAAA-secret-token"),
    "manage_image_cache": dict(min_age_seconds=86400),
}


def expected_result(method, args, host="test-host", version=methods.VERSION):
    """What :class:`RecordingEndpoint` answers to ``method(**args)``."""
    if method == "describe":
        return {"mode": "independent", "vm_uuid": None, "host_uuid": INSTANCE,
                "host": host, "version": version, "capabilities": {"resize_down": False}}
    if method == "fetch_image":
        return {"vdis": [{"uuid": args["instance_uuid"], "type": "root", "size_bytes": 1 << 30}]}
    if method == "cleanup_attached_vdis":
        return {"unplugged": 0, "destroyed": 0}
    if method == "destroy_vdis":
        return {"destroyed": len(args["vdi_uuids"])}
    if method == "remove_boot_files":
        return {"removed": len(args["paths"])}
    if method == "preconfigure_instance":
        return {}
    if method == "get_console_log":
        return {"log": ALL_BYTES + b"login: ", "truncated": False}
    if method == "cache_image":
        return {"uuid": VDI, "fetched": True}
    if method == "manage_image_cache":
        return {"removed": 1, "kept_in_use": 2, "kept_recent": 3}
    if method == "upload_snapshot":
        return {"image_id": args["image_id"], "size_bytes": 1 << 20}
    uuid = args.get("instance_uuid") or args["vdi_uuid"]
    size = args.get("new_gb", 0) << 30 or args.get("size_mb", 64) << 20
    result = {"uuid": uuid, "size_bytes": size}
    if method == "generate_configdrive":
        result["user_data"] = args["user_data"]  # echoed back: bytes both ways
    return result


class RecordingEndpoint:
    """Implements every method of the table; records, delays, fails on request."""

    def __init__(self, host="test-host", version=methods.VERSION):
        self.host = host
        self.version = version  # what describe announces
        self.calls = []
        self.delay = {}      # method name -> seconds to sleep before answering
        self.fail = {}       # method name -> exception to raise
        self.release = threading.Event()  # set to cut every delay short
        self._lock = threading.Lock()

    def reset(self):
        self.release.set()
        with self._lock:
            self.calls = []
        self.delay = {}
        self.fail = {}
        self.release = threading.Event()

    def names_called(self):
        with self._lock:
            return [name for name, _ in self.calls]

    def _serve(self, method, args):
        with self._lock:
            self.calls.append((method, args))
        seconds = self.delay.get(method)
        if seconds:
            self.release.wait(seconds)
        if method in self.fail:
            raise self.fail[method]
        return expected_result(method, args, self.host, self.version)


def _make(name):
    def endpoint_method(self, **kwargs):
        return self._serve(name, kwargs)
    endpoint_method.__name__ = name
    return endpoint_method


for _name in methods.METHODS:
    setattr(RecordingEndpoint, _name, _make(_name))
