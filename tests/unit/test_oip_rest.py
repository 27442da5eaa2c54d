"""The OIP v2 REST codec: JSON tensors, the binary extension, and every malformed body."""

import numpy as np
import orjson
import pytest

from edgeserve.wire import oip_rest
from edgeserve.wire.errors import InvalidInput
from edgeserve.wire.tensors import InferRequest, InferResponse, InferTensor, RequestedOutput


def _request(*arrays: tuple[str, np.ndarray]) -> InferRequest:
    return InferRequest("m", [InferTensor.from_numpy(name, a) for name, a in arrays])


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.arange(6, dtype=np.int64).reshape(2, 3),
        np.array([True, False]),
        np.array([b"hello", b"", "héllo".encode()], dtype=object),
    ],
    ids=["fp32", "int64", "bool", "bytes"],
)
def test_request_round_trips_in_json_and_binary(array, binary):
    body, header_length = oip_rest.encode_request(_request(("x", array)), binary=binary)
    decoded = oip_rest.decode_request(body, header_length, "m", None)
    assert decoded.inputs[0].datatype == InferTensor.from_numpy("x", array).datatype
    assert decoded.inputs[0].data.shape == array.shape
    assert decoded.inputs[0].data.tolist() == array.tolist()


def test_nested_json_data_is_accepted_and_flattened():
    body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]}]}
    )
    decoded = oip_rest.decode_request(body, None, "m", None)
    assert decoded.inputs[0].data.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_response_is_binary_only_for_outputs_that_asked():
    request = _request(("x", np.zeros(1, np.float32)))
    request.outputs = [
        RequestedOutput("a", {"binary_data": True}),
        RequestedOutput("b", {"binary_data": False}),
    ]
    response = InferResponse(
        "m",
        "1",
        [
            InferTensor.from_numpy("a", np.ones(3, np.float32)),
            InferTensor.from_numpy("b", np.ones(2, np.int64)),
        ],
    )
    body, header_length = oip_rest.encode_response(response, request)
    assert header_length is not None
    header = orjson.loads(body[:header_length])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 12
    assert header["outputs"][1]["data"] == [1, 1]
    decoded = oip_rest.decode_response(body, header_length)
    assert decoded.output("a").data.tolist() == [1.0, 1.0, 1.0]


def test_binary_data_output_parameter_makes_every_output_binary():
    request = _request(("x", np.zeros(1, np.float32)))
    request.parameters = {"binary_data_output": True}
    response = InferResponse("m", "1", [InferTensor.from_numpy("a", np.ones(2, np.float32))])
    _, header_length = oip_rest.encode_response(response, request)
    assert header_length is not None


def _body(tensor: dict) -> bytes:
    return orjson.dumps({"inputs": [tensor]})


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b"{not json", None, "malformed JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b"{}", None, "non-empty 'inputs'"),
        (_body({"shape": [1], "datatype": "FP32", "data": [1]}), None, "without a 'name'"),
        (_body({"name": "x", "shape": [2], "datatype": "FP32", "data": [1]}), None, "2 elements"),
        (_body({"name": "x", "shape": [1], "datatype": "FP99", "data": [1]}), None, "FP99"),
        (_body({"name": "x", "shape": [1], "datatype": "INT64", "data": [1.5]}), None, "INT64"),
        (_body({"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}), None, "FP32"),
        (_body({"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}), None, "shape"),
        (_body({"name": "x", "shape": [1], "datatype": "FP32"}), None, "no 'data'"),
        (b"{}", 10, "outside body"),
    ],
    ids=[
        "garbage",
        "not-object",
        "no-inputs",
        "no-name",
        "count",
        "datatype",
        "truncating-int",
        "string-in-fp32",
        "negative-dim",
        "no-data",
        "bad-header-length",
    ],
)
def test_malformed_request_is_refused_with_a_precise_message(body, header_length, message):
    with pytest.raises(InvalidInput, match=message):
        oip_rest.decode_request(body, header_length, "m", None)


def test_truncated_binary_tensor_is_refused():
    body, header_length = oip_rest.encode_request(
        _request(("x", np.zeros(4, np.float32))), binary=True
    )
    with pytest.raises(InvalidInput, match="exceeds the body"):
        oip_rest.decode_request(body[:-1], header_length, "m", None)


def test_binary_size_that_disagrees_with_shape_is_refused():
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    )
    with pytest.raises(InvalidInput, match="8 bytes given"):
        oip_rest.decode_request(header + bytes(8), len(header), "m", None)


def test_trailing_bytes_after_binary_tensors_are_refused():
    body, header_length = oip_rest.encode_request(
        _request(("x", np.zeros(2, np.float32))), binary=True
    )
    with pytest.raises(InvalidInput, match="unclaimed"):
        oip_rest.decode_request(body + b"xx", header_length, "m", None)
