"""The "tensor-delta" payload: an ONNX-aware delta that lines weights up by name.

Byte-level deltas (zstd's patch-from, bsdiff) only win where whole regions of the file
are unchanged. After a fine-tune every float moves a little: its sign and exponent
usually survive, its low mantissa bytes do not. So this codec splits the new model into
its *skeleton* (graph, names, shapes: everything but initializer ``raw_data``) and its
tensors. The skeleton is a zstd patch against the base model's skeleton. Each new tensor
whose name and byte length match a base tensor is XORed with it (floats: unchanged bits
become zero bits) or subtracted from it (integers: a re-quantized int8 weight moves by
±1), whichever compresses smaller, else kept raw; then all tensors' bytes are split
into byte planes per element width (every element's byte 0, then every byte 1, ...) so
the near-constant sign/exponent bytes sit together, and the lot is one zstd stream.

Layout (little-endian)::

    "ESTD\\x01"  new_size u64  base_size u64  new_crc32 u32  base_crc32 u32
    n_base u32  n_seg u32  table_len u64  skeleton_len u64  tensors_len u64
    table     zstd(n_base x (offset u64, length u64)          base tensor ranges,
                   n_seg  x (offset u64, length u64, kind u8,  new tensor segments
                             width u8, base_offset u64))
    skeleton  zstd patch of the new skeleton against the base skeleton
    tensors   zstd of the byte-plane streams, groups ordered by (kind, width)

The applier needs only these offsets and the base bytes: no protobuf parsing on the
device, every offset is bounds-checked, and every decode is bounded by ``expected_size``.
The CRC-32s catch the one thing zstd's own checksums cannot: a base that differs from
the one the delta was built against only inside tensor data.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edgeserve.wire.delta import zstd_codec
from edgeserve.wire.delta.onnx_layout import TensorRange, is_integer_type, tensor_ranges
from edgeserve.wire.errors import IntegrityError

__all__ = ["apply_tensor_delta", "build_tensor_delta"]

Bytes = npt.NDArray[np.uint8]

MAGIC = b"ESTD\x01"
_HEAD = struct.Struct("<5sQQIIIIQQQ")
_BASE_RANGE = struct.Struct("<QQ")
_SEGMENT = struct.Struct("<QQBBQ")
XOR, SUB, RAW = 1, 2, 3
_WIDTHS = (1, 2, 4, 8)
# Cheap level for choosing each tensor's transform: the ranking, not the size, matters.
_PROBE_LEVEL = 1
_PROBE_MIN_BYTES = 256


@dataclass(frozen=True, slots=True)
class Segment:
    """One new tensor: where it goes, how it was coded, and its twin in the base."""

    offset: int
    length: int
    kind: int
    width: int
    base_offset: int


def _gaps(size: int, ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ``(start, end)`` spans of ``size`` bytes not covered by sorted ``ranges``."""
    gaps, cursor = [], 0
    for offset, length in ranges:
        gaps.append((cursor, offset))
        cursor = offset + length
    gaps.append((cursor, size))
    return [(a, b) for a, b in gaps if b > a]


def _skeleton(data: bytes, ranges: Iterable[tuple[int, int]]) -> bytes:
    return b"".join(data[a:b] for a, b in _gaps(len(data), ranges))


def _planes(data: Bytes, width: int) -> Bytes:
    """Byte-plane order: every element's byte 0, then every byte 1, ..."""
    return data.reshape(-1, width).T.reshape(-1) if width > 1 else data


def _unplanes(data: Bytes, width: int) -> Bytes:
    return data.reshape(width, -1).T.reshape(-1) if width > 1 else data


def _forward(kind: int, new: Bytes, base: Bytes, width: int) -> Bytes:
    if kind == XOR:
        return np.bitwise_xor(new, base)
    if kind == SUB:
        dtype = np.dtype(f"<u{width}")
        diff: Bytes = (new.view(dtype) - base.view(dtype)).view(np.uint8)
        return diff
    return new


def _inverse(kind: int, coded: Bytes, base: Bytes, width: int) -> Bytes:
    if kind == XOR:
        return np.bitwise_xor(coded, base)
    if kind == SUB:
        dtype = np.dtype(f"<u{width}")
        total: Bytes = (coded.view(dtype) + base.view(dtype)).view(np.uint8)
        return total
    return coded


def _probe_size(data: Bytes, width: int) -> int:
    if not data.any():
        return 0
    return len(zstd_codec.compress(_planes(data, width).tobytes(), level=_PROBE_LEVEL))


def _choose(
    tensor: TensorRange, twin: TensorRange | None, new: Bytes, base: Bytes
) -> tuple[Segment, Bytes]:
    """Pick the transform of one tensor whose byte planes compress smallest."""
    width = tensor.width if tensor.length % tensor.width == 0 else 1
    data = new[tensor.offset : tensor.offset + tensor.length]
    if twin is None:
        return Segment(tensor.offset, tensor.length, RAW, width, 0), data
    old = base[twin.offset : twin.offset + twin.length]
    kinds = [XOR, SUB, RAW] if is_integer_type(tensor.data_type) else [XOR, RAW]
    if len(data) < _PROBE_MIN_BYTES:
        kinds = kinds[:1]
    coded = {kind: _forward(kind, data, old, width) for kind in kinds}
    kind = min(kinds, key=lambda k: _probe_size(coded[k], width)) if len(kinds) > 1 else XOR
    return Segment(tensor.offset, tensor.length, kind, width, twin.offset), coded[kind]


def _groups(segments: list[Segment]) -> list[list[int]]:
    """Segment indices per (kind, width) group, groups in key order, members in file order."""
    keys = sorted({(s.kind, s.width) for s in segments})
    return [[i for i, s in enumerate(segments) if (s.kind, s.width) == key] for key in keys]


def _tensor_stream(segments: list[Segment], coded: list[Bytes]) -> bytes:
    parts = []
    for group in _groups(segments):
        joined = np.concatenate([coded[i] for i in group])
        parts.append(_planes(joined, segments[group[0]].width).tobytes())
    return b"".join(parts)


def _table(base_ranges: list[tuple[int, int]], segments: list[Segment]) -> bytes:
    rows = [_BASE_RANGE.pack(*r) for r in base_ranges]
    rows += [_SEGMENT.pack(s.offset, s.length, s.kind, s.width, s.base_offset) for s in segments]
    return b"".join(rows)


def build_tensor_delta(new: bytes, base: bytes) -> bytes:
    """Encode ``new`` against ``base``; raises NotOnnx when either is not an ONNX model."""
    new_tensors, base_tensors = tensor_ranges(new), tensor_ranges(base)
    twins: dict[str, TensorRange] = {}
    for t in base_tensors:
        twins.setdefault(t.name, t)
    new_arr = np.frombuffer(new, dtype=np.uint8)
    base_arr = np.frombuffer(base, dtype=np.uint8)
    segments, coded = [], []
    for tensor in new_tensors:
        twin = twins.get(tensor.name)
        same = twin is not None and twin.length == tensor.length
        segment, data = _choose(tensor, twin if same else None, new_arr, base_arr)
        segments.append(segment)
        coded.append(data)
    base_ranges = [(t.offset, t.length) for t in base_tensors]
    skeleton = _skeleton(new, ((s.offset, s.length) for s in segments))
    table = zstd_codec.compress(_table(base_ranges, segments))
    skeleton_frame = zstd_codec.compress(skeleton, _skeleton(base, base_ranges))
    tensors_frame = zstd_codec.compress(_tensor_stream(segments, coded))
    head = _HEAD.pack(
        MAGIC, len(new), len(base), zlib.crc32(new), zlib.crc32(base),
        len(base_ranges), len(segments),
        len(table), len(skeleton_frame), len(tensors_frame),
    )  # fmt: skip
    return head + table + skeleton_frame + tensors_frame


@dataclass(frozen=True, slots=True)
class _Header:
    new_size: int
    base_size: int
    new_crc: int
    base_crc: int
    n_base: int
    n_seg: int
    table_len: int
    skeleton_len: int
    tensors_len: int


def _read_header(data: bytes, base: bytes, expected_size: int) -> _Header:
    if len(data) < _HEAD.size or not data.startswith(MAGIC):
        raise IntegrityError("tensor-delta payload has no valid header")
    head = _Header(*_HEAD.unpack_from(data)[1:])
    if head.new_size != expected_size:
        raise IntegrityError(f"tensor-delta builds {head.new_size} bytes, expected {expected_size}")
    if head.base_size != len(base):
        raise IntegrityError(f"tensor-delta needs a {head.base_size}-byte base, got {len(base)}")
    if zlib.crc32(base) != head.base_crc:
        raise IntegrityError("tensor-delta was built against a different base")
    if _HEAD.size + head.table_len + head.skeleton_len + head.tensors_len != len(data):
        raise IntegrityError("tensor-delta section lengths do not add up to the payload size")
    # Each raw_data field costs at least four bytes of framing plus one of data, which
    # caps honest counts and keeps the table from being a memory amplifier.
    if head.n_base > head.base_size // 5 or head.n_seg > head.new_size // 5:
        raise IntegrityError("tensor-delta claims more tensors than the models can hold")
    return head


def _checked_ranges(ranges: list[tuple[int, int]], size: int, what: str) -> None:
    cursor = 0
    for offset, length in ranges:
        if length <= 0 or offset < cursor or offset + length > size:
            raise IntegrityError(f"tensor-delta {what} range {offset}+{length} is out of order")
        cursor = offset + length


def _checked_segments(segments: list[Segment], head: _Header) -> None:
    _checked_ranges([(s.offset, s.length) for s in segments], head.new_size, "tensor")
    for s in segments:
        if s.kind not in (XOR, SUB, RAW) or s.width not in _WIDTHS or s.length % s.width:
            raise IntegrityError(f"tensor-delta segment at {s.offset} has a bad kind or width")
        if s.kind != RAW and s.base_offset + s.length > head.base_size:
            raise IntegrityError(f"tensor-delta segment at {s.offset} reads past the base")


def _read_table(frame: bytes, head: _Header) -> tuple[list[tuple[int, int]], list[Segment]]:
    size = head.n_base * _BASE_RANGE.size + head.n_seg * _SEGMENT.size
    table = zstd_codec.decompress(frame, None, size)
    base_ranges = [r for r in _BASE_RANGE.iter_unpack(table[: head.n_base * _BASE_RANGE.size])]
    segments = [Segment(*r) for r in _SEGMENT.iter_unpack(table[head.n_base * _BASE_RANGE.size :])]
    _checked_ranges(base_ranges, head.base_size, "base")
    _checked_segments(segments, head)
    return base_ranges, segments


def _fill_tensors(out: Bytes, stream: Bytes, segments: list[Segment], base: Bytes) -> None:
    cursor = 0
    for group in _groups(segments):
        width = segments[group[0]].width
        total = sum(segments[i].length for i in group)
        joined = _unplanes(stream[cursor : cursor + total], width)
        cursor += total
        start = 0
        for i in group:
            s = segments[i]
            coded = joined[start : start + s.length]
            start += s.length
            old = base[s.base_offset : s.base_offset + s.length]
            out[s.offset : s.offset + s.length] = _inverse(s.kind, coded, old, width)


def apply_tensor_delta(data: bytes, base: bytes, expected_size: int) -> bytes:
    """Rebuild the new model from a payload made by :func:`build_tensor_delta` and ``base``.

    Raises IntegrityError on any corrupt, truncated or inconsistent payload.
    """
    head = _read_header(data, base, expected_size)
    pos = _HEAD.size
    table_frame = data[pos : pos + head.table_len]
    pos += head.table_len
    skeleton_frame = data[pos : pos + head.skeleton_len]
    tensors_frame = data[pos + head.skeleton_len :]
    base_ranges, segments = _read_table(table_frame, head)
    tensor_total = sum(s.length for s in segments)
    skeleton = zstd_codec.decompress(
        skeleton_frame, _skeleton(base, base_ranges), head.new_size - tensor_total
    )
    stream = zstd_codec.decompress(tensors_frame, None, tensor_total)
    out = np.empty(head.new_size, dtype=np.uint8)
    cursor = 0
    for a, b in _gaps(head.new_size, ((s.offset, s.length) for s in segments)):
        out[a:b] = np.frombuffer(skeleton, dtype=np.uint8, count=b - a, offset=cursor)
        cursor += b - a
    base_arr = np.frombuffer(base, dtype=np.uint8)
    _fill_tensors(out, np.frombuffer(stream, dtype=np.uint8), segments, base_arr)
    if zlib.crc32(out.data) != head.new_crc:
        raise IntegrityError("tensor-delta rebuilds bytes that fail its checksum")
    return out.tobytes()
