"""Nova 34 itself, with our driver loaded by name.

Nova's native threading mode is chosen for the whole run by
``tests/conftest.py`` (it must be, before anything imports eventlet).
Without Nova installed (``pip install -e .[nova,nova-test]``, which
``.ci/install --tests`` does) these tests skip, and under
``NXS_REQUIRE_REAL=1`` fail.
"""

import importlib.util

import pytest

from tests.conftest import need

NOVA_MISSING = "Nova 34 is not installed (pip install -e '.[nova,nova-test]')"


@pytest.fixture(autouse=True)
def nova_installed():
    need(importlib.util.find_spec("nova") is not None
         and importlib.util.find_spec("nova.tests.functional") is not None, NOVA_MISSING)


@pytest.fixture(scope="session")
def nova_demo_image(tmp_path_factory):
    """The raw disk every server boots from (msdos label, ext4 partition)."""
    from nova_xen_split.cmd import demo_env

    path = str(tmp_path_factory.mktemp("nova-images") / "disk.raw")
    demo_env.make_disk_image(path, 64, message="booted through Nova\n")
    return path


# The demo disk's id in the run's Glance (uploaded once per run).
NOVA_IMAGE_ID = "6f1d3c2a-9b8e-4d7f-a6c5-0000000000a1"


@pytest.fixture(scope="session")
def nova_glance_image(glance, nova_demo_image):
    """The run's Glance, holding the demo disk as a raw image under
    NOVA_IMAGE_ID. Glance's unauthenticated context is not admin: the
    image is private, which Nova lets a request with a token see."""
    if glance.image(NOVA_IMAGE_ID) is None:
        glance.add_image(nova_demo_image, NOVA_IMAGE_ID, disk_format="raw",
                         container_format="bare", name="nxs-nova-demo")
    return glance


@pytest.fixture(autouse=True)
def real_parts(request, nova_installed):
    """Nova test classes get Glance and the image; the agent's transport
    must be there."""
    from tests.conftest import loop_devices_usable, rabbit_available

    cls = request.cls
    if cls is None or not hasattr(cls, "TRANSPORT"):
        return
    need(loop_devices_usable(), "loop devices are not usable (needs root and /dev/loop-control)")
    if cls.TRANSPORT == "rabbit":
        need(rabbit_available(), "RabbitMQ does not answer on 127.0.0.1:5672")
    glance = request.getfixturevalue("nova_glance_image")
    cls.glance_server, cls.image_id = glance, NOVA_IMAGE_ID
