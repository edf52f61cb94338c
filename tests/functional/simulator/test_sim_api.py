"""Sessions, dispatch errors, generated accessors, host and pool."""

import xmlrpc.client

import pytest
import XenAPI

from tests.functional.simulator.simhelpers import failure, new_vdi

MiB = 1 << 20


def raw_call(sim, method, *params):
    """One XML-RPC call with no SDK in between (no automatic re-login)."""
    return getattr(xmlrpc.client.ServerProxy(sim.url, allow_none=True), method)(*params)


def test_login_with_wrong_password_fails_with_authentication_failed(sim):
    s = XenAPI.Session(sim.url)
    details = failure(s.xenapi.login_with_password, "root", "wrong", "1.0", "tests")
    assert details == ["SESSION_AUTHENTICATION_FAILED", "root", "Authentication failure"]


def test_login_with_unknown_user_fails(sim):
    s = XenAPI.Session(sim.url)
    details = failure(s.xenapi.login_with_password, "admin", sim.password, "1.0", "tests")
    assert details[0] == "SESSION_AUTHENTICATION_FAILED"


def test_a_call_with_an_unknown_session_is_session_invalid(sim):
    answer = raw_call(sim, "VM.get_all", "OpaqueRef:no-such-session")
    assert answer == {"Status": "Failure",
                      "ErrorDescription": ["SESSION_INVALID", "OpaqueRef:no-such-session"]}


def test_the_sdk_without_credentials_cannot_use_a_bad_session(sim):
    s = XenAPI.Session(sim.url)
    s._session = "OpaqueRef:forged"
    with pytest.raises(xmlrpc.client.Fault) as info:  # SDK: SESSION_INVALID, no login to retry
        s.xenapi.VM.get_all()
    assert info.value.faultCode == 401


def test_logout_invalidates_the_session(sim):
    s = sim.session()
    ref = s._session
    s.xenapi.session.logout()
    assert raw_call(sim, "VM.get_all", ref)["ErrorDescription"] == ["SESSION_INVALID", ref]


def test_unknown_message_is_message_method_unknown(sim, session):
    answer = raw_call(sim, "VM.fly", session._session)
    assert answer["ErrorDescription"] == ["MESSAGE_METHOD_UNKNOWN", "VM.fly"]


def test_unknown_message_checks_the_session_first_and_drops_async(sim, session):
    # gen_server.ml, gen_module: an unknown name with parameters is tried as
    # an extension (session checked, then xapi_extensions.ml find_extension:
    # MESSAGE_METHOD_UNKNOWN), named without its Async. prefix.
    answer = raw_call(sim, "VM.fly", "OpaqueRef:no-such-session")
    assert answer["ErrorDescription"] == ["SESSION_INVALID", "OpaqueRef:no-such-session"]
    answer = raw_call(sim, "Async.VM.fly", session._session)
    assert answer["ErrorDescription"] == ["MESSAGE_METHOD_UNKNOWN", "VM.fly"]


def test_wrong_parameter_count_names_the_message_and_counts(sim, session):
    # gen_server.ml, operation: parameter_count_mismatch_failure counts the
    # parameters without defaults, the session left out on both sides.
    answer = raw_call(sim, "VDI.get_record", session._session)
    assert answer["ErrorDescription"] == ["MESSAGE_PARAMETER_COUNT_MISMATCH",
                                          "VDI.get_record", "1", "0"]
    answer = raw_call(sim, "VDI.get_record", session._session, "OpaqueRef:a", "extra")
    assert answer["ErrorDescription"] == ["MESSAGE_PARAMETER_COUNT_MISMATCH",
                                          "VDI.get_record", "1", "2"]
    answer = raw_call(sim, "VM.start", session._session, "OpaqueRef:a")
    assert answer["ErrorDescription"] == ["MESSAGE_PARAMETER_COUNT_MISMATCH",
                                          "VM.start", "3", "1"]


def test_count_of_a_message_without_a_session_counts_every_parameter(sim):
    # gen_server.ml, operation: "- 1" only when the message takes a session;
    # login_with_password's version and originator have defaults.
    answer = raw_call(sim, "session.login_with_password", "root")
    assert answer["ErrorDescription"] == ["MESSAGE_PARAMETER_COUNT_MISMATCH",
                                          "session.login_with_password", "2", "1"]


def test_parameters_past_the_defaulted_ones_are_ignored(sim):
    # gen_server.ml, operation: a message with default parameters matches
    # "session :: ... :: default_args" and reads only the defaults it has.
    answer = raw_call(sim, "session.login_with_password", "root", sim.password, "1.0",
                      "tests", "one too many")
    assert answer["Status"] == "Success"
    raw_call(sim, "session.logout", answer["Value"])


def test_async_of_a_message_without_an_async_mode_is_a_fault(sim, session, xapi, sr_ref):
    # server_helpers.ml, do_dispatch: API.response_of_fault ["Fault"; text]
    # after the session check; field accessors have no Async. form
    # (gen_client.ml, has_async).
    vdi = new_vdi(xapi, sr_ref, MiB)
    answer = raw_call(sim, "Async.VDI.get_uuid", session._session, vdi)
    assert answer == {"Status": "Failure", "ErrorDescription": [
        "Fault", "No async mode for this operation (rpc: VDI.get_uuid)"]}
    answer = raw_call(sim, "Async.VDI.get_uuid", "OpaqueRef:no-such-session", vdi)
    assert answer["ErrorDescription"][0] == "SESSION_INVALID"
    answer = raw_call(sim, "Async.task.create", session._session, "a", "b")
    assert answer["ErrorDescription"] == [
        "Fault", "No async mode for this operation (rpc: task.create)"]
    xapi.VDI.destroy(vdi)


def test_a_ref_that_does_not_exist_is_handle_invalid(xapi):
    assert failure(xapi.VDI.get_record, "OpaqueRef:missing") == [
        "HANDLE_INVALID", "VDI", "OpaqueRef:missing"]


def test_an_unknown_uuid_is_uuid_invalid(xapi):
    uuid = "6b1c7e4e-0000-4000-8000-000000000000"
    assert failure(xapi.VM.get_by_uuid, uuid) == ["UUID_INVALID", "VM", uuid]


def test_session_knows_its_host_and_the_pool_names_it_master(session, xapi, host_ref):
    pool = xapi.pool.get_all()[0]
    assert xapi.pool.get_master(pool) == host_ref
    record = xapi.host.get_record(host_ref)
    assert record["API_version_major"] == "2" and record["uuid"]
    assert xapi.host.get_by_uuid(record["uuid"]) == host_ref


def test_default_sr_has_a_pbd_whose_device_config_path_exists(sim, xapi, sr_ref, host_ref):
    (pbd,) = xapi.SR.get_PBDs(sr_ref)
    record = xapi.PBD.get_record(pbd)
    assert record["host"] == host_ref and record["currently_attached"] is True
    assert record["device_config"]["path"].endswith(xapi.SR.get_uuid(sr_ref))
    assert record["device_config"]["path"].startswith(sim.state_dir)


def test_control_domain_is_dom0_running_on_the_host(xapi, host_ref, dom0_ref):
    record = xapi.VM.get_record(dom0_ref)
    assert record["is_control_domain"] is True
    assert record["power_state"] == "Running"
    assert record["resident_on"] == host_ref
    assert dom0_ref in xapi.host.get_resident_VMs(host_ref)


def test_map_accessors_add_read_remove_and_refuse_duplicates(xapi, sr_ref):
    vdi = new_vdi(xapi, sr_ref, MiB)
    xapi.VDI.add_to_other_config(vdi, "purpose", "root")
    assert xapi.VDI.get_other_config(vdi) == {"purpose": "root"}
    assert failure(xapi.VDI.add_to_other_config, vdi, "purpose", "swap") == [
        "MAP_DUPLICATE_KEY", "VDI", "other_config", vdi, "purpose"]
    xapi.VDI.remove_from_other_config(vdi, "purpose")
    assert xapi.VDI.get_other_config(vdi) == {}
    xapi.VDI.destroy(vdi)


def test_setters_change_writable_fields_and_check_types(xapi, sr_ref):
    vdi = new_vdi(xapi, sr_ref, MiB)
    xapi.VDI.set_name_label(vdi, "renamed")
    assert xapi.VDI.get_by_name_label("renamed") == [vdi]
    assert failure(xapi.VDI.set_sharable, vdi, "yes") == ["FIELD_TYPE_ERROR", "sharable"]
    answer = failure(xapi.VDI.set_virtual_size, vdi, "1")
    assert answer[0] == "MESSAGE_METHOD_UNKNOWN"  # virtual_size is read-only
    xapi.VDI.destroy(vdi)


def test_get_all_records_returns_records_keyed_by_ref(xapi, dom0_ref):
    records = xapi.VM.get_all_records()
    assert records[dom0_ref]["is_control_domain"] is True
    assert set(records) == set(xapi.VM.get_all())
