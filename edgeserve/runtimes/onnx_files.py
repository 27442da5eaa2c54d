"""Which files an ONNX model is made of: ``model.onnx`` and the external data it names.

An ONNX model may keep its weights outside the protobuf (``model.onnx`` +
``model.onnx.data``, torch's exporter does so for large models); each such tensor names
its file in ``external_data`` (key ``location``), relative to the model's folder. ONNX
Runtime reads those files silently, so whoever verifies a model's bytes must know them:
the agent's hash covers one file, so it refuses such a model (``refuse_external_data``),
and the gateway's repository checks and counts them (``model_files``).

The scan reads the protobuf wire format directly (the agent carries no ``onnx``
package): it walks the graph, its nodes' tensor and subgraph attributes and the model's
functions, skipping every tensor's bytes without copying them (the file is mapped).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from edgeserve.wire.errors import InvalidInput

# Field numbers of onnx.proto (ONNX IR v3 and later; unchanged since).
MODEL_GRAPH, MODEL_FUNCTIONS = 7, 25
FUNCTION_NODES = 7
GRAPH_NODES, GRAPH_INITIALIZERS, GRAPH_SPARSE_INITIALIZERS = 1, 5, 15
NODE_ATTRIBUTES = 5
ATTRIBUTE_TENSOR, ATTRIBUTE_GRAPH, ATTRIBUTE_TENSORS, ATTRIBUTE_GRAPHS = 5, 6, 10, 11
ATTRIBUTE_SPARSE_TENSOR, ATTRIBUTE_SPARSE_TENSORS = 22, 23
SPARSE_VALUES, SPARSE_INDICES = 1, 2
TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 13, 14
ENTRY_KEY, ENTRY_VALUE = 1, 2
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL

Field = tuple[int, int | memoryview]



class MalformedOnnx(InvalidInput):
    """The file is not a well-formed ONNX protobuf."""


ONE_FILE_FIX = (
    "save it as one file: python -c \"import onnx; onnx.save(onnx.load('{name}'), "
    "'{name}', save_as_external_data=False)\" (possible below 2 GB; edge models are)"
)


def _varint(buffer: memoryview, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if position >= len(buffer):
            raise MalformedOnnx("not an ONNX model: the protobuf ends inside a number")
        byte = buffer[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def _fields(buffer: memoryview) -> Iterator[Field]:
    """(field number, value) of one protobuf message: ints for varints, views for bytes."""
    position = 0
    while position < len(buffer):
        key, position = _varint(buffer, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(buffer, position)
            yield number, value
        elif wire_type == 2:
            length, position = _varint(buffer, position)
            if position + length > len(buffer):
                raise MalformedOnnx("not an ONNX model: a protobuf field runs past the end")
            yield number, buffer[position : position + length]
            position += length
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
        else:
            raise MalformedOnnx(f"not an ONNX model: protobuf wire type {wire_type}")


def _messages(buffer: memoryview, *numbers: int) -> Iterator[memoryview]:
    for number, value in _fields(buffer):
        if number in numbers and isinstance(value, memoryview):
            yield value


def _tensor_location(tensor: memoryview) -> str | None:
    external, location = False, None
    for number, value in _fields(tensor):
        if number == TENSOR_DATA_LOCATION:
            external = value == EXTERNAL
        elif number == TENSOR_EXTERNAL_DATA and isinstance(value, memoryview):
            entry = dict(_fields(value))
            key, text = entry.get(ENTRY_KEY), entry.get(ENTRY_VALUE)
            if isinstance(key, memoryview) and bytes(key) == b"location":
                location = bytes(text).decode() if isinstance(text, memoryview) else ""
    return location if external else None


def _sparse_locations(sparse: memoryview) -> Iterator[str | None]:
    for tensor in _messages(sparse, SPARSE_VALUES, SPARSE_INDICES):
        yield _tensor_location(tensor)


def _node_locations(node: memoryview) -> Iterator[str | None]:
    for attribute in _messages(node, NODE_ATTRIBUTES):
        for number, value in _fields(attribute):
            if not isinstance(value, memoryview):
                continue
            if number in (ATTRIBUTE_TENSOR, ATTRIBUTE_TENSORS):
                yield _tensor_location(value)
            elif number in (ATTRIBUTE_SPARSE_TENSOR, ATTRIBUTE_SPARSE_TENSORS):
                yield from _sparse_locations(value)
            elif number in (ATTRIBUTE_GRAPH, ATTRIBUTE_GRAPHS):
                yield from _graph_locations(value)


def _graph_locations(graph: memoryview) -> Iterator[str | None]:
    for number, value in _fields(graph):
        if not isinstance(value, memoryview):
            continue
        if number == GRAPH_INITIALIZERS:
            yield _tensor_location(value)
        elif number == GRAPH_SPARSE_INITIALIZERS:
            yield from _sparse_locations(value)
        elif number == GRAPH_NODES:
            yield from _node_locations(value)


def _model_locations(model: memoryview) -> set[str | None]:
    found: set[str | None] = set()
    for graph in _messages(model, MODEL_GRAPH):
        found.update(_graph_locations(graph))
    for function in _messages(model, MODEL_FUNCTIONS):
        for node in _messages(function, FUNCTION_NODES):
            found.update(_node_locations(node))
    return found


def external_data_locations(path: Path) -> list[str]:
    """The external data files ``path`` names, as written in it (relative), sorted."""
    with path.open("rb") as file:
        if path.stat().st_size == 0:
            raise MalformedOnnx(f"{path.name} is empty, not an ONNX model")
        # Mapped, not read: a 100 MB model is walked without copying its weights. Every
        # view into the map is gone when _model_locations returns, so the map can close.
        malformed = None
        with (
            mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped,
            memoryview(mapped) as model,
        ):
            try:
                found = _model_locations(model)
            except MalformedOnnx as exc:  # its traceback holds views: keep the text only
                malformed = exc.message
    if malformed is not None:
        raise MalformedOnnx(f"{path.name}: {malformed}")
    return sorted(location for location in found if location is not None)


def model_files(path: Path) -> list[Path]:
    """``path`` and every external data file it names, each checked to exist inside the
    model's folder (ONNX Runtime refuses paths that leave it, after reading half a model)."""
    folder = path.parent.resolve()
    files = [path]
    for location in external_data_locations(path):
        relative = PurePosixPath(location)
        target = (folder / relative).resolve()
        if relative.is_absolute() or not target.is_relative_to(folder):
            raise InvalidInput(f"{path.name} names external data outside its folder: {location}")
        if not target.is_file():
            raise InvalidInput(
                f"{path.name} keeps weights in '{location}', which is not beside it in "
                f"{path.parent}: copy that file with the model"
            )
        files.append(target)
    return files


def refuse_external_data(path: Path) -> None:
    """Raise ``InvalidInput`` (with the fix) when ``path`` keeps weights in other files.

    A file that is no ONNX protobuf at all passes: ONNX Runtime's own load error says more.
    """
    try:
        locations = external_data_locations(path)
    except MalformedOnnx:
        return
    if locations:
        raise InvalidInput(
            f"{path.name} keeps its weights in other files ({', '.join(locations)}), which "
            "its hash does not cover, so the agent will not serve it; "
            + ONE_FILE_FIX.format(name=path.name)
        )
