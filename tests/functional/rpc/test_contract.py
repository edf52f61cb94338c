"""The interface contract, run over both transports (``transport`` fixture)."""

import concurrent.futures
import logging
import time

import pytest

from nova_xen_split import netinfo
from nova_xen_split import objects
from nova_xen_split import spawn
from rpc import exceptions
from rpc import methods
from rpc.transports import rabbit
from tests.functional.rpc.conftest import RPC_TIMEOUT, unique_host
from tests.functional.rpc.endpoint import (ALL_BYTES, INSTANCE, VALID_ARGS, VDI,
                                           RecordingEndpoint, expected_result)

# Image ids are Glance's: uuids.
IMAGE_ID = "0c2c5cf8-5b3f-4d2c-9a53-6e1d7f7d5a11"


@pytest.mark.parametrize("method", sorted(methods.METHODS))
def test_every_declared_method_round_trips_with_its_arguments_intact(agent, method):
    api, endpoint, host = agent
    result = getattr(api, method)(**VALID_ARGS[method])

    assert result == expected_result(method, VALID_ARGS[method], host)
    assert endpoint.calls == [(method, VALID_ARGS[method])]


def test_bytes_cross_both_ways_unchanged(agent):
    api, endpoint, _ = agent
    args = dict(VALID_ARGS["generate_configdrive"], user_data=ALL_BYTES * 256,
                files=[["/a", ALL_BYTES], ["/b", b"\x00" * 1000]])

    result = api.generate_configdrive(**args)

    received = endpoint.calls[0][1]
    assert received["user_data"] == ALL_BYTES * 256
    assert received["files"] == [["/a", ALL_BYTES], ["/b", b"\x00" * 1000]]
    assert received["metadata"]["__nxs_bytes__"] == "not bytes"
    assert result["user_data"] == ALL_BYTES * 256


def test_omitted_nullable_arguments_reach_the_endpoint_as_none(agent):
    api, endpoint, _ = agent
    api._call("fetch_image", "1.0", dict(instance_uuid=INSTANCE, image_id=IMAGE_ID,
                                         disk_format="raw"), check=False)

    received = endpoint.calls[0][1]
    assert received["kernel_id"] is None and received["auth_token"] is None


BAD_REQUESTS = [
    ("undeclared method", "format_host", {}, "method"),
    ("missing argument", "generate_disk",
     dict(VALID_ARGS["generate_disk"], label=None), "label"),
    ("required argument left out", "destroy_vdis", {}, "vdi_uuids"),
    ("extra argument", "auto_configure_disk",
     dict(VALID_ARGS["auto_configure_disk"], force=True), "force"),
    ("string for an int", "auto_configure_disk", dict(vdi_uuid=VDI, new_gb="20"), "new_gb"),
    ("bool for an int", "auto_configure_disk", dict(vdi_uuid=VDI, new_gb=True), "new_gb"),
    ("int below range", "auto_configure_disk", dict(vdi_uuid=VDI, new_gb=0), "new_gb"),
    ("int above range", "resize_disk", dict(VALID_ARGS["resize_disk"], new_gb=65537), "new_gb"),
    ("uppercase uuid", "auto_configure_disk", dict(vdi_uuid=VDI.upper(), new_gb=1), "vdi_uuid"),
    ("label breaking its pattern", "generate_disk",
     dict(VALID_ARGS["generate_disk"], label="has space"), "label"),
    ("value outside the enum", "generate_disk",
     dict(VALID_ARGS["generate_disk"], fs_type="xfs"), "fs_type"),
    ("image id with a slash", "fetch_image",
     dict(VALID_ARGS["fetch_image"], image_id="../etc"), "image_id"),
    ("user data too large", "generate_configdrive",
     dict(VALID_ARGS["generate_configdrive"], user_data=b"x" * 65537), "user_data"),
    ("text where bytes are declared", "generate_configdrive",
     dict(VALID_ARGS["generate_configdrive"], user_data="text"), "user_data"),
    ("file entry that is not a pair", "preconfigure_instance",
     dict(VALID_ARGS["preconfigure_instance"], files=[["/etc/motd"]]), "files[0]"),
    ("an SSH key of two lines", "preconfigure_instance",
     dict(VALID_ARGS["preconfigure_instance"], ssh_key="ssh-rsa A a\nssh-rsa B b"), "ssh_key"),
    ("metadata that is not text", "preconfigure_instance",
     dict(VALID_ARGS["preconfigure_instance"], metadata={"n": 1}), 'metadata["n"]'),
    ("too many vdis", "destroy_vdis", dict(vdi_uuids=[VDI] * 65), "vdi_uuids"),
    ("no vdis", "destroy_vdis", dict(vdi_uuids=[]), "vdi_uuids"),
    ("bad uuid inside a list", "destroy_vdis", dict(vdi_uuids=[VDI, "x"]), "vdi_uuids[1]"),
    # Names the RabbitMQ endpoint holds that are no methods of the interface.
    ("oslo.messaging's target attribute", "target", {}, "method"),
    ("a private name", "_dispatcher", {}, "method"),
    ("an undeclared name", "rm_rf", {}, "method"),
]


@pytest.mark.parametrize("case, method, args, field", BAD_REQUESTS,
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request_is_refused_by_the_server_before_the_endpoint_runs(
        agent, case, method, args, field):
    api, endpoint, _ = agent
    with pytest.raises(exceptions.InvalidRequest) as raised:
        api._call(method, methods.VERSION, args, check=False)  # bypass the client's check

    assert raised.value.kwargs["field"] == field
    assert endpoint.calls == []


def test_bad_request_is_refused_by_the_client_before_anything_is_sent(agent):
    api, endpoint, _ = agent
    with pytest.raises(exceptions.InvalidRequest) as raised:
        api.generate_disk(instance_uuid=INSTANCE, kind="ephemeral", size_mb=0,
                          fs_type="ext4", label="eph")
    assert raised.value.kwargs == {"method": "generate_disk", "field": "size_mb",
                                   "reason": "must be in 1..67108864, got 0"}
    assert endpoint.calls == []


def test_secret_argument_never_appears_in_the_error(agent):
    api, endpoint, _ = agent
    token = "tok-" + "s" * 9000
    with pytest.raises(exceptions.InvalidRequest) as raised:
        api._call("fetch_image", "1.0", dict(VALID_ARGS["fetch_image"], auth_token=token),
                  check=False)
    assert raised.value.kwargs["field"] == "auth_token"
    assert "tok-" not in str(raised.value) and "tok-" not in repr(raised.value.kwargs)


def test_secrets_stay_out_of_every_log_line_on_both_sides(agent, caplog):
    api, endpoint, _ = agent
    caplog.set_level(logging.DEBUG)
    api.fetch_image(**VALID_ARGS["fetch_image"])
    api.generate_configdrive(**VALID_ARGS["generate_configdrive"])
    with pytest.raises(exceptions.InvalidRequest):
        api._call("fetch_image", "1.0", dict(VALID_ARGS["fetch_image"], image_id="/"),
                  check=False)

    assert "Calling fetch_image" in caplog.text  # the calls were logged...
    assert VALID_ARGS["fetch_image"]["auth_token"] not in caplog.text  # ...masked
    assert VALID_ARGS["generate_configdrive"]["admin_password"] not in caplog.text


def test_xapi_failure_crosses_with_its_error_description(agent):
    api, endpoint, _ = agent
    endpoint.fail["destroy_vdis"] = exceptions.XapiFailure(
        details=["VDI_IN_USE", "OpaqueRef:1234", "destroy"])

    with pytest.raises(exceptions.XapiFailure) as raised:
        api.destroy_vdis(vdi_uuids=[VDI])

    assert raised.value.details == ["VDI_IN_USE", "OpaqueRef:1234", "destroy"]
    assert raised.value.code == "VDI_IN_USE"


def test_unsupported_in_independent_mode_crosses_with_its_facts(agent):
    api, endpoint, _ = agent
    endpoint.fail["resize_disk"] = exceptions.UnsupportedInIndependentMode(
        feature="Resizing a disk down", option="[xenserver] independent_compute")

    with pytest.raises(exceptions.UnsupportedInIndependentMode) as raised:
        api.resize_disk(**VALID_ARGS["resize_disk"])

    assert raised.value.kwargs == {"feature": "Resizing a disk down",
                                   "option": "[xenserver] independent_compute"}
    assert str(raised.value).startswith("Resizing a disk down is not supported")


def test_unexpected_exception_arrives_as_remote_error_without_traceback(agent):
    api, endpoint, _ = agent
    endpoint.fail["cleanup_attached_vdis"] = KeyError("vbd-42")

    with pytest.raises(exceptions.RemoteError) as raised:
        api.cleanup_attached_vdis()

    assert raised.value.kwargs == {"exc_type": "KeyError", "value": "'vbd-42'"}
    assert "Traceback" not in str(raised.value) and ".py" not in str(raised.value)


def test_result_breaking_the_interface_is_reported_not_passed_on(agent, monkeypatch):
    api, endpoint, _ = agent
    monkeypatch.setattr(endpoint, "generate_disk",
                        lambda **kwargs: {"uuid": kwargs["instance_uuid"]}, raising=False)

    with pytest.raises(exceptions.RemoteError) as raised:
        api.generate_disk(**VALID_ARGS["generate_disk"])
    assert raised.value.kwargs["exc_type"] == "InvalidResult"
    assert "size_bytes" in raised.value.kwargs["value"]


def test_call_without_answer_raises_agent_unavailable_in_time(agent):
    api, endpoint, host = agent
    api.describe()  # connected and known to answer
    endpoint.delay["destroy_vdis"] = 30

    started = time.monotonic()
    with pytest.raises(exceptions.AgentUnavailable) as raised:
        api.destroy_vdis(vdi_uuids=[VDI])
    elapsed = time.monotonic() - started

    assert raised.value.kwargs == {"host": host, "method": "destroy_vdis",
                                   "timeout": RPC_TIMEOUT}
    assert RPC_TIMEOUT <= elapsed < RPC_TIMEOUT + 0.75


def test_long_call_may_outlast_the_short_timeout(agent):
    api, endpoint, _ = agent
    endpoint.delay["fetch_image"] = RPC_TIMEOUT + 0.3

    assert api.fetch_image(**VALID_ARGS["fetch_image"])["vdis"][0]["type"] == "root"


def test_agent_still_answers_after_a_call_timed_out(agent):
    api, endpoint, _ = agent
    endpoint.delay["destroy_vdis"] = 30
    with pytest.raises(exceptions.AgentUnavailable):
        api.destroy_vdis(vdi_uuids=[VDI])

    del endpoint.delay["destroy_vdis"]

    assert api.destroy_vdis(vdi_uuids=[INSTANCE]) == {"destroyed": 1}


def test_concurrent_slow_and_fast_calls_all_get_their_own_answers(agent):
    api, endpoint, host = agent
    endpoint.delay["generate_disk"] = 0.3
    calls = []
    for n in range(24):
        instance = "00000000-0000-4000-8000-%012d" % n
        if n % 3 == 0:
            calls.append(("generate_disk", dict(VALID_ARGS["generate_disk"],
                                                instance_uuid=instance,
                                                size_mb=methods.MIN_DISK_MB + n)))
        elif n % 3 == 1:
            calls.append(("resize_disk", dict(instance_uuid=instance, vdi_uuid=VDI,
                                              new_gb=n)))
        else:
            calls.append(("describe", {}))

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(getattr(api, name), **args) for name, args in calls]
        results = [f.result(timeout=30) for f in futures]

    assert results == [expected_result(name, args, host) for name, args in calls]
    assert sorted(endpoint.names_called()) == sorted(name for name, _ in calls)


def test_describe_is_answered_while_every_worker_is_busy(agent):
    api, endpoint, _ = agent
    endpoint.delay["fetch_image"] = 30
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        slow = [pool.submit(api.fetch_image, **VALID_ARGS["fetch_image"]) for _ in range(6)]
        while endpoint.names_called().count("fetch_image") < 4:  # all 4 workers taken
            time.sleep(0.01)

        description = api.describe()

        assert description["version"] == methods.VERSION
        assert not any(f.done() for f in slow)
        endpoint.release.set()
        assert all(f.result(timeout=30)["vdis"] for f in slow)


MAJOR, MINOR = methods.parse_version(methods.VERSION)
NEXT = "%d.%d" % (MAJOR, MINOR + 1)  # a version no server speaks yet


def test_call_pinned_at_a_newer_version_is_refused_by_the_server(agent):
    api, endpoint, _ = agent
    with pytest.raises(exceptions.VersionTooOld) as raised:
        api._call("describe", NEXT, {}, check=False)
    with pytest.raises(exceptions.VersionTooOld):
        api._call("snapshot_vdi", NEXT, {}, check=False)  # a method the server lacks

    assert raised.value.kwargs["need"] == NEXT
    assert endpoint.calls == []


def test_client_refuses_early_a_version_the_agent_announced_it_lacks(agent):
    api, endpoint, _ = agent
    assert api.check_version()["version"] == methods.VERSION
    with pytest.raises(exceptions.VersionTooOld) as raised:
        api._call("snapshot_vdi", NEXT, {}, check=False)

    assert raised.value.kwargs == {"host": api.host, "method": "snapshot_vdi",
                                   "have": methods.VERSION, "need": NEXT}
    assert endpoint.names_called() == ["describe"]


def test_a_newer_client_reaches_an_older_agent_with_what_the_agent_knows(transport, caplog):
    # An agent still at interface 1.0 (upgraded after its driver): calls
    # that need 1.1 are refused with VersionTooOld, before anything is sent
    # once the client knows the agent's version, by the agent before that;
    # the same call without the 1.1 arguments is pinned at 1.0 and served.
    host = unique_host()
    _, endpoint = transport.agent(host, endpoint=RecordingEndpoint(host, version="1.0"),
                                  version="1.0")
    api = transport.api(host)
    full = VALID_ARGS["preconfigure_instance"]
    network_only = dict(full, ssh_key=None, metadata=None)

    with pytest.raises(exceptions.VersionTooOld) as by_agent:
        api.preconfigure_instance(**full)
    assert "preconfigure_instance" not in endpoint.names_called()
    assert api.check_version()["version"] == "1.0"
    assert not api.can_send_version("1.1") and api.can_send_version("1.0")
    with pytest.raises(exceptions.VersionTooOld) as by_client:
        api.preconfigure_instance(**full)
    assert api.preconfigure_instance(**network_only) == {}
    # The driver's flat_injected request leaves out what the agent lacks.
    instance = objects.Instance(key_data="ssh-ed25519 AAAA k1", metadata={"a": "b"})
    with caplog.at_level(logging.WARNING, logger="nova_xen_split.spawn"):
        request = spawn.preconfigure_request(api, instance, netinfo.parse([{
            "address": "fa:16:3e:00:00:01", "network": {"subnets": []}}]))
    assert (request["ssh_key"], request["metadata"]) == (None, None)
    assert "SSH key and metadata of %s are not injected" % instance.uuid in caplog.text
    assert "iface eth0 inet dhcp" in request["network_config"]
    with pytest.raises(exceptions.InvalidRequest) as unknown:  # sent pinned too old
        api._call("preconfigure_instance", "1.0", full, check=False)

    assert unknown.value.kwargs["field"] == "metadata"
    assert "since 1.1, newer than interface 1.0" in unknown.value.kwargs["reason"]
    assert by_agent.value.kwargs["need"] == by_client.value.kwargs["need"] == "1.1"
    assert by_client.value.kwargs["have"] == "1.0"
    # (over RabbitMQ a client's first call is preceded by a describe probe)
    assert [call for call in endpoint.calls if call[0] != "describe"] == [
        ("preconfigure_instance", network_only)]


def test_check_version_refuses_an_agent_of_another_major_version(transport):
    host = unique_host()
    transport.agent(host, version="2.0")
    api = transport.api(host)

    with pytest.raises(exceptions.VersionTooOld):
        api.check_version()


def test_a_call_whose_caller_gave_up_while_it_waited_for_a_worker_is_not_run(
        transport, monkeypatch):
    # One worker, busy with a slow call: the next call waits for it, its
    # caller times out, and when the worker frees up the waiting call is
    # dropped, not run (a disk it made would appear after the driver's undo
    # had swept the instance). The local socket knows by the closed
    # connection; over RabbitMQ the caller's deadline travels with the call,
    # honoured after a margin for clock skew, set to 0 here so the test
    # need not wait a minute.
    monkeypatch.setattr(rabbit, "DEADLINE_MARGIN_SECONDS", 0.0)
    host = unique_host()
    _, endpoint = transport.agent(host, rpc_workers=1)
    busy_api, waiting_api = transport.api(host), transport.api(host)
    endpoint.delay["generate_disk"] = 30
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        busy = pool.submit(busy_api.generate_disk, **VALID_ARGS["generate_disk"])
        deadline = time.monotonic() + 10
        while "generate_disk" not in endpoint.names_called() and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(exceptions.AgentUnavailable):
            waiting_api.destroy_vdis(vdi_uuids=[VDI])  # rpc_timeout: 1 s
        endpoint.release.set()
        assert busy.result(timeout=30)["uuid"] == VALID_ARGS["generate_disk"]["instance_uuid"]

    endpoint.delay.clear()
    assert waiting_api.destroy_vdis(vdi_uuids=[VDI]) == {"destroyed": 1}  # still served
    assert [name for name in endpoint.names_called() if name != "describe"] == [
        "generate_disk", "destroy_vdis"]  # the call that waited never ran


def _sent_anyway(api, method, version):
    """What the server answers to a call sent as it is, past every check of
    the client's (a hand-made message on the broker, say)."""
    reply = api._transport.call(method, version, {}, 10.0)
    assert "error" in reply, reply
    return exceptions.from_wire(reply["error"])


# Versions oslo.messaging's own client still sends, which its server read
# with int() and served.
@pytest.mark.parametrize("version", ["\u0661.\u0661", "1.1\n", " 1.1", "1.1.0", "1.\u0662"])
def test_a_malformed_version_is_refused_alike_on_both_transports_with_one_warning(
        agent, caplog, version):
    api, endpoint, _ = agent
    caplog.set_level(logging.WARNING)

    refused = _sent_anyway(api, "describe", version)

    assert isinstance(refused, exceptions.InvalidRequest)
    assert refused.kwargs["field"] == "version"
    assert endpoint.calls == []
    _assert_one_warning_and_no_traceback(caplog)


@pytest.mark.parametrize("version", ["\u0661.\u0661", "1.1\n", "1.", "", "01.01x"])
def test_the_client_refuses_a_malformed_version_before_sending(agent, version):
    api, endpoint, _ = agent
    with pytest.raises(exceptions.InvalidRequest) as raised:
        api._call("describe", version, {}, check=False)
    assert raised.value.kwargs["field"] == "version"
    assert endpoint.calls == []


@pytest.mark.parametrize("name", ["_dispatcher", "__init__", "target", "oslo_rpc_server_ping",
                                  "snapshot_vdi"])
def test_an_undeclared_or_private_name_is_refused_with_one_warning(agent, caplog, name):
    api, endpoint, _ = agent
    caplog.set_level(logging.WARNING)
    with pytest.raises(exceptions.InvalidRequest) as raised:
        raise _sent_anyway(api, name, methods.VERSION)

    assert raised.value.kwargs["field"] == "method"
    assert endpoint.calls == []
    _assert_one_warning_and_no_traceback(caplog)


def test_an_unsupported_version_is_refused_with_one_warning(agent, caplog):
    api, endpoint, _ = agent
    caplog.set_level(logging.WARNING)
    # Sent as it is: a client that already learnt the agent's version
    # (an earlier test's check_version) would refuse it before sending.
    refused = _sent_anyway(api, "describe", "%d.0" % (MAJOR + 1))
    assert isinstance(refused, exceptions.VersionTooOld)
    _assert_one_warning_and_no_traceback(caplog)


def _assert_one_warning_and_no_traceback(caplog):
    ours = [r for r in caplog.records if r.levelno >= logging.WARNING
            and r.name.startswith(("rpc", "oslo_messaging"))]
    assert [r.levelname for r in ours] == ["WARNING"], [r.getMessage() for r in ours]
    assert "Refused call" in ours[0].getMessage() and ours[0].exc_info is None
