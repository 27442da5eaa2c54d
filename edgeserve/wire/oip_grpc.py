"""OIP v2 gRPC codec: the wire types of ``tensors`` to and from the protobuf messages.

Tensor data travels in one of two forms. Raw (the default here, and what tritonclient
sends and reads): ``raw_input_contents`` / ``raw_output_contents`` hold one blob per
tensor, in the order of the tensors, and then *every* tensor is raw (the layout is
``raw_tensors``'). Typed: each tensor's ``contents`` holds its elements in the one
``InferTensorContents`` field its datatype selects; FP16 has no typed form. Note that
tritonclient's ``InferResult.as_numpy`` reads typed contents only for BYTES, so responses
meant for stock clients must stay raw.

Parameters map onto the ``InferParameter`` oneof: bool -> bool_param, int -> int64_param
(uint64_param above the int64 range), float -> double_param, str -> string_param, None ->
no value set. Any other value (a list, a dict) is JSON-encoded into string_param; that is
one way: it decodes as the JSON string, not as the original value.

Every defect of an incoming message raises ``InvalidInput`` naming the tensor, with the
same wording as the REST codec where the defect is the same; so do bytes that are not a
message at all (``parse_message``: the server takes requests as bytes and parses them
itself, where its errors are mapped).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import orjson
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from edgeserve.wire.errors import InvalidInput, shown
from edgeserve.wire.proto import grpc_service_pb2 as pb
from edgeserve.wire.raw_tensors import array_from_bytes, tensor_to_bytes
from edgeserve.wire.tensors import (
    DATATYPE_TO_NUMPY,
    InferRequest,
    InferResponse,
    InferTensor,
    Parameters,
    RequestedOutput,
    element_count,
)

__all__ = [
    "model_metadata_to_proto",
    "parameters_from_proto",
    "parameters_to_proto",
    "parse_message",
    "request_from_proto",
    "request_to_proto",
    "response_from_proto",
    "response_to_proto",
    "server_metadata_to_proto",
]

# datatype -> the InferTensorContents field that carries it, and that field's own dtype
# (narrow integer types travel widened, so their range is checked on the way in).
_CONTENTS_FIELD: dict[str, tuple[str, np.dtype[Any]]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", np.dtype(np.object_)),
}
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1

# Both message kinds carry tensors with the same five fields.
_ProtoTensor = pb.ModelInferRequest.InferInputTensor | pb.ModelInferResponse.InferOutputTensor


class ProtoMessage(Protocol):
    """What ``parse_message`` needs of a generated message class (protobuf has no stubs)."""

    DESCRIPTOR: Any

    def ParseFromString(self, serialized: bytes) -> Any: ...  # noqa: N802 (protobuf's name)


AnyMessage = TypeVar("AnyMessage", bound=ProtoMessage)


def parse_message(message_type: type[AnyMessage], raw: bytes) -> AnyMessage:
    """``raw`` parsed as a ``message_type``; bytes that are not one raise InvalidInput."""
    message = message_type()
    try:
        message.ParseFromString(raw)
    except DecodeError:
        raise InvalidInput(
            f"request is not a valid {message_type.DESCRIPTOR.full_name} message"
        ) from None
    return message


# -- inference requests and responses ---------------------------------------------------


def request_from_proto(msg: pb.ModelInferRequest) -> InferRequest:
    """Server side: a ModelInferRequest as an InferRequest; defects raise InvalidInput."""
    if not msg.inputs:
        raise InvalidInput("request must have a non-empty 'inputs' list")
    return InferRequest(
        model_name=msg.model_name,
        model_version=msg.model_version or None,
        id=msg.id or None,
        inputs=_tensors_from_proto(msg.inputs, msg.raw_input_contents, "raw_input_contents"),
        parameters=parameters_from_proto(msg.parameters),
        outputs=[
            RequestedOutput(out.name, parameters_from_proto(out.parameters)) for out in msg.outputs
        ],
    )


def request_to_proto(request: InferRequest, raw: bool = True) -> pb.ModelInferRequest:
    """Client side: an InferRequest as a ModelInferRequest (raw tensor data by default)."""
    msg = pb.ModelInferRequest(
        model_name=request.model_name,
        model_version=request.model_version or "",
        id=request.id or "",
        parameters=parameters_to_proto(request.parameters),
        outputs=[
            pb.ModelInferRequest.InferRequestedOutputTensor(
                name=out.name, parameters=parameters_to_proto(out.parameters)
            )
            for out in request.outputs
        ],
    )
    for tensor in request.inputs:
        entry = msg.inputs.add()
        _fill_tensor(entry, tensor, msg.raw_input_contents if raw else None)
    return msg


def response_to_proto(response: InferResponse, raw: bool = True) -> pb.ModelInferResponse:
    """Server side: an InferResponse as a ModelInferResponse (raw outputs, like Triton)."""
    msg = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id or "",
        parameters=parameters_to_proto(response.parameters),
    )
    for tensor in response.outputs:
        entry = msg.outputs.add()
        _fill_tensor(entry, tensor, msg.raw_output_contents if raw else None)
    return msg


def response_from_proto(msg: pb.ModelInferResponse) -> InferResponse:
    """Client side: a ModelInferResponse as an InferResponse; defects raise InvalidInput."""
    return InferResponse(
        model_name=msg.model_name,
        model_version=msg.model_version,
        id=msg.id or None,
        outputs=_tensors_from_proto(msg.outputs, msg.raw_output_contents, "raw_output_contents"),
        parameters=parameters_from_proto(msg.parameters),
    )


# -- parameters -------------------------------------------------------------------------


def parameters_to_proto(parameters: Mapping[str, Any]) -> dict[str, pb.InferParameter]:
    """Parameters as InferParameter messages, ready for a message constructor's map field.

    bool, int, float, str and None map onto the oneof (see the module docstring); any
    other JSON-serializable value is sent as its JSON text in string_param.
    """
    return {key: _parameter_to_proto(key, value) for key, value in parameters.items()}


def parameters_from_proto(parameters: Mapping[str, pb.InferParameter]) -> Parameters:
    """A protobuf parameters map as a plain dict; a parameter with no value set is None."""
    result: Parameters = {}
    for key, value in parameters.items():
        choice = value.WhichOneof("parameter_choice")
        result[key] = None if choice is None else getattr(value, choice)
    return result


def _parameter_to_proto(key: str, value: Any) -> pb.InferParameter:
    if value is None:
        return pb.InferParameter()
    if isinstance(value, bool | np.bool_):
        return pb.InferParameter(bool_param=bool(value))
    if isinstance(value, int | np.integer):
        return _int_parameter(key, int(value))
    if isinstance(value, float | np.floating):
        return pb.InferParameter(double_param=float(value))
    if isinstance(value, str):
        return pb.InferParameter(string_param=value)
    try:
        text = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    except TypeError:
        raise InvalidInput(
            f"parameter '{shown(key)}': a {type(value).__name__} has no InferParameter form"
        ) from None
    return pb.InferParameter(string_param=text)


def _int_parameter(key: str, value: int) -> pb.InferParameter:
    if -_INT64_MAX - 1 <= value <= _INT64_MAX:
        return pb.InferParameter(int64_param=value)
    if 0 <= value <= _UINT64_MAX:
        return pb.InferParameter(uint64_param=value)
    raise InvalidInput(
        f"parameter '{shown(key)}': {shown(value)} is outside the int64 and uint64 ranges"
    )


# -- metadata ---------------------------------------------------------------------------


def model_metadata_to_proto(metadata: Mapping[str, Any]) -> pb.ModelMetadataResponse:
    """The REST model metadata dict ({name, versions, platform, inputs, outputs})."""
    return pb.ModelMetadataResponse(
        name=str(metadata["name"]),
        versions=[str(version) for version in metadata.get("versions", [])],
        platform=str(metadata.get("platform", "")),
        inputs=_tensor_metadata(metadata.get("inputs", [])),
        outputs=_tensor_metadata(metadata.get("outputs", [])),
    )


def server_metadata_to_proto(metadata: Mapping[str, Any]) -> pb.ServerMetadataResponse:
    """The REST server metadata dict ({name, version, extensions})."""
    return pb.ServerMetadataResponse(
        name=str(metadata["name"]),
        version=str(metadata.get("version", "")),
        extensions=[str(extension) for extension in metadata.get("extensions", [])],
    )


def _tensor_metadata(
    specs: Iterable[Mapping[str, Any]],
) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(
            name=str(spec["name"]),
            datatype=str(spec["datatype"]),
            shape=[int(dim) for dim in spec["shape"]],
        )
        for spec in specs
    ]


# -- tensors ----------------------------------------------------------------------------


def _tensors_from_proto(
    tensors: Sequence[_ProtoTensor], raw: Sequence[bytes], raw_field: str
) -> list[InferTensor]:
    if raw and len(raw) != len(tensors):
        raise InvalidInput(
            f"{len(raw)} {raw_field} entries for {len(tensors)} tensors; "
            "raw data needs exactly one entry per tensor, in order"
        )
    result: list[InferTensor] = []
    seen: set[str] = set()
    for index, entry in enumerate(tensors):
        tensor = _tensor_from_proto(entry, raw[index] if raw else None, raw_field)
        if tensor.name in seen:
            raise InvalidInput(f"tensor '{shown(tensor.name)}' given more than once")
        seen.add(tensor.name)
        result.append(tensor)
    return result


def _tensor_from_proto(entry: _ProtoTensor, chunk: bytes | None, raw_field: str) -> InferTensor:
    name = entry.name
    if not name:
        raise InvalidInput("tensor without a 'name'")
    datatype = entry.datatype
    if datatype not in DATATYPE_TO_NUMPY:
        raise InvalidInput(f"tensor '{shown(name)}': unsupported datatype '{shown(datatype)}'")
    shape = list(entry.shape)
    count = element_count(shape, name)
    if chunk is not None:
        if entry.HasField("contents"):
            raise InvalidInput(
                f"tensor '{shown(name)}': 'contents' given while the request uses {raw_field}; "
                "all tensors must be raw or none"
            )
        array = array_from_bytes(chunk, datatype, count, name)
    elif entry.HasField("contents"):
        array = _array_from_contents(entry.contents, datatype, count, name)
    elif count == 0:
        array = np.empty(0, dtype=DATATYPE_TO_NUMPY[datatype])
    else:
        raise InvalidInput(f"tensor '{shown(name)}': no 'contents' and no {raw_field}")
    params = parameters_from_proto(entry.parameters)
    return InferTensor(name, datatype, shape, array.reshape(shape), params)


def _array_from_contents(
    contents: pb.InferTensorContents, datatype: str, count: int, name: str
) -> npt.NDArray[Any]:
    if datatype not in _CONTENTS_FIELD:
        raise InvalidInput(f"tensor '{shown(name)}': {datatype} has no typed contents; send it raw")
    field, wire_dtype = _CONTENTS_FIELD[datatype]
    for other, _ in contents.ListFields():
        if other.name != field:
            raise InvalidInput(
                f"tensor '{shown(name)}': datatype {datatype} travels in {field}, not {other.name}"
            )
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidInput(
            f"tensor '{shown(name)}': shape holds {count} elements but contents has {len(values)}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array
    wide = np.fromiter(values, dtype=wire_dtype, count=count)
    target = DATATYPE_TO_NUMPY[datatype]
    if target.itemsize < wire_dtype.itemsize and wide.size:
        limits = np.iinfo(target)
        if wide.min() < limits.min or wide.max() > limits.max:
            raise InvalidInput(f"tensor '{shown(name)}': contents out of range for {datatype}")
    return wide.astype(target, copy=False)


def _fill_tensor(entry: _ProtoTensor, tensor: InferTensor, raw: Any | None) -> None:
    """Fill one outgoing tensor; ``raw`` is the message's raw contents list, or None."""
    entry.name = tensor.name
    entry.datatype = tensor.datatype
    entry.shape.extend(int(dim) for dim in tensor.shape)
    for key, value in parameters_to_proto(tensor.parameters).items():
        entry.parameters[key].CopyFrom(value)
    if raw is not None:
        raw.append(tensor_to_bytes(tensor))
        return
    if tensor.datatype not in _CONTENTS_FIELD:
        raise InvalidInput(
            f"tensor '{shown(tensor.name)}': {tensor.datatype} has no typed contents; send it raw"
        )
    field, _ = _CONTENTS_FIELD[tensor.datatype]
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        items = [item if isinstance(item, bytes) else str(item).encode() for item in flat]
    else:
        items = flat.astype(DATATYPE_TO_NUMPY[tensor.datatype], copy=False).tolist()
    getattr(entry.contents, field).extend(items)
