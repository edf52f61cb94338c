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


@pytest.fixture(autouse=True)
def real_parts(request, nova_installed, nova_demo_image):
    """Nova test classes get the image; the agent's transport must be there."""
    from tests.conftest import loop_devices_usable, rabbit_available

    cls = request.cls
    if cls is None or not hasattr(cls, "TRANSPORT"):
        return
    need(loop_devices_usable(), "loop devices are not usable (needs root and /dev/loop-control)")
    if cls.TRANSPORT == "rabbit":
        need(rabbit_available(), "RabbitMQ does not answer on 127.0.0.1:5672")
    cls.demo_image = nova_demo_image
