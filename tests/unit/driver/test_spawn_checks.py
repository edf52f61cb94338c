"""The flavor and injected-file checks a spawn makes before its first step."""

import pytest

from nova_xen_split import driver_errors
from nova_xen_split import instance_metadata
from nova_xen_split import objects
from nova_xen_split import spawn
from rpc import exceptions


@pytest.mark.parametrize("fields", [
    {},
    {"swap": None, "ephemeral_gb": ""},  # unset, as old flavors have it
    {"memory_mb": "2048", "vcpus": "4"},  # decimal text, as Nova's integer fields take
    {"root_gb": 0, "ephemeral_gb": 65536, "swap": 65536 * 1024, "vcpus": 512},
])
def test_flavors_within_the_limits_pass(fields):
    spawn.check_flavor(objects.Flavor(**fields))


@pytest.mark.parametrize("fields, field, words", [
    ({"memory_mb": 0}, "memory_mb", "is 0; it must be from 1"),
    ({"vcpus": True}, "vcpus", "whole number"),
    ({"vcpus": 1.5}, "vcpus", "whole number"),
    ({"root_gb": -1}, "root_gb", "is -1"),
    ({"root_gb": None}, "root_gb", "whole number"),  # only swap/ephemeral may be unset
    ({"ephemeral_gb": 65537}, "ephemeral_gb", "to 65536"),
    ({"swap": "１２"}, "swap", "whole number"),  # not ASCII digits
])
def test_flavors_outside_the_limits_are_refused_naming_the_field(fields, field, words):
    with pytest.raises(driver_errors.InvalidFlavor) as err:
        spawn.check_flavor(objects.Flavor(name="bad", **fields))
    assert err.value.kwargs["field"] == field and err.value.kwargs["flavor"] == "bad"
    assert words in str(err.value)


def test_injected_files_text_becomes_bytes():
    assert instance_metadata.injected_files_list([("/etc/a", "é"), ("/etc/b", b"B")]) == [
        ["/etc/a", "é".encode()], ["/etc/b", b"B"]]


@pytest.mark.parametrize("entry", [("/etc/a",), "/etc/a", (b"/etc/a", b"x"), ("/etc/a", 5),
                                   ("/etc/a", None)])
def test_malformed_injected_files_are_refused(entry):
    with pytest.raises(exceptions.InvalidRequest) as err:
        instance_metadata.injected_files_list([("/etc/ok", b"ok"), entry])
    assert err.value.kwargs["field"] == "injected_files[1]"
