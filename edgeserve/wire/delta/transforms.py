"""Per-tensor transforms of the tensor-delta codec: how a new tensor is coded against its twin.

Each turns the new tensor's bytes into bytes that are mostly zero when the tensor moved
little, and back again given the base tensor:

- ``XOR``: bitwise XOR. For floats, unchanged sign/exponent/high-mantissa bits become 0.
- ``SUB``: wrapping integer difference. A re-quantized int8 weight moves by ±1, which
  XOR would smear over several bits.
- ``FSCALE`` / ``ISCALE``: XOR (floats) or difference (integers) against the base scaled
  by one ratio fitted by least squares. Re-calibrating int8 changes an input scale, and
  then every bias scale and every int32 bias of that layer is multiplied by the same
  factor: scaled, they match their twins to the last bit or two.
- ``RAW``: the new bytes unchanged (a retrain from another seed shares nothing).

The encoder probes each applicable transform with a fast zstd level and keeps the
smallest. Predictions use only IEEE float64 arithmetic and round-to-nearest casts, so
the device computes bit-identical predictions; the payload's CRC checks it did.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edgeserve.wire.delta import zstd_codec
from edgeserve.wire.delta.onnx_layout import TensorRange, is_integer_type

__all__ = ["KINDS", "RAW", "Coded", "choose", "inverse", "planes", "unplanes", "valid"]

Bytes = npt.NDArray[np.uint8]

XOR, SUB, RAW, FSCALE, ISCALE = 1, 2, 3, 4, 5
KINDS = (XOR, SUB, RAW, FSCALE, ISCALE)
_FLOAT_TYPES = {1: np.float32, 11: np.float64}
_SIGNED = {1: np.int8, 2: np.int16, 4: np.int32}
# Cheap level for choosing each tensor's transform: the ranking, not the size, matters.
_PROBE_LEVEL = 1
_PROBE_MIN_BYTES = 256


def valid(kind: int, width: int, ratio: float) -> bool:
    """Whether a (kind, width, ratio) triple read from a payload can be applied."""
    if kind == FSCALE:
        return width in (4, 8) and bool(np.isfinite(ratio))
    if kind == ISCALE:
        return width in _SIGNED and bool(np.isfinite(ratio))
    return kind in (XOR, SUB, RAW)


def planes(data: Bytes, width: int) -> Bytes:
    """Byte-plane order: every element's byte 0, then every byte 1, ..."""
    return data.reshape(-1, width).T.reshape(-1) if width > 1 else data


def unplanes(data: Bytes, width: int) -> Bytes:
    return data.reshape(width, -1).T.reshape(-1) if width > 1 else data


def _unsigned(width: int) -> np.dtype[np.unsignedinteger[npt.NBitBase]]:
    return np.dtype(f"<u{width}")


def _predict(kind: int, base: Bytes, width: int, ratio: float) -> Bytes:
    """The scaled base, in the tensor's own byte layout (errors end up in the CRC check)."""
    with np.errstate(all="ignore"):
        if kind == FSCALE:
            dtype = np.dtype(f"<f{width}")
            scaled = (base.view(dtype).astype(np.float64) * ratio).astype(dtype)
        else:
            dtype = np.dtype(_SIGNED[width]).newbyteorder("<")
            info = np.iinfo(dtype)
            exact = np.rint(base.view(dtype).astype(np.float64) * ratio)
            scaled = np.clip(np.nan_to_num(exact), info.min, info.max).astype(dtype)
    out: Bytes = scaled.view(np.uint8)
    return out


def _xor(a: Bytes, b: Bytes) -> Bytes:
    return np.bitwise_xor(a, b)


def _sub(a: Bytes, b: Bytes, width: int) -> Bytes:
    out: Bytes = (a.view(_unsigned(width)) - b.view(_unsigned(width))).view(np.uint8)
    return out


def _add(a: Bytes, b: Bytes, width: int) -> Bytes:
    out: Bytes = (a.view(_unsigned(width)) + b.view(_unsigned(width))).view(np.uint8)
    return out


def forward(kind: int, new: Bytes, base: Bytes, width: int, ratio: float) -> Bytes:
    if kind == XOR:
        return _xor(new, base)
    if kind == SUB:
        return _sub(new, base, width)
    if kind == FSCALE:
        return _xor(new, _predict(kind, base, width, ratio))
    if kind == ISCALE:
        return _sub(new, _predict(kind, base, width, ratio), width)
    return new


def inverse(kind: int, coded: Bytes, base: Bytes, width: int, ratio: float) -> Bytes:
    if kind == XOR:
        return _xor(coded, base)
    if kind == SUB:
        return _add(coded, base, width)
    if kind == FSCALE:
        return _xor(coded, _predict(kind, base, width, ratio))
    if kind == ISCALE:
        return _add(coded, _predict(kind, base, width, ratio), width)
    return coded


def _ratio(tensor: TensorRange, new: Bytes, base: Bytes, width: int) -> float | None:
    """Least-squares factor from base to new values, or None when scaling cannot apply."""
    if (
        tensor.data_type in _FLOAT_TYPES
        and width == np.dtype(_FLOAT_TYPES[tensor.data_type]).itemsize
    ):
        dtype = np.dtype(_FLOAT_TYPES[tensor.data_type]).newbyteorder("<")
    elif is_integer_type(tensor.data_type) and width in _SIGNED:
        dtype = np.dtype(_SIGNED[width]).newbyteorder("<")
    else:
        return None
    a = base.view(dtype).astype(np.float64)
    b = new.view(dtype).astype(np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    energy = float(np.dot(a, a))
    ratio = float(np.dot(a, b)) / energy if energy > 0 else 1.0
    return ratio if np.isfinite(ratio) and ratio != 1.0 else None


def _probe_size(data: Bytes, width: int) -> int:
    if not data.any():
        return 0
    return len(zstd_codec.compress(planes(data, width).tobytes(), level=_PROBE_LEVEL))


class Coded:
    """One tensor's chosen transform and its coded bytes."""

    __slots__ = ("data", "kind", "ratio", "width")

    def __init__(self, kind: int, width: int, ratio: float, data: Bytes) -> None:
        self.kind, self.width, self.ratio, self.data = kind, width, ratio, data


def choose(tensor: TensorRange, new: Bytes, base: Bytes | None) -> Coded:
    """Code one tensor (``new``) against its twin (``base``, None when it has none)."""
    width = tensor.width if tensor.length % tensor.width == 0 else 1
    if base is None:
        return Coded(RAW, width, 0.0, new)
    if len(new) < _PROBE_MIN_BYTES:
        return Coded(XOR, width, 0.0, _xor(new, base))
    integer = is_integer_type(tensor.data_type)
    options = [(XOR, 0.0), (SUB, 0.0), (RAW, 0.0)] if integer else [(XOR, 0.0), (RAW, 0.0)]
    ratio = _ratio(tensor, new, base, width)
    if ratio is not None:
        options.append((ISCALE if integer else FSCALE, ratio))
    coded = [Coded(k, width, r, forward(k, new, base, width, r)) for k, r in options]
    return min(coded, key=lambda c: _probe_size(c.data, width))
