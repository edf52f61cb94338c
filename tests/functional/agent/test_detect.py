"""Mode detection against xapi-sim: which VM counts as local, which dom0."""

import uuid

import pytest

from agent import detect
from tests.functional.agent.conftest import agent_conf


def _detect(conf):
    session = detect.login(conf)
    try:
        return detect.detect(conf, session, sessions=None)
    finally:
        session.logout()


def test_auto_with_the_compute_vm_on_the_host_is_in_guest(xapi_sim_compute, tmp_path):
    conf = agent_conf(xapi_sim_compute, "in_guest", tmp_path)
    conf.set_override("independent_compute", "auto", group="xenserver")

    ctx = _detect(conf)

    assert ctx.mode == "in_guest"
    assert ctx.vm_uuid == xapi_sim_compute.compute_vm_uuid
    session = xapi_sim_compute.session()
    dom0 = session.xenapi.VM.get_record(ctx.dom0_ref)
    assert dom0["is_control_domain"] is True
    assert dom0["resident_on"] == ctx.host_ref


def test_auto_with_a_uuid_xapi_does_not_know_is_independent(xapi_sim, tmp_path):
    conf = agent_conf(xapi_sim, "independent", tmp_path)
    uuid_file = tmp_path / "uuid"
    uuid_file.write_text(str(uuid.uuid4()))
    conf.set_override("vm_uuid_file", str(uuid_file), group="xenserver")
    conf.set_override("independent_compute", "auto", group="xenserver")

    ctx = _detect(conf)

    assert ctx.mode == "independent"
    assert ctx.vm_ref is None and ctx.vm_uuid is None


def test_forcing_true_with_a_local_vm_is_independent(xapi_sim_compute, tmp_path):
    conf = agent_conf(xapi_sim_compute, "in_guest", tmp_path)
    conf.set_override("independent_compute", "true", group="xenserver")

    assert _detect(conf).mode == "independent"


def test_forcing_false_with_an_unknown_vm_is_refused_naming_the_option(xapi_sim, tmp_path):
    conf = agent_conf(xapi_sim, "independent", tmp_path)
    uuid_file = tmp_path / "uuid"
    unknown = str(uuid.uuid4())
    uuid_file.write_text(unknown)
    conf.set_override("vm_uuid_file", str(uuid_file), group="xenserver")
    conf.set_override("independent_compute", "false", group="xenserver")

    with pytest.raises(detect.StartupRefused, match="independent_compute = false") as e:
        _detect(conf)

    assert unknown in str(e.value)
