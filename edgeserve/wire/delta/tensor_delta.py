"""The "tensor-delta" payloads: an ONNX-aware delta that lines weights up by name.

Byte-level deltas (zstd's patch-from, bsdiff) only win where whole regions of the file
are unchanged. After a fine-tune every float moves a little: its sign and exponent
usually survive, its low mantissa bytes do not. So this codec splits the new model into
its *skeleton* (graph, names, shapes: everything but initializer ``raw_data``) and its
tensors. The skeleton is a zstd patch against the base model's skeleton. Each new tensor
whose name and byte length match a base tensor is coded against it by the transform of
:mod:`.transforms` that compresses smallest (XOR for floats, wrapping difference for
integers, either against a rescaled base, or raw); unmatched tensors stay raw. Then all
dense tensors' bytes are split into byte planes per element width (every element's byte
0, then every byte 1, ...) so the near-constant sign/exponent bytes sit together, and
the lot is one zstd stream.

Two formats, told apart by the magic's last byte and named apart in the manifest
(``tensor-delta`` is format 1, ``tensor-delta-2`` format 2), so an agent that only
knows format 1 refuses a format-2 manifest before it downloads a byte:

- **1**: every tensor dense.
- **2**: each tensor is dense or *sparse* (its changed elements as gaps + values, see
  :mod:`.sparse`), whichever probes smaller; wins on the scattered ±1 steps an int8
  model takes after a small fine-tune.

Layout (little-endian)::

    "ESTD" version u8  new_size u64  base_size u64  new_crc32 u32  base_crc32 u32
    n_base u32  n_seg u32  table_len u64  skeleton_len u64  tensors_len u64
    [format 2: gaps_len u64  values_len u64]
    table     zstd(n_base x (offset u64, length u64)          base tensor ranges,
                   n_seg  x (offset u64, length u64, kind u8,  new tensor segments
                             width u8, base_offset u64, ratio f64
                             [format 2: count u64 = changed elements if sparse, else 2^64-1]))
    skeleton  zstd patch of the new skeleton against the base skeleton
    tensors   zstd of the dense byte-plane streams, groups ordered by (kind, width)
    [format 2: gaps    zstd of the byte planes of every sparse tensor's u32 gaps, in order
               values  zstd of every sparse tensor's changed elements, byte planes each]

The applier needs only these offsets and the base bytes: no protobuf parsing on the
device, every offset is bounds-checked, and every decode is bounded by ``expected_size``.
The CRC-32s catch the one thing zstd's own checksums cannot: a base that differs from
the one the delta was built against only inside tensor data.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edgeserve.wire.delta import sparse, transforms, zstd_codec
from edgeserve.wire.delta.onnx_layout import TensorRange, tensor_ranges
from edgeserve.wire.errors import IntegrityError

__all__ = ["FORMATS", "LATEST", "apply_tensor_delta", "build_tensor_delta", "format_of"]

Bytes = npt.NDArray[np.uint8]

MAGIC = b"ESTD"
FORMATS = (1, 2)
LATEST = FORMATS[-1]
DENSE = (1 << 64) - 1
_HEADS = {1: struct.Struct("<5sQQIIIIQQQ"), 2: struct.Struct("<5sQQIIIIQQQQQ")}
_BASE_RANGE = struct.Struct("<QQ")
_SEGMENTS = {1: struct.Struct("<QQBBQd"), 2: struct.Struct("<QQBBQdQ")}
_WIDTHS = (1, 2, 4, 8)
# The tensor stream is where the bytes are: level 17 still finds the ±1 runs of
# re-quantized int8 (11% smaller than level 9 on 13 MB) at ~10-20 s per 50 MB, a
# price paid once per (base, new) pair on the service side.
_LARGE_STREAM_LEVEL = 17


@dataclass(frozen=True, slots=True)
class Segment:
    """One new tensor: where it goes, how it was coded, and its twin in the base.

    ``count`` is the number of changed elements stored when the tensor is sparse
    (format 2), else :data:`DENSE`.
    """

    offset: int
    length: int
    kind: int
    width: int
    base_offset: int
    ratio: float
    count: int = DENSE

    @property
    def is_sparse(self) -> bool:
        return self.count != DENSE


def format_of(payload: bytes) -> int | None:
    """The format version a tensor-delta payload declares, None when it has no magic."""
    if len(payload) <= len(MAGIC) or not payload.startswith(MAGIC):
        return None
    return payload[len(MAGIC)]


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


def _groups(segments: list[Segment]) -> list[list[int]]:
    """Dense segment indices per (kind, width) group, groups in key order, file order within."""
    keys = sorted({(s.kind, s.width) for s in segments if not s.is_sparse})
    return [
        [i for i, s in enumerate(segments) if (s.kind, s.width) == key and not s.is_sparse]
        for key in keys
    ]


def _compress_stream(stream: bytes) -> bytes:
    if not stream:  # an absent section: no sparse tensors, say
        return b""
    level = zstd_codec.level_for(len(stream))
    return zstd_codec.compress(stream, level=max(level, _LARGE_STREAM_LEVEL))


def _tensors_frame(segments: list[Segment], coded: list[Bytes]) -> bytes:
    parts = []
    for group in _groups(segments):
        joined = np.concatenate([coded[i] for i in group])
        parts.append(transforms.planes(joined, segments[group[0]].width).tobytes())
    return _compress_stream(b"".join(parts))


def _sparse_frames(segments: list[Segment], coded: list[Bytes]) -> tuple[bytes, bytes]:
    gaps, values = [], []
    for segment, data in zip(segments, coded, strict=True):
        if segment.is_sparse:
            split = segment.count * sparse.GAP_WIDTH
            gaps.append(data[:split])
            values.append(transforms.planes(data[split:], segment.width))
    joined_gaps = np.concatenate(gaps) if gaps else np.empty(0, np.uint8)
    gap_stream = transforms.planes(joined_gaps, sparse.GAP_WIDTH).tobytes()
    value_stream = b"".join(v.tobytes() for v in values)
    return _compress_stream(gap_stream), _compress_stream(value_stream)


def _table(base_ranges: list[tuple[int, int]], segments: list[Segment], fmt: int) -> bytes:
    rows = [_BASE_RANGE.pack(*r) for r in base_ranges]
    row = _SEGMENTS[fmt]
    rows += [row.pack(*_segment_fields(s, fmt)) for s in segments]
    return b"".join(rows)


def _segment_fields(s: Segment, fmt: int) -> tuple[int | float, ...]:
    fields = (s.offset, s.length, s.kind, s.width, s.base_offset, s.ratio)
    return fields if fmt == 1 else (*fields, s.count)


def _code_tensor(
    tensor: TensorRange, twin: TensorRange | None, new: Bytes, base: Bytes, fmt: int
) -> tuple[Segment, Bytes]:
    """Code one new tensor against its namesake when their byte lengths match.

    A sparse tensor's coded bytes are its gaps followed by its values.
    """
    data = new[tensor.offset : tensor.offset + tensor.length]
    if twin is None or twin.length != tensor.length:
        choice = transforms.choose(tensor, data, None)
        return Segment(tensor.offset, tensor.length, choice.kind, choice.width, 0, 0.0), data
    choice = transforms.choose(tensor, data, base[twin.offset : twin.offset + twin.length])
    segment = Segment(
        tensor.offset, tensor.length, choice.kind, choice.width, twin.offset, choice.ratio
    )
    if fmt >= 2 and sparse.prefer_sparse(choice.data, choice.width):
        gaps, values = sparse.gather(choice.data, choice.width)
        segment = dataclasses.replace(segment, count=len(values) // choice.width)
        return segment, np.concatenate([gaps, values])
    return segment, choice.data


def build_tensor_delta(new: bytes, base: bytes, fmt: int = LATEST) -> bytes:
    """Encode ``new`` against ``base`` in format ``fmt``.

    Raises NotOnnx when either is not an ONNX model, ValueError for an unknown format.
    """
    if fmt not in FORMATS:
        raise ValueError(f"tensor-delta format {fmt} is not one of {FORMATS}")
    new_tensors, base_tensors = tensor_ranges(new), tensor_ranges(base)
    twins: dict[str, TensorRange] = {}
    for t in base_tensors:
        twins.setdefault(t.name, t)
    new_arr = np.frombuffer(new, dtype=np.uint8)
    base_arr = np.frombuffer(base, dtype=np.uint8)
    segments, coded = [], []
    for tensor in new_tensors:
        segment, data = _code_tensor(tensor, twins.get(tensor.name), new_arr, base_arr, fmt)
        segments.append(segment)
        coded.append(data)
    base_ranges = [(t.offset, t.length) for t in base_tensors]
    skeleton = _skeleton(new, ((s.offset, s.length) for s in segments))
    table = zstd_codec.compress(_table(base_ranges, segments, fmt))
    skeleton_frame = zstd_codec.compress(skeleton, _skeleton(base, base_ranges))
    frames = [_tensors_frame(segments, coded)]
    if fmt >= 2:
        frames += _sparse_frames(segments, coded)
    head = _HEADS[fmt].pack(
        MAGIC + bytes([fmt]), len(new), len(base), zlib.crc32(new), zlib.crc32(base),
        len(base_ranges), len(segments),
        len(table), len(skeleton_frame), *(len(f) for f in frames),
    )  # fmt: skip
    return b"".join([head, table, skeleton_frame, *frames])


@dataclass(frozen=True, slots=True)
class _Header:
    fmt: int
    size: int
    new_size: int
    base_size: int
    new_crc: int
    base_crc: int
    n_base: int
    n_seg: int
    table_len: int
    skeleton_len: int
    tensors_len: int
    gaps_len: int = 0
    values_len: int = 0

    @property
    def sections_len(self) -> int:
        return (
            self.table_len + self.skeleton_len + self.tensors_len + self.gaps_len + self.values_len
        )


def _unpack_header(data: bytes, fmt: int) -> _Header:
    found = format_of(data)
    if found is None:
        raise IntegrityError("tensor-delta payload has no valid header")
    if found != fmt:
        newer = " (newer than this agent applies)" if found not in FORMATS else ""
        raise IntegrityError(
            f"payload is tensor-delta format {found}{newer} but its manifest names format {fmt}"
        )
    head = _HEADS[fmt]
    if len(data) < head.size:
        raise IntegrityError("tensor-delta payload has no valid header")
    return _Header(fmt, head.size, *head.unpack_from(data)[1:])


def _read_header(data: bytes, base: bytes, expected_size: int, fmt: int) -> _Header:
    head = _unpack_header(data, fmt)
    if head.new_size != expected_size:
        raise IntegrityError(f"tensor-delta builds {head.new_size} bytes, expected {expected_size}")
    if head.base_size != len(base):
        raise IntegrityError(f"tensor-delta needs a {head.base_size}-byte base, got {len(base)}")
    if zlib.crc32(base) != head.base_crc:
        raise IntegrityError("tensor-delta was built against a different base")
    if head.size + head.sections_len != len(data):
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
        if not transforms.valid(s.kind, s.width, s.ratio) or s.width not in _WIDTHS:
            raise IntegrityError(f"tensor-delta segment at {s.offset} has a bad kind or width")
        if s.length % s.width:
            raise IntegrityError(f"tensor-delta segment at {s.offset} is not whole elements")
        if s.kind != transforms.RAW and s.base_offset + s.length > head.base_size:
            raise IntegrityError(f"tensor-delta segment at {s.offset} reads past the base")
        if s.is_sparse and s.count > s.length // s.width:
            raise IntegrityError(f"tensor-delta segment at {s.offset} has too many changes")


def _read_table(frame: bytes, head: _Header) -> tuple[list[tuple[int, int]], list[Segment]]:
    row = _SEGMENTS[head.fmt]
    split = head.n_base * _BASE_RANGE.size
    table = zstd_codec.decompress(frame, None, split + head.n_seg * row.size)
    base_ranges = [r for r in _BASE_RANGE.iter_unpack(table[:split])]
    segments = [Segment(*r) for r in row.iter_unpack(table[split:])]
    _checked_ranges(base_ranges, head.base_size, "base")
    _checked_segments(segments, head)
    return base_ranges, segments


def _dense_coded(stream: Bytes, segments: list[Segment]) -> dict[int, Bytes]:
    """Each dense segment's coded bytes, from the byte-plane stream of its group."""
    out, cursor = {}, 0
    for group in _groups(segments):
        total = sum(segments[i].length for i in group)
        joined = transforms.unplanes(stream[cursor : cursor + total], segments[group[0]].width)
        cursor += total
        start = 0
        for i in group:
            out[i] = joined[start : start + segments[i].length]
            start += segments[i].length
    return out


def _sparse_coded(gaps: Bytes, values: Bytes, segments: list[Segment]) -> dict[int, Bytes]:
    """Each sparse segment's coded bytes, scattered back from the gap and value streams."""
    gaps = transforms.unplanes(gaps, sparse.GAP_WIDTH)
    out, gap_at, value_at = {}, 0, 0
    for i, s in enumerate(segments):
        if s.is_sparse:
            n_gaps, n_values = s.count * sparse.GAP_WIDTH, s.count * s.width
            values_i = transforms.unplanes(values[value_at : value_at + n_values], s.width)
            out[i] = sparse.scatter(gaps[gap_at : gap_at + n_gaps], values_i, s.length, s.width)
            gap_at, value_at = gap_at + n_gaps, value_at + n_values
    return out


def _decoded_streams(frames: list[bytes], segments: list[Segment]) -> tuple[Bytes, Bytes, Bytes]:
    """The dense, gap and value streams, each decoded to exactly the size the table implies."""
    dense_total = sum(s.length for s in segments if not s.is_sparse)
    changed = [s for s in segments if s.is_sparse]
    sizes = [
        dense_total,
        sum(s.count for s in changed) * sparse.GAP_WIDTH,
        sum(s.count * s.width for s in changed),
    ]
    streams = [_decoded(frame, size) for frame, size in zip(frames, sizes, strict=False)]
    streams += [np.empty(0, np.uint8)] * (3 - len(streams))
    return streams[0], streams[1], streams[2]


def _decoded(frame: bytes, size: int) -> Bytes:
    if not frame and size == 0:
        return np.empty(0, np.uint8)
    return np.frombuffer(zstd_codec.decompress(frame, None, size), dtype=np.uint8)


def _split_sections(data: bytes, head: _Header) -> tuple[bytes, bytes, list[bytes]]:
    lengths = [head.table_len, head.skeleton_len, head.tensors_len]
    if head.fmt >= 2:
        lengths += [head.gaps_len, head.values_len]
    sections, pos = [], head.size
    for length in lengths:
        sections.append(data[pos : pos + length])
        pos += length
    return sections[0], sections[1], sections[2:]


def apply_tensor_delta(data: bytes, base: bytes, expected_size: int, fmt: int = LATEST) -> bytes:
    """Rebuild the new model from a format-``fmt`` payload of :func:`build_tensor_delta`.

    Raises IntegrityError on any corrupt, truncated or inconsistent payload, and on a
    payload whose own format is not ``fmt`` (what its manifest promised).
    """
    head = _read_header(data, base, expected_size, fmt)
    table_frame, skeleton_frame, frames = _split_sections(data, head)
    base_ranges, segments = _read_table(table_frame, head)
    tensor_total = sum(s.length for s in segments)
    skeleton = zstd_codec.decompress(
        skeleton_frame, _skeleton(base, base_ranges), head.new_size - tensor_total
    )
    dense, gaps, values = _decoded_streams(frames, segments)
    coded = _dense_coded(dense, segments) | _sparse_coded(gaps, values, segments)
    out = np.empty(head.new_size, dtype=np.uint8)
    cursor = 0
    for a, b in _gaps(head.new_size, ((s.offset, s.length) for s in segments)):
        out[a:b] = np.frombuffer(skeleton, dtype=np.uint8, count=b - a, offset=cursor)
        cursor += b - a
    base_arr = np.frombuffer(base, dtype=np.uint8)
    for i, s in enumerate(segments):
        old = base_arr[s.base_offset : s.base_offset + s.length]
        out[s.offset : s.offset + s.length] = transforms.inverse(
            s.kind, coded[i], old, s.width, s.ratio
        )
    if zlib.crc32(out.data) != head.new_crc:
        raise IntegrityError("tensor-delta rebuilds bytes that fail its checksum")
    return out.tobytes()
