"""The OIP v2 gRPC codec: conversions, every malformed message, and stock-client wire compat."""

from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as triton_pb
from tritonclient.utils import InferenceServerException

from edgeserve.wire import oip_grpc
from edgeserve.wire.errors import InvalidInput
from edgeserve.wire.proto import grpc_service_pb2 as pb
from edgeserve.wire.proto import grpc_service_pb2_grpc as pb_grpc
from edgeserve.wire.tensors import (
    DATATYPE_TO_NUMPY,
    InferRequest,
    InferResponse,
    InferTensor,
    RequestedOutput,
)

ARRAYS = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.arange(-3, 3, dtype=np.int64).reshape(2, 3),
    np.array([[True, False], [False, True]]),
    np.array([b"hello", b"", "h\u00e9llo".encode(), b"\x00\xff"], dtype=object),
]
ARRAY_IDS = ["fp32", "int64", "bool", "bytes"]


def _request(*arrays: tuple[str, np.ndarray]) -> InferRequest:
    return InferRequest("m", [InferTensor.from_numpy(name, a) for name, a in arrays])


def _over_the_wire(msg):
    """Serialize and parse again, as a peer would see the message."""
    return type(msg).FromString(msg.SerializeToString())


def _tensor(name: str, datatype: str, shape: list[int], **contents) -> dict:
    entry = {"name": name, "datatype": datatype, "shape": shape}
    if contents:
        entry["contents"] = pb.InferTensorContents(**contents)
    return entry


# -- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("array", ARRAYS, ids=ARRAY_IDS)
def test_request_round_trips_in_raw_and_typed_contents(array, raw):
    request = _request(("x", array), ("y", np.ones(2, np.float64)))
    request.id, request.model_version = "req-1", "3"
    request.outputs = [RequestedOutput("out", {"classification": 2})]
    msg = _over_the_wire(oip_grpc.request_to_proto(request, raw=raw))
    assert len(msg.raw_input_contents) == (2 if raw else 0)
    decoded = oip_grpc.request_from_proto(msg)
    assert decoded.inputs[0].datatype == InferTensor.from_numpy("x", array).datatype
    assert decoded.inputs[0].data.shape == array.shape
    assert decoded.inputs[0].data.tolist() == array.tolist()
    assert decoded.inputs[1].data.tolist() == [1.0, 1.0]
    assert (decoded.id, decoded.model_version) == ("req-1", "3")
    assert decoded.outputs == [RequestedOutput("out", {"classification": 2})]


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("array", ARRAYS, ids=ARRAY_IDS)
def test_response_round_trips_in_raw_and_typed_contents(array, raw):
    response = InferResponse("m", "1", [InferTensor.from_numpy("out", array)], id="r")
    msg = _over_the_wire(oip_grpc.response_to_proto(response, raw=raw))
    assert bool(msg.raw_output_contents) is raw
    decoded = oip_grpc.response_from_proto(msg)
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("m", "1", "r")
    assert decoded.output("out").data.tolist() == array.tolist()
    assert decoded.output("out").data.shape == array.shape


def test_empty_request_fields_decode_as_none():
    msg = pb.ModelInferRequest(
        model_name="m", inputs=[_tensor("x", "FP32", [1], fp32_contents=[1])]
    )
    decoded = oip_grpc.request_from_proto(msg)
    assert (decoded.model_version, decoded.id, decoded.outputs) == (None, None, [])


@pytest.mark.parametrize(
    ("datatype", "values"),
    [("INT8", [-128, 127]), ("UINT16", [0, 65535]), ("UINT64", [2**64 - 1]), ("INT32", [-5])],
)
def test_narrow_integer_types_travel_in_their_wider_typed_fields(datatype, values):
    array = np.array(values, dtype=DATATYPE_TO_NUMPY[datatype])
    msg = _over_the_wire(oip_grpc.request_to_proto(_request(("x", array)), raw=False))
    decoded = oip_grpc.request_from_proto(msg).inputs[0]
    assert decoded.datatype == datatype
    assert decoded.data.dtype == array.dtype
    assert decoded.data.tolist() == values


def test_fp16_travels_raw():
    array = np.array([1.5, -2.0], dtype=np.float16)
    msg = _over_the_wire(oip_grpc.request_to_proto(_request(("x", array))))
    assert oip_grpc.request_from_proto(msg).inputs[0].data.tolist() == [1.5, -2.0]


def test_fp16_cannot_be_sent_as_typed_contents():
    with pytest.raises(InvalidInput, match="tensor 'x': FP16 has no typed contents; send it raw"):
        oip_grpc.request_to_proto(_request(("x", np.zeros(1, np.float16))), raw=False)


def test_empty_tensor_needs_no_contents():
    msg = pb.ModelInferRequest(model_name="m", inputs=[_tensor("x", "FP32", [0, 4])])
    assert oip_grpc.request_from_proto(msg).inputs[0].data.shape == (0, 4)


def test_tensor_parameters_survive_the_round_trip():
    request = _request(("x", np.zeros(1, np.float32)))
    request.inputs[0].parameters = {"layout": "NCHW"}
    decoded = oip_grpc.request_from_proto(_over_the_wire(oip_grpc.request_to_proto(request)))
    assert decoded.inputs[0].parameters == {"layout": "NCHW"}


# -- malformed messages -----------------------------------------------------------------


def _raw_request(tensors: list[dict], raw: list[bytes]) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name="m", inputs=tensors, raw_input_contents=raw)


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        (pb.ModelInferRequest(model_name="m"), "request must have a non-empty 'inputs' list"),
        (
            _raw_request([_tensor("x", "FP32", [2, 2])], [b"\x00" * 12]),
            r"tensor 'x': 12 bytes given, shape and FP32 need 16",
        ),
        (
            _raw_request([_tensor("x", "FP32", [1])], [b"\x00" * 4, b"\x00" * 4]),
            r"2 raw_input_contents entries for 1 tensors",
        ),
        (
            _raw_request([_tensor("x", "FP32", [1]), _tensor("y", "FP32", [1])], [b"\x00" * 4]),
            r"1 raw_input_contents entries for 2 tensors",
        ),
        (
            _raw_request(
                [_tensor("x", "FP32", [1]), _tensor("y", "FP32", [1], fp32_contents=[1.0])],
                [b"\x00" * 4, b"\x00" * 4],
            ),
            r"tensor 'y': 'contents' given while the request uses raw_input_contents",
        ),
        (
            _raw_request([_tensor("x", "COMPLEX64", [1])], [b"\x00" * 8]),
            r"tensor 'x': unsupported datatype 'COMPLEX64'",
        ),
        (
            _raw_request([_tensor("x", "FP32", [3], fp32_contents=[1.0, 2.0])], []),
            r"tensor 'x': shape holds 3 elements but contents has 2",
        ),
        (
            _raw_request([_tensor("x", "FP32", [1], int64_contents=[1])], []),
            r"tensor 'x': datatype FP32 travels in fp32_contents, not int64_contents",
        ),
        (
            _raw_request([_tensor("x", "FP32", [2])], []),
            r"tensor 'x': no 'contents' and no raw_input_contents",
        ),
        (
            _raw_request([_tensor("x", "INT8", [1], int_contents=[300])], []),
            r"tensor 'x': contents out of range for INT8",
        ),
        (
            _raw_request([_tensor("x", "UINT8", [1], uint_contents=[256])], []),
            r"tensor 'x': contents out of range for UINT8",
        ),
        (
            _raw_request([_tensor("x", "FP16", [1], fp32_contents=[1.0])], []),
            r"tensor 'x': FP16 has no typed contents; send it raw",
        ),
        (
            _raw_request([_tensor("x", "FP32", [-1], fp32_contents=[1.0])], []),
            r"tensor 'x': shape \[-1\] must be non-negative integers",
        ),
        (
            _raw_request([_tensor("", "FP32", [1], fp32_contents=[1.0])], []),
            r"tensor without a 'name'",
        ),
        (
            _raw_request([_tensor("x", "FP32", [1]), _tensor("x", "FP32", [1])], [b"\x00" * 4] * 2),
            r"tensor 'x' given more than once",
        ),
        (
            _raw_request([_tensor("s", "BYTES", [1])], [b"\x05\x00\x00\x00ab"]),
            r"tensor 's': truncated BYTES element",
        ),
        (
            _raw_request([_tensor("s", "BYTES", [2])], [b"\x01\x00\x00\x00a"]),
            r"tensor 's': shape holds 2 elements, got 1",
        ),
    ],
    ids=[
        "no-inputs",
        "raw-size-mismatch",
        "more-raw-blobs-than-inputs",
        "fewer-raw-blobs-than-inputs",
        "raw-mixed-with-typed",
        "unknown-datatype",
        "typed-count-mismatch",
        "typed-wrong-field",
        "no-data",
        "int8-out-of-range",
        "uint8-out-of-range",
        "fp16-typed",
        "negative-dimension",
        "nameless-tensor",
        "duplicate-name",
        "truncated-bytes-element",
        "bytes-count-mismatch",
    ],
)
def test_malformed_request_is_refused_with_a_precise_message(msg, message):
    with pytest.raises(InvalidInput, match=message):
        oip_grpc.request_from_proto(_over_the_wire(msg))


def test_malformed_response_is_refused_naming_the_raw_output_field():
    msg = pb.ModelInferResponse(
        outputs=[{"name": "o", "datatype": "FP32", "shape": [1]}], raw_output_contents=[b"", b""]
    )
    with pytest.raises(InvalidInput, match="2 raw_output_contents entries for 1 tensors"):
        oip_grpc.response_from_proto(msg)


# -- parameters -------------------------------------------------------------------------


def test_parameters_round_trip_through_each_oneof_choice():
    params = {
        "flag": True,
        "count": -7,
        "huge": 2**64 - 1,
        "ratio": 0.25,
        "label": "fast",
        "unset": None,
        "np_int": np.int32(4),
        "np_bool": np.bool_(False),
    }
    protos = oip_grpc.parameters_to_proto(params)
    assert {key: value.WhichOneof("parameter_choice") for key, value in protos.items()} == {
        "flag": "bool_param",
        "count": "int64_param",
        "huge": "uint64_param",
        "ratio": "double_param",
        "label": "string_param",
        "unset": None,
        "np_int": "int64_param",
        "np_bool": "bool_param",
    }
    msg = _over_the_wire(pb.ModelInferRequest(parameters=protos))
    assert oip_grpc.parameters_from_proto(msg.parameters) == params


def test_other_parameter_values_are_sent_as_json_text():
    protos = oip_grpc.parameters_to_proto({"classes": [1, 2], "opts": {"k": "v"}})
    assert oip_grpc.parameters_from_proto(protos) == {"classes": "[1,2]", "opts": '{"k":"v"}'}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (2**64, r"parameter 'p': 18446744073709551616 is outside the int64 and uint64 ranges"),
        (object(), r"parameter 'p': a object has no InferParameter form"),
    ],
    ids=["int-too-large", "not-json"],
)
def test_parameter_without_a_wire_form_is_refused(value, message):
    with pytest.raises(InvalidInput, match=message):
        oip_grpc.parameters_to_proto({"p": value})


# -- metadata ---------------------------------------------------------------------------


def test_model_metadata_takes_the_rest_endpoint_dict():
    msg = oip_grpc.model_metadata_to_proto(
        {
            "name": "digits",
            "versions": ["2"],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}],
            "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, 10]}],
        }
    )
    parsed = triton_pb.ModelMetadataResponse.FromString(msg.SerializeToString())
    assert (parsed.name, list(parsed.versions), parsed.platform) == (
        "digits",
        ["2"],
        "onnxruntime_onnx",
    )
    assert [(t.name, t.datatype, list(t.shape)) for t in parsed.inputs] == [("x", "FP32", [-1, 64])]
    assert parsed.outputs[0].name == "probs"


def test_server_metadata_takes_the_rest_endpoint_dict():
    msg = oip_grpc.server_metadata_to_proto(
        {"name": "edgeserve-agent", "version": "0.1.0", "extensions": ["parameters"]}
    )
    parsed = triton_pb.ServerMetadataResponse.FromString(msg.SerializeToString())
    assert (parsed.name, parsed.version, list(parsed.extensions)) == (
        "edgeserve-agent",
        "0.1.0",
        ["parameters"],
    )


# -- wire compatibility with the stock client -------------------------------------------


def _triton_inputs() -> tuple[list[triton.InferInput], dict[str, np.ndarray]]:
    arrays = dict(zip(["fp32", "int64", "bool", "bytes"], ARRAYS, strict=True))
    inputs = []
    for name, array in arrays.items():
        datatype = InferTensor.from_numpy(name, array).datatype
        infer_input = triton.InferInput(name, list(array.shape), datatype)
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    return inputs, arrays


def test_request_built_by_tritonclient_decodes_to_the_same_arrays():
    inputs, arrays = _triton_inputs()
    # What InferenceServerClient.infer puts on the wire (tritonclient.grpc._utils).
    request = triton_pb.ModelInferRequest(model_name="m", model_version="2", id="abc")
    for infer_input in inputs:
        request.inputs.extend([infer_input._get_tensor()])
        request.raw_input_contents.extend([infer_input._get_content()])
    request.outputs.extend([triton.InferRequestedOutput("out", class_count=3)._get_tensor()])
    request.parameters["priority"].uint64_param = 1
    request.parameters["timeout"].int64_param = 5000

    decoded = oip_grpc.request_from_proto(
        pb.ModelInferRequest.FromString(request.SerializeToString())
    )

    assert (decoded.model_name, decoded.model_version, decoded.id) == ("m", "2", "abc")
    for name, array in arrays.items():
        tensor = next(t for t in decoded.inputs if t.name == name)
        assert tensor.data.dtype == (object if name == "bytes" else array.dtype)
        np.testing.assert_array_equal(tensor.data, array)
    assert decoded.outputs == [RequestedOutput("out", {"classification": 3})]
    assert decoded.parameters == {"priority": 1, "timeout": 5000}


def test_our_response_reads_back_through_tritonclient_infer_result():
    _, arrays = _triton_inputs()
    response = InferResponse(
        "m", "1", [InferTensor.from_numpy(name, a) for name, a in arrays.items()], id="abc"
    )
    wire = oip_grpc.response_to_proto(response).SerializeToString()

    result = triton.InferResult(triton_pb.ModelInferResponse.FromString(wire))

    for name, array in arrays.items():
        np.testing.assert_array_equal(result.as_numpy(name), array)
    assert result.get_response().id == "abc"


class _DoublingServicer(pb_grpc.GRPCInferenceServiceServicer):
    """A minimal server on our stubs: doubles FP32 inputs, maps InvalidInput to a status."""

    def ServerLive(self, request, context):  # noqa: N802 (gRPC's method names)
        return pb.ServerLiveResponse(live=True)

    def ModelMetadata(self, request, context):  # noqa: N802 (gRPC's method names)
        return oip_grpc.model_metadata_to_proto(
            {"name": request.name, "versions": ["1"], "platform": "test", "inputs": []}
        )

    def ModelInfer(self, request, context):  # noqa: N802 (gRPC's method names)
        try:
            infer = oip_grpc.request_from_proto(request)
        except InvalidInput as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        outputs = [InferTensor.from_numpy("out", infer.inputs[0].data * 2)]
        return oip_grpc.response_to_proto(InferResponse(infer.model_name, "1", outputs))


@pytest.fixture
def server_port() -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(_DoublingServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None).wait()


def test_stock_client_talks_to_a_server_on_our_stubs(server_port):
    client = triton.InferenceServerClient(f"127.0.0.1:{server_port}")
    try:
        assert client.is_server_live()
        assert client.get_model_metadata("digits").name == "digits"
        infer_input = triton.InferInput("x", [2, 2], "FP32")
        infer_input.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(2, 2))
        result = client.infer("digits", [infer_input])
        np.testing.assert_array_equal(result.as_numpy("out"), [[0.0, 2.0], [4.0, 6.0]])
        bad_input = triton.InferInput("x", [2], "FP32")
        bad_input.set_data_from_numpy(np.zeros(2, np.float32))
        bad_input.set_shape([3])  # the client checks shapes only in set_data_from_numpy
        with pytest.raises(InferenceServerException, match="tensor 'x': 8 bytes given"):
            client.infer("digits", [bad_input])
    finally:
        client.close()


def _fields(descriptor) -> dict:
    """What decides the wire format of a message, nested messages included."""
    fields = {
        field.name: (
            field.number,
            field.type,
            field.is_repeated,
            field.is_packed,
            field.message_type.full_name if field.message_type else None,
            field.containing_oneof.name if field.containing_oneof else None,
        )
        for field in descriptor.fields
    }
    nested = {nested.name: _fields(nested) for nested in descriptor.nested_types}
    return {"fields": fields, "nested": nested, "map_entry": descriptor.GetOptions().map_entry}


@pytest.mark.parametrize("name", sorted(pb.DESCRIPTOR.message_types_by_name))
def test_message_matches_tritonclient_field_for_field(name):
    ours = pb.DESCRIPTOR.message_types_by_name[name]
    theirs = triton_pb.DESCRIPTOR.message_types_by_name[name]
    assert ours.full_name == theirs.full_name == f"inference.{name}"
    assert _fields(ours) == _fields(theirs)


def test_every_rpc_we_serve_has_tritonclients_path_and_types():
    ours = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    assert len(ours.methods) == 9
    for method in ours.methods:
        twin = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == twin.input_type.full_name
        assert method.output_type.full_name == twin.output_type.full_name
        assert (method.client_streaming, method.server_streaming) == (False, False)
