"""OIP v2 REST body codec: JSON tensors and the binary tensor data extension.

A body is either plain JSON, or (binary extension) a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw tensor bytes, in the order
of the tensors whose ``parameters.binary_data_size`` is set. BYTES tensors in binary form
are each element as a 4-byte little-endian length followed by its bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from edgeserve.wire.errors import InvalidInput, shown
from edgeserve.wire.raw_tensors import array_from_bytes, tensor_to_bytes
from edgeserve.wire.tensors import (
    DATATYPE_TO_NUMPY,
    InferRequest,
    InferResponse,
    InferTensor,
    Parameters,
    RequestedOutput,
    element_count,
    numpy_dtype,
)

HEADER_LENGTH = "inference-header-content-length"


def header_length(headers: Mapping[bytes, bytes]) -> int | None:
    """The binary extension's JSON header length from ASGI (lowercase, bytes) headers."""
    raw = headers.get(HEADER_LENGTH.encode())
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(
            f"Inference-Header-Content-Length {shown(raw)} is not an integer"
        ) from None


def decode_request(
    body: bytes, header_length: int | None, model_name: str, model_version: str | None
) -> InferRequest:
    """Parse an infer request body; every defect raises InvalidInput naming the tensor."""
    header, binary = _split_body(body, header_length)
    document = _parse_json(header)
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("request must have a non-empty 'inputs' list")
    inputs: list[InferTensor] = []
    offset = 0
    for raw in raw_inputs:
        tensor, offset = _decode_input(raw, binary, offset)
        inputs.append(tensor)
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} unclaimed bytes after the binary tensors")
    return InferRequest(
        model_name=model_name,
        model_version=model_version,
        id=_optional_str(document.get("id"), "id"),
        inputs=inputs,
        parameters=_parameters(document.get("parameters"), "request"),
        outputs=_requested_outputs(document.get("outputs")),
    )


def encode_request(request: InferRequest, binary: bool = True) -> tuple[bytes, int | None]:
    """Client side: the body of an infer request, and the header length when binary."""
    document: dict[str, Any] = {"inputs": []}
    if request.id is not None:
        document["id"] = request.id
    if request.parameters:
        document["parameters"] = request.parameters
    if request.outputs:
        document["outputs"] = [
            {"name": out.name, "parameters": out.parameters} for out in request.outputs
        ]
    chunks: list[bytes] = []
    for tensor in request.inputs:
        entry, chunk = _encode_tensor(tensor, binary)
        document["inputs"].append(entry)
        if chunk is not None:
            chunks.append(chunk)
    return _join(document, chunks, binary)


def encode_response(
    response: InferResponse, request: InferRequest | None = None
) -> tuple[bytes, int | None]:
    """The body of an infer response; binary outputs only where the request asked."""
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": [],
    }
    if response.id is not None:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = response.parameters
    chunks: list[bytes] = []
    for tensor in response.outputs:
        entry, chunk = _encode_tensor(tensor, _wants_binary(request, tensor.name))
        document["outputs"].append(entry)
        if chunk is not None:
            chunks.append(chunk)
    return _join(document, chunks, bool(chunks))


def decode_response(body: bytes, header_length: int | None) -> InferResponse:
    """Client side: parse an infer response (used by our own clients and tests)."""
    header, binary = _split_body(body, header_length)
    document = _parse_json(header)
    if "error" in document:
        raise InvalidInput(str(document["error"]))
    outputs: list[InferTensor] = []
    offset = 0
    for raw in document.get("outputs", []):
        tensor, offset = _decode_input(raw, binary, offset)
        outputs.append(tensor)
    return InferResponse(
        model_name=str(document.get("model_name", "")),
        model_version=str(document.get("model_version", "")),
        id=document.get("id"),
        outputs=outputs,
        parameters=document.get("parameters") or {},
    )


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def _split_body(body: bytes, header_length: int | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if header_length < 0 or header_length > len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length {header_length} outside body of {len(body)} bytes"
        )
    return body[:header_length], body[header_length:]


def _parse_json(header: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput("request body must be a JSON object")
    return document


def _decode_input(raw: Any, binary: bytes, offset: int) -> tuple[InferTensor, int]:
    if not isinstance(raw, dict):
        raise InvalidInput("each tensor must be a JSON object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput("tensor without a 'name'")
    datatype = raw.get("datatype")
    if not isinstance(datatype, str):
        raise InvalidInput(f"tensor '{shown(name)}': missing 'datatype'")
    if datatype not in DATATYPE_TO_NUMPY:
        raise InvalidInput(f"tensor '{shown(name)}': unsupported datatype '{shown(datatype)}'")
    shape = raw.get("shape")
    if not isinstance(shape, list):
        raise InvalidInput(f"tensor '{shown(name)}': missing 'shape'")
    count = element_count(shape, name)
    params = _parameters(raw.get("parameters"), f"tensor '{shown(name)}'")
    size = params.pop("binary_data_size", None)
    if size is not None:
        if not _is_int(size) or size < 0 or offset + size > len(binary):
            raise InvalidInput(
                f"tensor '{shown(name)}': binary_data_size {shown(size)} exceeds the body"
            )
        chunk = binary[offset : offset + size]
        array = array_from_bytes(chunk, datatype, count, name)
        offset += size
    else:
        if "data" not in raw:
            raise InvalidInput(f"tensor '{shown(name)}': no 'data' and no binary_data_size")
        array = _array_from_json(raw["data"], datatype, count, name)
    return InferTensor(name, datatype, shape, array.reshape(shape), params), offset


def _array_from_json(data: Any, datatype: str, count: int, name: str) -> npt.NDArray[Any]:
    """The flat array of ``data``: elements of the datatype's JSON kind, within its range
    (checked, never cast blindly: numpy would wrap integers and warn its way to inf)."""
    dtype = numpy_dtype(datatype)
    if datatype == "BYTES":
        flat = _flatten(data)
        _check_count(len(flat), count, name)
        array = np.empty(count, dtype=object)
        array[:] = [_to_bytes(item, name) for item in flat]
        return array
    try:
        parsed = np.asarray(data).reshape(-1)  # numpy infers the kind the JSON holds
    except ValueError:
        raise InvalidInput(
            f"tensor '{shown(name)}': data must be a flat or evenly nested list"
        ) from None
    _check_count(parsed.size, count, name)
    if parsed.size and not _kind_fits(parsed, data, dtype.kind):
        raise InvalidInput(f"tensor '{shown(name)}': data does not match datatype {datatype}")
    if parsed.dtype.kind == "O":  # numbers and nulls (NaN, as JSON writers send it)
        parsed = parsed.astype(np.float64)
    if dtype.kind in "iu" and parsed.size:
        limits = np.iinfo(dtype)
        if parsed.min() < limits.min or parsed.max() > limits.max:
            raise InvalidInput(f"tensor '{shown(name)}': data out of range for {datatype}")
    try:
        with np.errstate(over="raise", invalid="raise"):
            return parsed.astype(dtype, copy=False)
    except FloatingPointError:
        raise InvalidInput(f"tensor '{shown(name)}': data out of range for {datatype}") from None


def _check_count(size: int, count: int, name: str) -> None:
    if size != count:
        raise InvalidInput(
            f"tensor '{shown(name)}': shape holds {count} elements but data has {size}"
        )


def _kind_fits(parsed: npt.NDArray[Any], data: Any, kind: str) -> bool:
    """Bool tensors take JSON booleans, integer tensors integers, float tensors numbers or
    null (orjson and JavaScript write NaN as null; validation then refuses it by name): no
    float is truncated, no string coerced. numpy reads [true, 2] as integers, so integer
    tensors also look at each element."""
    if kind == "b":
        return parsed.dtype.kind == "b"
    if kind in "iu":
        return parsed.dtype.kind in "iu" and all(_is_int(item) for item in _flatten(data))
    if parsed.dtype.kind == "O":
        return all(item is None or _is_int(item) or isinstance(item, float) for item in parsed)
    return parsed.dtype.kind in "iuf"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack: list[Any] = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    return flat


def _to_bytes(item: Any, name: str) -> bytes:
    if isinstance(item, str):
        return item.encode()
    raise InvalidInput(f"tensor '{shown(name)}': BYTES elements must be strings in JSON")


def _encode_tensor(tensor: InferTensor, binary: bool) -> tuple[dict[str, Any], bytes | None]:
    entry: dict[str, Any] = {
        "name": tensor.name,
        "datatype": tensor.datatype,
        "shape": list(tensor.shape),
    }
    params = dict(tensor.parameters)
    if binary:
        chunk = tensor_to_bytes(tensor)
        params["binary_data_size"] = len(chunk)
        entry["parameters"] = params
        return entry, chunk
    if params:
        entry["parameters"] = params
    if tensor.datatype == "BYTES":
        entry["data"] = [_bytes_to_str(item) for item in tensor.data.reshape(-1)]
    else:
        entry["data"] = tensor.data.reshape(-1).tolist()
    return entry, None


def _bytes_to_str(item: Any) -> str:
    return item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)


def _wants_binary(request: InferRequest | None, output: str) -> bool:
    if request is None:
        return False
    for requested in request.outputs:
        if requested.name == output and "binary_data" in requested.parameters:
            return bool(requested.parameters["binary_data"])
    return bool(request.parameters.get("binary_data_output", False))


def _join(document: dict[str, Any], chunks: list[bytes], binary: bool) -> tuple[bytes, int | None]:
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary:
        return header, None
    return header + b"".join(chunks), len(header)


def _parameters(raw: Any, owner: str) -> Parameters:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{owner}: 'parameters' must be a JSON object")
    return dict(raw)


def _optional_str(value: Any, field_name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidInput(f"'{field_name}' must be a string")


def _requested_outputs(raw: Any) -> list[RequestedOutput]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidInput("'outputs' must be a list")
    outputs: list[RequestedOutput] = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("each requested output needs a 'name'")
        outputs.append(RequestedOutput(item["name"], _parameters(item.get("parameters"), "output")))
    return outputs
