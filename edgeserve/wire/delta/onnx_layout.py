"""Where the weights sit inside a serialized ONNX model, found without importing ``onnx``.

The tensor-delta codec needs the byte ranges of each top-level graph initializer's
``raw_data`` so it can line up a new tensor with its old twin. Devices do not carry the
``onnx`` package (and the build side must not load a 50 MB model into protobuf objects
just to find offsets), so this is a minimal protobuf wire-format walker that knows four
field numbers: ``ModelProto.graph`` (7), ``GraphProto.initializer`` (5) and, inside a
``TensorProto``, ``data_type`` (2), ``name`` (8) and ``raw_data`` (9). Anything that does
not walk cleanly to the end raises :class:`NotOnnx`; the caller then falls back to codecs
that need no structure.

A model that keeps initializers in *external data* (``model.onnx`` + ``model.onnx.data``,
as torch's exporter writes large models) is refused with :class:`ExternalData`: an
artifact is one file with one hash, the weights are not in it, so no delta of it (and
no full payload either) rebuilds a model a device can run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from edgeserve.wire.errors import InvalidInput

__all__ = [
    "ExternalData",
    "NotOnnx",
    "TensorRange",
    "element_width",
    "is_integer_type",
    "tensor_ranges",
]

_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_DATA_TYPE = 2
_TENSOR_NAME = 8
_TENSOR_RAW_DATA = 9
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5

# ONNX TensorProto.DataType -> bytes per element as stored in raw_data. Packed 4-bit
# types and the float8 family are byte-granular; complex numbers are pairs of floats, so
# their useful plane width is the component's.
_WIDTHS = {
    1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8,
    14: 4, 15: 8, 16: 2, 17: 1, 18: 1, 19: 1, 20: 1, 21: 1, 22: 1, 23: 1,
}  # fmt: skip
_INTEGER_TYPES = frozenset({2, 3, 4, 5, 6, 7, 9, 12, 13, 21, 22})


class NotOnnx(ValueError):
    """The bytes are not a protobuf ModelProto this walker can read."""


class ExternalData(InvalidInput):
    """The model keeps weights in a file beside it, which no artifact hash covers."""

    def __init__(self, tensor: str) -> None:
        super().__init__(
            f"ONNX initializer {tensor!r} is stored as external data (model.onnx.data), "
            "outside the artifact; save the model as one file: "
            "onnx.save(onnx.load(path), path, save_as_external_data=False)"
        )


@dataclass(frozen=True, slots=True)
class TensorRange:
    """One initializer's ``raw_data``: its bytes are ``model[offset : offset + length]``."""

    name: str
    data_type: int
    width: int
    offset: int
    length: int


def element_width(data_type: int) -> int:
    """Bytes per element of an ONNX data type (1 for types this table does not know)."""
    return _WIDTHS.get(data_type, 1)


def is_integer_type(data_type: int) -> bool:
    """Integers change by small steps, so their deltas are better as differences than XOR."""
    return data_type in _INTEGER_TYPES


def _varint(data: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise NotOnnx("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes | memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(field, wire_type, value_or_offset, length)`` for each field of a message.

    For length-delimited fields the third item is the payload's offset; for varints it is
    the value itself. Groups (wire types 3/4) are long deprecated and refused.
    """
    pos = start
    while pos < end:
        key, pos = _varint(data, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise NotOnnx("field number 0")
        if wire == _VARINT:
            value, pos = _varint(data, pos, end)
            yield field, wire, value, 0
        elif wire == _LENGTH:
            length, pos = _varint(data, pos, end)
            if length > end - pos:
                raise NotOnnx("length-delimited field runs past its message")
            yield field, wire, pos, length
            pos += length
        elif wire in (_FIXED64, _FIXED32):
            pos += 8 if wire == _FIXED64 else 4
            if pos > end:
                raise NotOnnx("fixed-width field runs past its message")
        else:
            raise NotOnnx(f"unsupported wire type {wire}")


def _tensor(data: memoryview, start: int, end: int) -> TensorRange | None:
    name, data_type, raw, external = "", 0, None, False
    for field, wire, value, length in _fields(data, start, end):
        if field == _TENSOR_NAME and wire == _LENGTH:
            try:
                name = bytes(data[value : value + length]).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise NotOnnx("tensor name is not UTF-8") from exc
        elif field == _TENSOR_DATA_TYPE and wire == _VARINT:
            data_type = value
        elif field == _TENSOR_RAW_DATA and wire == _LENGTH:
            raw = (value, length)
        elif field == _TENSOR_EXTERNAL_DATA or (
            field == _TENSOR_DATA_LOCATION and wire == _VARINT and value == _EXTERNAL
        ):
            external = True
    if external:
        raise ExternalData(name)
    if raw is None or raw[1] == 0:
        return None
    return TensorRange(name, data_type, element_width(data_type), raw[0], raw[1])


def tensor_ranges(model: bytes) -> list[TensorRange]:
    """The ``raw_data`` ranges of every top-level initializer, in file order.

    Raises :class:`NotOnnx` when the bytes do not walk as a ModelProto or hold no graph
    initializer with raw data (a TFLite file or random bytes, say), and
    :class:`ExternalData` when an initializer's bytes live in another file.
    """
    view = memoryview(model)
    found: list[TensorRange] = []
    graphs = 0
    for field, wire, offset, length in _fields(view, 0, len(view)):
        if field != _MODEL_GRAPH:
            continue
        if wire != _LENGTH:
            raise NotOnnx("ModelProto.graph is not a message")
        graphs += 1
        for g_field, g_wire, g_offset, g_length in _fields(view, offset, offset + length):
            if g_field == _GRAPH_INITIALIZER and g_wire == _LENGTH:
                tensor = _tensor(view, g_offset, g_offset + g_length)
                if tensor is not None:
                    found.append(tensor)
    if graphs == 0 or not found:
        raise NotOnnx("no graph initializers with raw_data")
    return found
