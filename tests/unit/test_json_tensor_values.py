"""JSON tensor data: values out of a datatype's range are a 400, never a numpy warning
(pytest turns warnings into errors here, so a warning would fail these tests too)."""

import numpy as np
import orjson
import pytest

from edgeserve.wire import oip_rest
from edgeserve.wire.errors import InvalidInput


def _decode(datatype: str, data, shape=None, parameters=None):
    tensor = {"name": "x", "datatype": datatype, "data": data}
    tensor["shape"] = shape if shape is not None else [len(data)]
    document = {"inputs": [tensor]}
    if parameters is not None:
        document["parameters"] = parameters
    return oip_rest.decode_request(orjson.dumps(document), None, "m", None)


@pytest.mark.parametrize(
    ("datatype", "value"),
    [("FP16", 1e6), ("FP16", 70000), ("FP32", 1e300), ("INT8", 1000), ("UINT8", -1)],
    ids=["fp16-float", "fp16-int", "fp32", "int8", "uint8-negative"],
)
def test_a_value_out_of_the_datatype_range_is_refused(datatype, value):
    with pytest.raises(InvalidInput, match=f"out of range for {datatype}"):
        _decode(datatype, [1, value])


def test_values_at_the_edges_of_the_range_are_kept_exactly():
    assert _decode("INT8", [-128, 127]).inputs[0].data.tolist() == [-128, 127]
    assert _decode("UINT64", [2**64 - 1]).inputs[0].data.tolist() == [2**64 - 1]
    assert _decode("FP16", [65504.0]).inputs[0].data.tolist() == [65504.0]


def test_a_json_null_in_a_float_tensor_reads_as_nan():
    data = _decode("FP32", [None, 1.5]).inputs[0].data
    assert np.isnan(data[0]) and data[1] == 1.5


@pytest.mark.parametrize(
    ("datatype", "data"),
    [("FP32", ["1.5"]), ("FP32", [{"a": 1}]), ("INT32", [True]), ("BOOL", [1]), ("INT8", [None])],
    ids=["string-as-float", "object", "bool-as-int", "int-as-bool", "null-as-int"],
)
def test_an_element_of_the_wrong_json_kind_is_refused(datatype, data):
    with pytest.raises(InvalidInput, match=f"does not match datatype {datatype}"):
        _decode(datatype, data)


def test_ragged_nested_data_is_refused():
    with pytest.raises(InvalidInput, match="flat or evenly nested"):
        _decode("FP32", [[1.0, 2.0], [3.0]], shape=[3])


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_number_literals_in_parameters_are_malformed_json(literal):
    tensor = b'{"name":"x","shape":[1],"datatype":"FP32","data":[1]}'
    body = b'{"inputs":[' + tensor + b'],"parameters":{"timeout":' + literal + b"}}"
    with pytest.raises(InvalidInput, match="malformed JSON"):
        oip_rest.decode_request(body, None, "m", None)
