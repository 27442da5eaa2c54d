"""Client text in error messages is cut to a readable length, and no message outgrows
the gRPC metadata a status travels in."""

import orjson
import pytest

from edgeserve.wire import oip_grpc, oip_rest
from edgeserve.wire.errors import (
    MAX_MESSAGE_CHARS,
    MAX_SHOWN_CHARS,
    InvalidInput,
    ModelNotFound,
    RateLimited,
    shown,
)
from edgeserve.wire.proto import grpc_service_pb2 as pb

HUGE = "n" * 100_000


def test_shown_keeps_short_text_as_it_is():
    assert shown("input") == "input"
    assert shown(5) == "5" and shown([1, 2]) == "[1, 2]"


def test_shown_cuts_long_text_and_says_how_much():
    text = shown("a" * 1000)
    assert text.startswith("a" * MAX_SHOWN_CHARS) and text.endswith("(872 more characters)")
    assert len(text) < MAX_SHOWN_CHARS + 40


def test_every_error_message_is_capped():
    error = ModelNotFound(f"unknown model '{HUGE}'")
    assert len(error.message) < MAX_MESSAGE_CHARS + 40 and str(error) == error.message
    assert len(RateLimited(HUGE, 1.0).message) < MAX_MESSAGE_CHARS + 40


def test_rest_codec_quotes_a_huge_tensor_name_shortly():
    tensor = {"name": HUGE, "shape": [1], "datatype": "FP99", "data": [1]}
    with pytest.raises(InvalidInput) as refused:
        oip_rest.decode_request(orjson.dumps({"inputs": [tensor]}), None, "m", None)
    assert "more characters" in refused.value.message
    assert len(refused.value.message) < 2 * MAX_SHOWN_CHARS + 100


def test_rest_codec_quotes_a_huge_datatype_shortly():
    tensor = {"name": "x", "shape": [1], "datatype": HUGE, "data": [1]}
    with pytest.raises(InvalidInput, match="unsupported datatype") as refused:
        oip_rest.decode_request(orjson.dumps({"inputs": [tensor]}), None, "m", None)
    assert len(refused.value.message) < 2 * MAX_SHOWN_CHARS + 100


def test_grpc_codec_quotes_a_huge_tensor_name_shortly():
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name=HUGE, datatype="FP99").shape.append(1)
    with pytest.raises(InvalidInput, match="unsupported datatype") as refused:
        oip_grpc.request_from_proto(msg)
    assert len(refused.value.message) < 2 * MAX_SHOWN_CHARS + 100
