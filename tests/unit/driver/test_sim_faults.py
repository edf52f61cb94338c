"""The simulator's fault injection fails exactly the calls it was armed for."""

import pytest

from dom0.simulator import errors, faults


@pytest.fixture(autouse=True)
def clean():
    faults.clear()
    yield
    faults.clear()


def _fails(name):
    try:
        faults.check(name)
    except errors.XapiError as e:
        return e.code
    return None


def test_skip_good_calls_then_count_failures_then_good_again():
    faults.arm("VBD.plug", "INTERNAL_ERROR", count=2, skip=1)
    assert [_fails("VBD.plug") for _ in range(4)] == [
        None, "INTERNAL_ERROR", "INTERNAL_ERROR", None]
    assert _fails("VDI.create") is None


def test_faults_from_the_environment_text():
    faults.arm_from_text("VM.start=VM_BAD_POWER_STATE:1:0, VDI.create")
    assert _fails("VM.start") == "VM_BAD_POWER_STATE"
    assert _fails("VM.start") is None
    assert _fails("VDI.create") == "INTERNAL_ERROR"


def test_a_nonsense_fault_is_refused():
    with pytest.raises(errors.XapiError):
        faults.arm("VM.start", count=0)
