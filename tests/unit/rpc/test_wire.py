"""Encodings of the two transports: JSON with tagged bytes, msgpack frames."""

import json
import socket
import struct

import pytest

from rpc import exceptions, methods
from rpc.transports import framing
from rpc.transports.rabbit import BytesSerializer, MalformedTag
from tests.functional.rpc.endpoint import VALID_ARGS

PAYLOADS = [
    b"\x00\xff" * 10,
    {"user_data": bytes(range(256)), "files": [["/a", b""], ["/b", b"\x00"]]},
    {"__nxs_bytes__": "a plain string that looks like a tag"},
    {"__nxs_dict__": {"__nxs_bytes__": "nested"}},
    {"k": [1, 2.5, None, True, "s", {"deep": b"x"}]},
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_json_serializer_round_trips_bytes_and_look_alike_dicts(payload):
    serializer = BytesSerializer()
    wire = json.loads(json.dumps(serializer.serialize_entity({}, payload)))
    assert serializer.deserialize_entity({}, wire) == payload


@pytest.mark.parametrize("wire", [
    {"__nxs_bytes__": 5},
    {"__nxs_bytes__": "not base64!"},
    {"__nxs_bytes__": None},
    {"__nxs_dict__": 5},
    {"__nxs_dict__": ["a"]},
])
def test_a_malformed_tag_decodes_to_a_value_the_schema_refuses(wire):
    # A hand-made message: the serializer must not raise (oslo.messaging
    # would return an untyped remote error); the argument's check refuses it.
    args = dict(VALID_ARGS["generate_configdrive"], user_data=wire)
    decoded = BytesSerializer().deserialize_entity({}, args)
    assert isinstance(decoded["user_data"], MalformedTag)
    with pytest.raises(exceptions.InvalidRequest) as raised:
        methods.validate("generate_configdrive", decoded)
    assert raised.value.kwargs["field"] == "user_data"
    assert "MalformedTag" in raised.value.kwargs["reason"]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_msgpack_frame_round_trips(payload):
    left, right = socket.socketpair()
    with left, right:
        left.sendall(framing.pack({"id": 1, "result": payload}))
        assert framing.read_frame(right) == {"id": 1, "result": payload}


def test_frame_above_the_limit_is_refused_before_reading_it():
    left, right = socket.socketpair()
    with left, right:
        left.sendall(struct.pack("!I", framing.MAX_FRAME_BYTES + 1))
        with pytest.raises(framing.FrameError, match="exceeds"):
            framing.read_frame(right)


def test_oversized_message_is_refused_when_packing():
    with pytest.raises(framing.FrameError):
        framing.pack({"blob": b"x" * framing.MAX_FRAME_BYTES})


def test_end_of_stream_is_connection_closed():
    left, right = socket.socketpair()
    with right:
        left.close()
        with pytest.raises(framing.ConnectionClosed):
            framing.read_frame(right)


def test_typed_error_survives_its_wire_form():
    error = exceptions.XapiFailure(details=["SR_FULL", "OpaqueRef:1"])
    rebuilt = exceptions.from_wire(json.loads(json.dumps(error.to_wire())))
    assert type(rebuilt) is exceptions.XapiFailure and rebuilt.details == ["SR_FULL", "OpaqueRef:1"]


def test_access_denied_is_a_registered_wire_error():
    error = exceptions.AccessDenied(uid=65534, path="/run/agent.sock")
    rebuilt = exceptions.from_wire(error.to_wire())
    assert type(rebuilt) is exceptions.AccessDenied
    assert str(rebuilt) == "Process uid 65534 may not use the agent socket /run/agent.sock"
