"""Raw tensor bytes, shared by the REST binary extension and gRPC ``raw_*_contents``.

Fixed-size datatypes travel as their little-endian elements in row-major order. BYTES
tensors travel as each element's length, a 4-byte little-endian unsigned integer, followed
by the element's bytes. The layout is the same in both protocols, so it lives here once.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeserve.wire.errors import InvalidInput, shown
from edgeserve.wire.tensors import InferTensor, numpy_dtype

BYTES_LENGTH_PREFIX = struct.Struct("<I")


def tensor_to_bytes(tensor: InferTensor) -> bytes:
    """The raw form of ``tensor.data``; BYTES elements that are not bytes are str()-encoded."""
    if tensor.datatype != "BYTES":
        array = np.ascontiguousarray(tensor.data, dtype=numpy_dtype(tensor.datatype))
        return array.tobytes()
    parts: list[bytes] = []
    for item in tensor.data.reshape(-1):
        raw = item if isinstance(item, bytes) else str(item).encode()
        parts.append(BYTES_LENGTH_PREFIX.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def array_from_bytes(chunk: bytes, datatype: str, count: int, name: str) -> npt.NDArray[Any]:
    """A flat array of ``count`` elements read from ``chunk``; InvalidInput names ``name``.

    Fixed-size results are read-only views of ``chunk`` (no copy); BYTES results are
    object arrays of ``bytes``.
    """
    if datatype == "BYTES":
        return _bytes_elements(chunk, count, name)
    dtype = numpy_dtype(datatype)
    if len(chunk) != count * dtype.itemsize:
        raise InvalidInput(
            f"tensor '{shown(name)}': {len(chunk)} bytes given, shape and {datatype} need "
            f"{count * dtype.itemsize}"
        )
    return np.frombuffer(chunk, dtype=dtype)


def _bytes_elements(chunk: bytes, count: int, name: str) -> npt.NDArray[Any]:
    items: list[bytes] = []
    offset = 0
    while offset < len(chunk):
        if offset + 4 > len(chunk):
            raise InvalidInput(f"tensor '{shown(name)}': truncated BYTES length prefix")
        (length,) = BYTES_LENGTH_PREFIX.unpack_from(chunk, offset)
        offset += 4
        if offset + length > len(chunk):
            raise InvalidInput(f"tensor '{shown(name)}': truncated BYTES element")
        items.append(chunk[offset : offset + length])
        offset += length
    if len(items) != count:
        raise InvalidInput(
            f"tensor '{shown(name)}': shape holds {count} elements, got {len(items)}"
        )
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array
