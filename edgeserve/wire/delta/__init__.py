"""Model update payloads: the bytes a device downloads to rebuild a new model version.

Three encodings, named in the signed manifest's ``PayloadSpec.encoding``:

- ``"zstd"``: the whole new artifact, zstd-compressed; needs no base.
- ``"zstd-patch"``: zstd with the base artifact as prefix (``zstd --patch-from``); wins
  when whole regions are unchanged (a last-layer fine-tune, an edited graph).
- ``"tensor-delta"``: ONNX-aware; tensors XORed/subtracted against their namesakes in the
  base and byte-plane grouped (see :mod:`.tensor_delta`); wins when every weight moved a
  little (a full fine-tune, a re-quantization).
- ``"tensor-delta-2"``: the same, with a sparse layout (changed positions + values)
  chosen per tensor; wins when few int8 weights moved by a step (a small fine-tune).
  Agents before :data:`TENSOR_DELTA_2_SINCE` do not know the name and refuse the
  manifest, so the sync service asks :func:`tensor_format_for` what a device applies.

:func:`build_payload` (sync service side) tries every encoding that applies, checks that
each candidate rebuilds the new bytes exactly, and returns the smallest.
:func:`apply_payload` (device side) rebuilds the artifact; the caller still compares the
result's sha256 with the card, but a corrupt payload already fails here with
:class:`~edgeserve.wire.errors.IntegrityError` and never allocates far beyond
``expected_size``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from edgeserve.wire.delta import zstd_codec
from edgeserve.wire.delta.onnx_layout import NotOnnx
from edgeserve.wire.delta.tensor_delta import LATEST, apply_tensor_delta, build_tensor_delta
from edgeserve.wire.errors import IntegrityError, InvalidInput
from edgeserve.wire.manifest import PayloadEncoding, version_key

__all__ = [
    "TENSOR_DELTA_2_SINCE",
    "TENSOR_ENCODINGS",
    "Payload",
    "Progress",
    "apply_payload",
    "build_payload",
    "candidates",
    "tensor_format_for",
]

# The manifest name of each tensor-delta format, and the first agent release that
# applies it; an agent reports its release in ``agent_version``.
TENSOR_ENCODINGS: dict[int, PayloadEncoding] = {1: "tensor-delta", 2: "tensor-delta-2"}
TENSOR_DELTA_2_SINCE = "0.2.0"

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Payload:
    encoding: PayloadEncoding
    data: bytes

    def __repr__(self) -> str:
        return f"Payload({self.encoding!r}, {len(self.data)} bytes)"


def tensor_format_for(agent_version: str) -> int:
    """The newest tensor-delta format an agent of this release applies (1 when unknown)."""
    try:
        release = version_key(agent_version.split("+")[0])
    except InvalidInput:  # an empty or non-numeric version: assume the oldest agent
        return 1
    return 2 if release >= version_key(TENSOR_DELTA_2_SINCE) else 1


Progress = Callable[[str, int, int], None]


def _silent(stage: str, done: int, total: int) -> None:
    pass


def _stages(base: bytes | None) -> int:
    """Stages of a build: each encoding that applies, then the verification."""
    return (3 if base else 1) + 1


def candidates(
    new: bytes, base: bytes | None, tensor_format: int = LATEST, progress: Progress = _silent
) -> list[Payload]:
    """Every encoding of ``new`` that applies to this base, unverified, in a fixed order.

    ``tensor_format`` is the newest tensor-delta format the receiving agent applies;
    ``progress(stage, done, total)`` is called before each encoding is built.
    """
    total = _stages(base)
    progress("zstd", 0, total)
    found = [Payload("zstd", zstd_codec.compress(new))]
    if not base:
        return found
    progress("zstd-patch", 1, total)
    found.append(Payload("zstd-patch", zstd_codec.compress(new, base)))
    progress(TENSOR_ENCODINGS[tensor_format], 2, total)
    try:
        data = build_tensor_delta(new, base, tensor_format)
    except NotOnnx as exc:
        _log.debug("tensor-delta does not apply: %s", exc)
    else:
        found.append(Payload(TENSOR_ENCODINGS[tensor_format], data))
    return found


def build_payload(
    new: bytes, base: bytes | None, tensor_format: int = LATEST, progress: Progress = _silent
) -> Payload:
    """The smallest payload that rebuilds ``new`` (from ``base`` when it is a delta).

    Each candidate is applied once before it is chosen, so a codec bug can only cost
    size (the full zstd payload is the last resort), never ship a broken update.
    ``progress(stage, done, total)`` hears each stage: the encodings, then "verify".
    """
    found = candidates(new, base, tensor_format, progress)
    progress("verify", _stages(base) - 1, _stages(base))
    for payload in sorted(found, key=lambda p: len(p.data)):
        try:
            if apply_payload(payload.encoding, payload.data, base, len(new)) == new:
                return payload
        except IntegrityError:
            pass
        _log.error("%s payload does not rebuild its input; not used", payload.encoding)
    raise IntegrityError("no payload encoding rebuilds the artifact")


_APPLIERS: dict[str, Callable[[bytes, bytes, int], bytes]] = {
    "zstd-patch": lambda data, base, size: zstd_codec.decompress(data, base, size),
    "tensor-delta": lambda data, base, size: apply_tensor_delta(data, base, size, 1),
    "tensor-delta-2": lambda data, base, size: apply_tensor_delta(data, base, size, 2),
}


def apply_payload(
    encoding: PayloadEncoding, data: bytes, base: bytes | None, expected_size: int
) -> bytes:
    """Rebuild the artifact of ``expected_size`` bytes from a payload (and its base).

    Raises IntegrityError on corrupt or truncated data, a size mismatch, or a delta
    without a base.
    """
    if expected_size < 0:
        raise IntegrityError(f"expected size {expected_size} is negative")
    if encoding == "zstd":
        return zstd_codec.decompress(data, None, expected_size)
    applier = _APPLIERS.get(encoding)
    if applier is None:
        raise IntegrityError(f"unknown payload encoding {encoding!r}")
    if not base:
        raise IntegrityError(f"a {encoding} payload needs the base artifact")
    return applier(data, base, expected_size)
