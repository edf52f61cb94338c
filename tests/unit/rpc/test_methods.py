"""The method table and its argument checks, without any transport."""

import time

import pytest

from rpc import exceptions
from rpc import methods
from rpc.transports import rabbit
from tests.functional.rpc.endpoint import INSTANCE, VALID_ARGS, VDI


def test_every_method_is_declared_with_a_version_and_a_result_shape():
    for method in methods.METHODS.values():
        assert methods.version_serves(methods.VERSION, method.since)
        assert all(arg.name == name for name, arg in method.args.items())


def test_only_describe_bypasses_the_worker_pool():
    assert [m.name for m in methods.METHODS.values() if m.control] == ["describe"]


def test_long_calls_are_the_disk_and_image_operations():
    assert {m.name for m in methods.METHODS.values() if m.long} == {
        "fetch_image", "resize_disk", "generate_disk", "auto_configure_disk",
        "generate_configdrive", "cache_image", "manage_image_cache",
        "upload_snapshot"}


@pytest.mark.parametrize("method", sorted(methods.METHODS))
def test_valid_arguments_pass_unchanged(method):
    assert methods.validate(method, VALID_ARGS[method]) == VALID_ARGS[method]


def test_omitted_nullable_arguments_are_filled_with_none():
    checked = methods.validate("preconfigure_instance", {"vdi_uuid": VDI})
    assert checked == {"vdi_uuid": VDI, "network_config": None, "files": None,
                       "ssh_key": None, "metadata": None, "instance_uuid": None}


def test_tuples_become_lists():
    checked = methods.validate("destroy_vdis", {"vdi_uuids": (VDI, INSTANCE)})
    assert checked == {"vdi_uuids": [VDI, INSTANCE]}


@pytest.mark.parametrize("args, field, reason", [
    ({"vdi_uuid": VDI}, "new_gb", "is required"),
    ({"vdi_uuid": VDI, "new_gb": 1.5}, "new_gb", "must be an integer, got float"),
    ({"vdi_uuid": VDI, "new_gb": 65537}, "new_gb", "must be in 1..65536, got 65537"),
    ({"vdi_uuid": None, "new_gb": 1}, "vdi_uuid", "must not be None"),
    ({"vdi_uuid": VDI + "\n", "new_gb": 1}, "vdi_uuid", "must be a canonical lowercase uuid"),
    ({"vdi_uuid": VDI, "new_gb": 1, "zzz": 1, "aaa": 2}, "aaa",
     "is not an argument of auto_configure_disk"),
])
def test_violation_names_the_field_and_the_rule(args, field, reason):
    with pytest.raises(exceptions.InvalidRequest) as raised:
        methods.validate("auto_configure_disk", args)
    assert raised.value.kwargs == {"method": "auto_configure_disk", "field": field,
                                   "reason": reason}


def test_pattern_refuses_a_trailing_newline():
    args = dict(VALID_ARGS["generate_disk"], label="eph\n")
    with pytest.raises(exceptions.InvalidRequest) as raised:
        methods.validate("generate_disk", args)
    assert raised.value.kwargs["field"] == "label"


def test_metadata_must_be_json_and_at_most_one_mib():
    base = VALID_ARGS["generate_configdrive"]
    with pytest.raises(exceptions.InvalidRequest) as raised:
        methods.validate("generate_configdrive", dict(base, metadata={"uuid": b"x"}))
    assert "JSON" in raised.value.kwargs["reason"]
    with pytest.raises(exceptions.InvalidRequest) as raised:
        methods.validate("generate_configdrive", dict(base, metadata={"x": "y" * (1 << 20)}))
    assert raised.value.kwargs["reason"].startswith("must be at most 1048576 bytes as JSON")
    with pytest.raises(exceptions.InvalidRequest):
        methods.validate("generate_configdrive", dict(base, metadata={1: "int key"}))


def test_file_contents_out_of_bounds_names_the_element():
    args = dict(VALID_ARGS["generate_configdrive"], files=[["/a", b""], ["/b", "text"]])
    with pytest.raises(exceptions.InvalidRequest) as raised:
        methods.validate("generate_configdrive", args)
    assert raised.value.kwargs["field"] == "files[1][1]"


@pytest.mark.parametrize("method", ["generate_configdrive", "preconfigure_instance"])
@pytest.mark.parametrize("files, field, reason", [
    ([["etc/hosts", b""]], "files[0][0]", "must be an absolute path"),
    ([["/", b""]], "files[0][0]", "length must be 2..1024"),
    ([["/a", b""], ["/.", b""]], "files[1][0]", "must name a file"),
    ([["/etc/", b""]], "files[0][0]", "must name a file"),
    ([["/etc//hosts", b""]], "files[0][0]", "must name a file"),
    ([["/etc/./hosts", b""]], "files[0][0]", "must name a file"),
    ([["/etc/../hosts", b""]], "files[0][0]", "must name a file"),
    ([["/etc/hosts", b"1"], ["/etc/hosts", b"2"]], "files[1][0]", "the same path as item 0"),
    ([["/etc/a/b/c", b""], ["/etc/a", b""]], "files[0][0]", "lies under item 1's path"),
])
def test_injected_file_paths_must_name_distinct_files(method, files, field, reason):
    args = dict(VALID_ARGS[method], files=files)
    with pytest.raises(exceptions.InvalidRequest) as raised:
        methods.validate(method, args)
    assert raised.value.kwargs["field"] == field
    assert raised.value.kwargs["reason"].startswith(reason)


def test_injected_files_that_only_share_a_prefix_are_accepted():
    files = [["/etc/a", b""], ["/etc/ab/c", b""], ["/etc/a.d/x", b""]]
    args = dict(VALID_ARGS["preconfigure_instance"], files=files)
    assert methods.validate("preconfigure_instance", args)["files"] == files


@pytest.mark.parametrize("value, reason", [
    (float("nan"), "holds NaN or an infinity"),
    (float("inf"), "holds NaN or an infinity"),
    ([float("-inf")], "holds NaN or an infinity"),
    (1 << 64, "holds an integer outside 64 bits"),
    (-(1 << 63) - 1, "holds an integer outside 64 bits"),
    (10 ** 5000, "holds an integer outside 64 bits"),
], ids=["nan", "inf", "-inf in a list", "2**64", "-2**63-1", "10**5000"])
def test_metadata_that_json_cannot_carry_is_refused(value, reason):
    args = dict(VALID_ARGS["generate_configdrive"])
    args["metadata"] = dict(args["metadata"], x=value)
    with pytest.raises(exceptions.InvalidRequest) as raised:
        methods.validate("generate_configdrive", args)
    assert raised.value.kwargs["field"] == "metadata"
    assert raised.value.kwargs["reason"].startswith(reason)


def test_metadata_integers_at_the_64_bit_limits_are_accepted():
    args = dict(VALID_ARGS["generate_configdrive"])
    args["metadata"] = dict(args["metadata"], low=-(1 << 63), high=(1 << 64) - 1, f=0.5)
    assert methods.validate("generate_configdrive", args)["metadata"]["high"] == (1 << 64) - 1


@pytest.mark.parametrize("token", ["tok\r\nX-Injected: 1", "has space", "caf\u00e9", "\t"])
def test_an_auth_token_that_is_no_http_header_value_is_refused_unquoted(token):
    args = dict(VALID_ARGS["fetch_image"], auth_token=token)
    with pytest.raises(exceptions.InvalidRequest) as raised:
        methods.validate("fetch_image", args)
    assert raised.value.kwargs["field"] == "auth_token"
    assert token not in str(raised.value)


@pytest.mark.parametrize("label", ["-V", "-", "--help"])
def test_a_label_starting_with_a_dash_is_refused(label):
    args = dict(VALID_ARGS["generate_disk"], label=label)
    with pytest.raises(exceptions.InvalidRequest) as raised:
        methods.validate("generate_disk", args)
    assert raised.value.kwargs["field"] == "label"


@pytest.mark.parametrize("version", ["\u0661.\u0660", "1", "1.0.0", " 1.0", "1.0\n", "+1.0"])
def test_versions_must_be_ascii_major_dot_minor(version):
    with pytest.raises(ValueError, match="MAJOR.MINOR"):
        methods.parse_version(version)


def test_unknown_method_is_an_invalid_request():
    with pytest.raises(exceptions.InvalidRequest) as raised:
        methods.validate("rm_rf", {})
    assert raised.value.kwargs["field"] == "method"


def test_secrets_never_reach_a_reason_or_a_log_line():
    token = "gAAAAA" + "x" * 9000
    with pytest.raises(exceptions.InvalidRequest) as raised:
        methods.validate("fetch_image", dict(VALID_ARGS["fetch_image"], auth_token=token))
    assert "gAAAAA" not in str(raised.value)

    logged = methods.loggable("generate_configdrive", VALID_ARGS["generate_configdrive"])
    assert logged["admin_password"] == "***"
    assert logged["user_data"] == "<1024 bytes>"
    assert methods.loggable("fetch_image", VALID_ARGS["fetch_image"])["auth_token"] == "***"
    assert methods.loggable("undeclared", {"os_password": "pw"})["os_password"] == "***"


@pytest.mark.parametrize("have, need, serves", [
    ("1.0", "1.0", True), ("1.3", "1.1", True), ("1.0", "1.1", False), ("2.0", "1.0", False),
])
def test_version_compatibility_follows_oslo_messaging(have, need, serves):
    assert methods.version_serves(have, need) is serves


def test_result_check_names_missing_keys():
    assert methods.check_result("destroy_vdis", {"destroyed": 1}) is None
    assert methods.check_result("destroy_vdis", {}) == "destroy_vdis result lacks destroyed"
    assert methods.check_result("describe", []) == "describe returned list, not a dict"


def test_a_call_is_pinned_at_the_newest_argument_it_sends():
    network_only = {"vdi_uuid": VDI, "network_config": "auto lo\n"}
    assert methods.pin("preconfigure_instance", network_only) == "1.0"
    assert methods.pin("preconfigure_instance", dict(network_only, ssh_key=None,
                                                     metadata=None)) == "1.0"
    assert methods.pin("preconfigure_instance", dict(network_only, metadata={})) == "1.1"
    assert methods.pin("preconfigure_instance", VALID_ARGS["preconfigure_instance"]) == "1.1"
    assert methods.pin("destroy_vdis", VALID_ARGS["destroy_vdis"]) == "1.0"


def test_a_call_naming_the_instance_of_its_vdi_is_pinned_at_1_3():
    owned = dict(VALID_ARGS["auto_configure_disk"], instance_uuid=INSTANCE)
    assert methods.pin("auto_configure_disk", VALID_ARGS["auto_configure_disk"]) == "1.0"
    assert methods.pin("auto_configure_disk", owned) == "1.3"
    assert methods.pin("preconfigure_instance", dict(
        VALID_ARGS["preconfigure_instance"], instance_uuid=INSTANCE)) == "1.3"


def test_an_argument_newer_than_the_checking_interface_is_refused():
    with pytest.raises(exceptions.InvalidRequest) as raised:
        methods.validate("preconfigure_instance", VALID_ARGS["preconfigure_instance"], "1.0")
    assert raised.value.kwargs == {
        "method": "preconfigure_instance", "field": "metadata",
        "reason": "is an argument of preconfigure_instance since 1.1, newer than "
                  "interface 1.0"}
    network_only = dict(VALID_ARGS["preconfigure_instance"], ssh_key=None, metadata=None)
    assert methods.validate("preconfigure_instance", network_only, "1.0") == network_only
    assert methods.validate("preconfigure_instance", VALID_ARGS["preconfigure_instance"],
                            "1.1") == VALID_ARGS["preconfigure_instance"]


def test_an_argument_added_later_must_be_nullable_and_newer_than_its_method():
    from rpc.schema import Arg, Int
    with pytest.raises(ValueError, match="must be nullable"):
        Arg("n", Int(0, 1), since="1.1")
    with pytest.raises(ValueError, match="not after its method's 1.1"):
        methods.Method("m", "1.1", args=(Arg("n", Int(0, 1), nullable=True, since="1.1"),))


@pytest.mark.parametrize("key, reason", [
    ("ssh-ed25519 AAAA k1\nssh-rsa BBBB k2", "must match"),
    ("ssh-ed25519 AAAA k1\n", "must match"),
    (" ssh-ed25519 AAAA", "must match"),
    ("ssh-ed25519 AAAA\tk1", "must match"),
    ("", "length must be 1..16384 characters, got 0"),
    ("ssh-rsa " + "A" * 16384, "length must be 1..16384 characters"),
    (b"ssh-ed25519 AAAA", "must be a string, got bytes"),
])
def test_ssh_key_is_one_line_of_printable_text(key, reason):
    with pytest.raises(exceptions.InvalidRequest) as raised:
        methods.validate("preconfigure_instance", dict(VALID_ARGS["preconfigure_instance"],
                                                       ssh_key=key))
    assert raised.value.kwargs["field"] == "ssh_key"
    assert reason in raised.value.kwargs["reason"]
    assert "AAAA" not in raised.value.kwargs["reason"]


@pytest.mark.parametrize("metadata, field, reason", [
    ({"role": 5}, 'metadata["role"]', "must be a string, got int"),
    ({"role": "x" * 256}, 'metadata["role"]', "length must be 0..255 characters, got 256"),
    ({"": "x"}, "metadata", "key 0 length must be 1..255 characters, got 0"),
    ({7: "x"}, "metadata", "key 0 must be a string, got int"),
    ({"k%d" % i: "" for i in range(129)}, "metadata", "must have at most 128 keys, got 129"),
    (["role", "web"], "metadata", "must be a dict, got list"),
])
def test_metadata_is_nova_shaped_text_to_text(metadata, field, reason):
    with pytest.raises(exceptions.InvalidRequest) as raised:
        methods.validate("preconfigure_instance", dict(VALID_ARGS["preconfigure_instance"],
                                                       metadata=metadata))
    assert raised.value.kwargs["field"] == field
    assert raised.value.kwargs["reason"] == reason


def test_a_rabbit_call_context_tells_whether_its_caller_gave_up():
    now = time.time()
    margin = rabbit.DEADLINE_MARGIN_SECONDS
    assert rabbit._caller_gone({}) is None                       # an older client
    assert rabbit._caller_gone({rabbit.DEADLINE_KEY: True}) is None
    assert rabbit._caller_gone({rabbit.DEADLINE_KEY: "soon"}) is None
    assert rabbit._caller_gone(None) is None
    assert rabbit._caller_gone({rabbit.DEADLINE_KEY: now + 5})() is None
    assert rabbit._caller_gone({rabbit.DEADLINE_KEY: now - margin / 2})() is None  # skew
    late = rabbit._caller_gone({rabbit.DEADLINE_KEY: now - margin - 30})()
    assert late.startswith("its timeout passed ") and late.endswith("s ago")


def test_injected_files_are_bounded_together_not_only_one_by_one():
    one_mib_each = [["/f%d" % n, bytes(1 << 19)] for n in range(3)]   # 1.5 MiB in all
    with pytest.raises(exceptions.InvalidRequest) as raised:
        methods.validate("generate_configdrive", dict(VALID_ARGS["generate_configdrive"],
                                                      files=one_mib_each))
    assert raised.value.kwargs["field"] == "files"
    assert "together" in raised.value.kwargs["reason"]
    methods.validate("generate_configdrive", dict(VALID_ARGS["generate_configdrive"],
                                                  files=one_mib_each[:2]))  # 1 MiB: fine
