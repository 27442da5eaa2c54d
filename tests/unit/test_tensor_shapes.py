"""Shapes are checked with Python ints before numpy sees them, the same way in both codecs."""

import numpy as np
import orjson
import pytest

from edgeserve.wire import oip_grpc, oip_rest
from edgeserve.wire.errors import InvalidInput
from edgeserve.wire.proto import grpc_service_pb2 as pb
from edgeserve.wire.tensors import MAX_TENSOR_DIMS, MAX_TENSOR_ELEMENTS, element_count

HUGE_DIM = 2**63 - 1


def _rest(shape, data=()) -> bytes:
    tensor = {"name": "x", "shape": shape, "datatype": "FP32", "data": list(data)}
    return orjson.dumps({"inputs": [tensor]})


def _grpc(shape, raw: bytes = b"") -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="m")
    tensor = msg.inputs.add(name="x", datatype="FP32")
    tensor.shape.extend(shape)
    msg.raw_input_contents.append(raw)
    return msg


def test_element_count_is_the_product_of_the_dimensions():
    assert element_count([2, 3, 4], "x") == 24
    assert element_count([], "x") == 1
    assert element_count([0, 5], "x") == 0


def test_more_than_the_dimension_limit_is_refused_by_count():
    with pytest.raises(InvalidInput, match=f"65 dimensions, at most {MAX_TENSOR_DIMS}"):
        element_count([1] * 65, "x")


@pytest.mark.parametrize(
    "shape",
    [[0, HUGE_DIM], [HUGE_DIM, 0], [2**32, 2**32]],
    ids=["empty-huge-last", "empty-huge-first", "product-past-limit"],
)
def test_dimensions_that_multiply_past_the_limit_are_refused_even_when_empty(shape):
    with pytest.raises(InvalidInput, match=f"multiply past {MAX_TENSOR_ELEMENTS}"):
        element_count(shape, "x")


@pytest.mark.parametrize(
    "shape", [[-1], [1.0], ["1"], [True], [None]], ids=["negative", "float", "str", "bool", "null"]
)
def test_a_dimension_that_is_not_a_non_negative_int_is_refused(shape):
    with pytest.raises(InvalidInput, match="must be non-negative integers"):
        element_count(shape, "x")


@pytest.mark.parametrize(
    "shape", [[0, HUGE_DIM], [0] * 65, [1] * 65], ids=["huge-dim", "65-zeros", "65-ones"]
)
def test_rest_codec_refuses_shapes_numpy_cannot_build(shape):
    with pytest.raises(InvalidInput, match="tensor 'x'"):
        oip_rest.decode_request(_rest(shape), None, "m", None)


@pytest.mark.parametrize(
    "shape", [[0, HUGE_DIM], [0] * 65, [1] * 65], ids=["huge-dim", "65-zeros", "65-ones"]
)
def test_grpc_codec_refuses_shapes_numpy_cannot_build(shape):
    with pytest.raises(InvalidInput, match="tensor 'x'"):
        oip_grpc.request_from_proto(_grpc(shape))


def test_an_empty_tensor_of_a_valid_shape_still_decodes():
    request = oip_rest.decode_request(_rest([0, 64]), None, "m", None)
    assert request.inputs[0].data.shape == (0, 64)
    assert oip_grpc.request_from_proto(_grpc([0, 64])).inputs[0].data.shape == (0, 64)


def test_data_length_that_disagrees_with_the_shape_names_both_counts():
    with pytest.raises(InvalidInput, match="shape holds 4 elements but data has 3"):
        oip_rest.decode_request(_rest([2, 2], [1.0, 2.0, 3.0]), None, "m", None)
    with pytest.raises(InvalidInput, match="12 bytes given, shape and FP32 need 16"):
        oip_grpc.request_from_proto(_grpc([2, 2], np.zeros(3, "<f4").tobytes()))
