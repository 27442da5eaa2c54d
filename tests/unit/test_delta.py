"""Model update payloads: exact rebuilds, the smallest encoding, and no trust in the bytes."""

from __future__ import annotations

import functools
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import pyzstd
from onnx import TensorProto, helper, numpy_helper

from edgeserve.artifacts import packaged_artifacts
from edgeserve.wire.delta import (
    Payload,
    apply_payload,
    build_payload,
    candidates,
    sparse,
    tensor_format_for,
    transforms,
    zstd_codec,
)
from edgeserve.wire.delta import tensor_delta as td
from edgeserve.wire.delta.onnx_layout import ExternalData, NotOnnx, TensorRange, tensor_ranges
from edgeserve.wire.errors import IntegrityError
from edgeserve.wire.manifest import PayloadEncoding


def int8_layer(seed: int = 0) -> bytes:
    """An int8 weight matrix (64 KiB) behind DequantizeLinear: a layer of a quantized model."""
    rng = np.random.default_rng(seed)
    weights = np.clip(np.rint(rng.normal(0, 30, (256, 256))), -127, 127).astype(np.int8)
    initializers = [
        numpy_helper.from_array(weights, "w_quantized"),
        numpy_helper.from_array(np.array(0.01, dtype=np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, dtype=np.int8), "w_zero_point"),
    ]
    node = helper.make_node("DequantizeLinear", ["w_quantized", "w_scale", "w_zero_point"], ["w"])
    output = helper.make_tensor_value_info("w", TensorProto.FLOAT, [256, 256])
    graph = helper.make_graph([node], "int8-layer", [], [output], initializers)
    model: bytes = helper.make_model(graph).SerializeToString()
    return model


ARTIFACTS = packaged_artifacts()
CLOUD = (ARTIFACTS / "digits-cloud.onnx").read_bytes()
EDGE_INT8 = (ARTIFACTS / "digits-edge.onnx").read_bytes()
EDGE_FP32 = (ARTIFACTS / "digits-edge-fp32.onnx").read_bytes()
TFLITE = (ARTIFACTS / "digits-edge-tflite.tflite").read_bytes()
INT8_LAYER = int8_layer()

Edit = Callable[[str, np.ndarray], np.ndarray]
TableEdit = Callable[[list[td.Segment]], list[td.Segment]]


def perturbed(model: bytes, edit: Edit) -> bytes:
    """A copy of ``model`` with each initializer's raw data replaced by ``edit(name, data)``."""
    out = bytearray(model)
    for t in tensor_ranges(model):
        dtype = {1: np.float32, 3: np.int8, 6: np.int32}.get(t.data_type, np.uint8)
        data = np.frombuffer(model, dtype=dtype, count=t.length // np.dtype(dtype).itemsize,
                             offset=t.offset)  # fmt: skip
        out[t.offset : t.offset + t.length] = edit(t.name, data.copy()).tobytes()
    return bytes(out)


def last_layer_tuned(name: str, data: np.ndarray) -> np.ndarray:
    return data * np.float32(1.01) if name.startswith("classifier.5") else data


def fully_tuned(name: str, data: np.ndarray) -> np.ndarray:
    noise = np.random.default_rng(len(name)).normal(0, 1e-4, data.shape).astype(np.float32)
    return data + noise if data.dtype == np.float32 else data


def requantized(name: str, data: np.ndarray) -> np.ndarray:
    if data.dtype != np.int8:
        return data * np.float32(1.001) if data.dtype == np.float32 else data
    step = (np.random.default_rng(3).random(data.shape) < 0.2).astype(np.int16)
    moved: np.ndarray = np.clip(data.astype(np.int16) + step, -127, 127).astype(np.int8)
    return moved


def sparsely_stepped(name: str, data: np.ndarray) -> np.ndarray:
    """What a small fine-tune does to int8 weights: 2% of them move by one step."""
    if data.dtype != np.int8:
        return data
    rng = np.random.default_rng(len(name))
    step = np.where(rng.random(data.shape) < 0.02, rng.choice([-1, 1], data.shape), 0)
    moved: np.ndarray = np.clip(data.astype(np.int16) + step, -127, 127).astype(np.int8)
    return moved


def recalibrated(name: str, data: np.ndarray) -> np.ndarray:
    """An input scale grew by 30%: bias scales grow with it and int32 biases shrink."""
    if data.dtype == np.float32 and name.endswith("scale"):
        return (data.astype(np.float64) * 1.3).astype(np.float32)
    if data.dtype == np.int32:
        return np.rint(data / 1.3).astype(np.int32)
    return data


PAIRS = {
    "cnn last-layer fine-tune": (CLOUD, perturbed(CLOUD, last_layer_tuned)),
    "cnn full fine-tune": (CLOUD, perturbed(CLOUD, fully_tuned)),
    "int8 re-quantization": (EDGE_INT8, perturbed(EDGE_INT8, requantized)),
    "int8 re-calibration": (EDGE_INT8, perturbed(EDGE_INT8, recalibrated)),
    "int8 sparse steps": (INT8_LAYER, perturbed(INT8_LAYER, sparsely_stepped)),
    "int8 to fp32 (other graph)": (EDGE_INT8, EDGE_FP32),
    "unchanged": (CLOUD, CLOUD),
}


ENCODINGS: list[PayloadEncoding] = ["zstd", "zstd-patch", "tensor-delta", "tensor-delta-2"]
DELTAS: list[PayloadEncoding] = ["zstd-patch", "tensor-delta", "tensor-delta-2"]


@functools.cache
def all_encoded(name: str) -> list[Payload]:
    """Every candidate for one pair, built once per test session (level 19 is not free)."""
    base, new = PAIRS[name]
    old_format = [p for p in candidates(new, base, tensor_format=1) if p.encoding == "tensor-delta"]
    return candidates(new, base) + old_format


def encoded(encoding: PayloadEncoding, name: str) -> Payload:
    return next(p for p in all_encoded(name) if p.encoding == encoding)


def test_tensor_ranges_match_the_onnx_library() -> None:
    for model in (CLOUD, EDGE_INT8):
        expected = {t.name: t.raw_data for t in onnx.load_from_string(model).graph.initializer}
        ranges = tensor_ranges(model)
        assert {r.name for r in ranges} == {n for n, raw in expected.items() if raw}
        for r in ranges:
            assert model[r.offset : r.offset + r.length] == expected[r.name]


@pytest.mark.parametrize("data", [TFLITE, b"", b"\x00" * 64, bytes(range(256)) * 8])
def test_non_onnx_bytes_are_refused_by_the_layout_walker(data: bytes) -> None:
    with pytest.raises(NotOnnx):
        tensor_ranges(data)


@pytest.mark.parametrize("name", list(PAIRS))
def test_every_encoding_rebuilds_the_new_model_exactly(name: str) -> None:
    base, new = PAIRS[name]
    found = all_encoded(name)
    assert [p.encoding for p in found] == ["zstd", "zstd-patch", "tensor-delta-2", "tensor-delta"]
    for payload in found:
        assert apply_payload(payload.encoding, payload.data, base, len(new)) == new


@pytest.mark.parametrize("name", list(PAIRS))
def test_build_payload_returns_the_smallest_candidate(name: str) -> None:
    base, new = PAIRS[name]
    chosen = build_payload(new, base)
    latest = [p for p in all_encoded(name) if p.encoding != "tensor-delta"]
    assert len(chosen.data) == min(len(p.data) for p in latest)
    assert apply_payload(chosen.encoding, chosen.data, base, len(new)) == new


def test_a_last_layer_fine_tune_costs_under_five_percent_of_the_model() -> None:
    new = PAIRS["cnn last-layer fine-tune"][1]
    assert min(len(p.data) for p in all_encoded("cnn last-layer fine-tune")) < 0.05 * len(new)


@pytest.mark.parametrize(
    "name", ["cnn full fine-tune", "int8 re-quantization", "int8 re-calibration"]
)
def test_tensor_delta_beats_a_byte_level_patch_when_every_weight_moves(name: str) -> None:
    smallest = min(all_encoded(name), key=lambda p: len(p.data))
    assert smallest.encoding.startswith("tensor-delta")


def test_without_a_base_the_payload_is_full_zstd() -> None:
    payload = build_payload(CLOUD, None)
    assert payload.encoding == "zstd"
    assert apply_payload("zstd", payload.data, None, len(CLOUD)) == CLOUD


def test_a_non_onnx_base_falls_back_to_byte_level_encodings() -> None:
    assert [p.encoding for p in candidates(CLOUD, TFLITE)] == ["zstd", "zstd-patch"]
    payload = build_payload(CLOUD, TFLITE)
    assert apply_payload(payload.encoding, payload.data, TFLITE, len(CLOUD)) == CLOUD


def test_a_non_onnx_new_artifact_falls_back_too() -> None:
    payload = build_payload(TFLITE, CLOUD)
    assert payload.encoding in ("zstd", "zstd-patch")
    assert apply_payload(payload.encoding, payload.data, CLOUD, len(TFLITE)) == TFLITE


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_flipped_bytes_never_rebuild_wrong_bytes(encoding: PayloadEncoding) -> None:
    base, new = PAIRS["int8 sparse steps"]
    data = encoded(encoding, "int8 sparse steps").data
    for position in range(0, len(data), max(1, len(data) // 150)):
        corrupt = bytearray(data)
        corrupt[position] ^= 0x5A
        try:
            rebuilt = apply_payload(encoding, bytes(corrupt), base, len(new))
        except IntegrityError:
            continue
        assert rebuilt == new, f"byte {position} flipped gave wrong output without an error"


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("keep", [0, 1, 10, 0.5, -1])
def test_truncated_payloads_raise_integrity_error(encoding: PayloadEncoding, keep: float) -> None:
    base, new = PAIRS["cnn full fine-tune"]
    data = encoded(encoding, "cnn full fine-tune").data
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    with pytest.raises(IntegrityError):
        apply_payload(encoding, data[:cut], base, len(new))


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("delta", [-1, 1])
def test_a_size_other_than_expected_raises_integrity_error(
    encoding: PayloadEncoding, delta: int
) -> None:
    base, new = PAIRS["cnn last-layer fine-tune"]
    data = encoded(encoding, "cnn last-layer fine-tune").data
    with pytest.raises(IntegrityError):
        apply_payload(encoding, data, base, len(new) + delta)


@pytest.mark.parametrize("encoding", DELTAS)
def test_a_delta_applied_to_the_wrong_base_raises_integrity_error(
    encoding: PayloadEncoding,
) -> None:
    base, new = PAIRS["cnn full fine-tune"]
    data = encoded(encoding, "cnn full fine-tune").data
    other_base = perturbed(base, last_layer_tuned)  # same length, differs in tensor data
    with pytest.raises(IntegrityError):
        apply_payload(encoding, data, other_base, len(new))
    with pytest.raises(IntegrityError):
        apply_payload(encoding, data, None, len(new))


def test_trailing_bytes_after_the_frame_raise_integrity_error() -> None:
    frame = zstd_codec.compress(CLOUD)
    with pytest.raises(IntegrityError):
        apply_payload("zstd", frame + b"\x00", None, len(CLOUD))


def test_unknown_encoding_raises_integrity_error() -> None:
    with pytest.raises(IntegrityError):
        apply_payload("bsdiff", b"", CLOUD, 10)  # type: ignore[arg-type]


def test_decoding_an_oversize_frame_stops_at_the_expected_size() -> None:
    bomb = zstd_codec.compress(bytes(64 << 20))  # 64 MiB of zeros in a few KB
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError):
            zstd_codec.decompress(bomb, None, 1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_a_frame_asking_for_a_huge_window_is_refused() -> None:
    compressor = pyzstd.ZstdCompressor({pyzstd.CParameter.windowLog: 30})
    # Fed in a separate call, the size is not known up front, so the 1 GiB window stays.
    frame = compressor.compress(bytes(4096)) + compressor.flush()
    with pytest.raises(IntegrityError):
        zstd_codec.decompress(frame, None, 4096)


HEAD, SEGMENT = td._HEADS[2], td._SEGMENTS[2]


def _with_table(payload: bytes, edit: TableEdit) -> bytes:
    """Re-pack a format-2 tensor-delta payload with an edited (but validly compressed) table."""
    head = list(HEAD.unpack_from(payload))
    n_base, n_seg, table_len = head[5], head[6], head[7]
    table = zstd_codec.decompress(
        payload[HEAD.size : HEAD.size + table_len], None,
        n_base * td._BASE_RANGE.size + n_seg * SEGMENT.size,
    )  # fmt: skip
    split = n_base * td._BASE_RANGE.size
    segments = edit([td.Segment(*row) for row in SEGMENT.iter_unpack(table[split:])])
    rows = b"".join(SEGMENT.pack(*td._segment_fields(s, 2)) for s in segments)
    new_table = zstd_codec.compress(table[:split] + rows)
    head[6], head[7] = len(segments), len(new_table)
    rest = payload[HEAD.size + table_len :]
    return HEAD.pack(*head) + new_table + rest


def _moved(segments: list[td.Segment], index: int, **change: float) -> list[td.Segment]:
    fields = {f: getattr(segments[index], f) for f in td.Segment.__slots__}
    return [*segments[:index], td.Segment(**{**fields, **change}), *segments[index + 1 :]]


def _first_sparse(segments: list[td.Segment]) -> int:
    return next(i for i, s in enumerate(segments) if s.is_sparse)


def _sparse_moved(segments: list[td.Segment], **change: float) -> list[td.Segment]:
    return _moved(segments, _first_sparse(segments), **change)


BAD_TABLES: dict[str, TableEdit] = {
    "overlapping tensors": lambda s: _moved(s, 1, offset=s[0].offset),
    "tensor past the end": lambda s: _moved(s, -1, offset=len(INT8_LAYER)),
    "base read past the end": lambda s: _moved(
        s, -1, kind=transforms.XOR, base_offset=len(INT8_LAYER)
    ),
    "scale without a finite ratio": lambda s: _moved(s, 0, kind=transforms.FSCALE, ratio=np.nan),
    "float scale of bytes": lambda s: _moved(s, 0, kind=transforms.FSCALE, width=1, ratio=2.0),
    "unknown kind": lambda s: _moved(s, 0, kind=9),
    "bad width": lambda s: _moved(s, 0, width=3),
    "a tensor dropped": lambda s: s[:-1],
    "more changes than elements": lambda s: _sparse_moved(s, count=s[_first_sparse(s)].length + 1),
    "a sparse tensor made dense": lambda s: _sparse_moved(s, count=td.DENSE),
    "changes counted short": lambda s: _sparse_moved(s, count=s[_first_sparse(s)].count - 1),
}


@pytest.mark.parametrize("edit", list(BAD_TABLES.values()), ids=list(BAD_TABLES))
def test_inconsistent_tensor_tables_raise_integrity_error(edit: TableEdit) -> None:
    base, new = PAIRS["int8 sparse steps"]
    payload = _with_table(encoded("tensor-delta-2", "int8 sparse steps").data, edit)
    with pytest.raises(IntegrityError):
        apply_payload("tensor-delta-2", payload, base, len(new))


def test_sparse_int8_steps_cost_less_in_format_2_than_in_format_1() -> None:
    dense = len(encoded("tensor-delta", "int8 sparse steps").data)
    chosen = len(encoded("tensor-delta-2", "int8 sparse steps").data)
    assert chosen < 0.85 * dense


def test_gaps_pointing_past_a_tensor_are_refused() -> None:
    gaps = np.array([2, 5], dtype="<u4").view(np.uint8)
    with pytest.raises(IntegrityError, match="past"):
        sparse.scatter(gaps, np.array([1, 255], dtype=np.uint8), length=8, width=1)


def test_gather_and_scatter_round_trip_every_width() -> None:
    rng = np.random.default_rng(5)
    for width in (1, 2, 4, 8):
        coded = np.where(rng.random(4096 * width) < 0.03, rng.integers(1, 256, 4096 * width), 0)
        coded = coded.astype(np.uint8)
        gaps, values = sparse.gather(coded, width)
        assert np.array_equal(sparse.scatter(gaps, values, len(coded), width), coded)


def test_a_format_1_applier_refuses_a_format_2_payload_naming_the_format() -> None:
    base, new = PAIRS["int8 sparse steps"]
    data = encoded("tensor-delta-2", "int8 sparse steps").data
    with pytest.raises(IntegrityError, match=r"format 2 .* names format 1"):
        apply_payload("tensor-delta", data, base, len(new))


def test_a_payload_from_a_newer_format_is_refused_as_newer() -> None:
    base, new = PAIRS["int8 sparse steps"]
    data = bytearray(encoded("tensor-delta-2", "int8 sparse steps").data)
    data[len(td.MAGIC)] = 3
    with pytest.raises(IntegrityError, match=r"format 3 \(newer than this agent applies\)"):
        apply_payload("tensor-delta-2", bytes(data), base, len(new))


@pytest.mark.parametrize(
    ("agent_version", "tensor_format"),
    [("", 1), ("0.1.0", 1), ("garbage", 1), ("0.2.0", 2), ("0.10.0", 2), ("1.0+local", 2)],
)
def test_agents_get_the_newest_tensor_delta_format_they_apply(
    agent_version: str, tensor_format: int
) -> None:
    assert tensor_format_for(agent_version) == tensor_format


def test_a_format_1_build_never_names_format_2() -> None:
    base, new = PAIRS["int8 sparse steps"]
    found = candidates(new, base, tensor_format=1)
    assert "tensor-delta-2" not in [p.encoding for p in found]
    assert build_payload(new, base, tensor_format=1).encoding != "tensor-delta-2"


KIND_CASES = [
    (transforms.XOR, 4, np.float32),
    (transforms.SUB, 1, np.int8),
    (transforms.SUB, 4, np.int32),
    (transforms.FSCALE, 4, np.float32),
    (transforms.FSCALE, 8, np.float64),
    (transforms.ISCALE, 1, np.int8),
    (transforms.ISCALE, 4, np.int32),
]


@pytest.mark.parametrize(("kind", "width", "dtype"), KIND_CASES)
def test_every_transform_inverts_exactly(kind: int, width: int, dtype: type) -> None:
    rng = np.random.default_rng(kind * 10 + width)
    raw = rng.integers(0, 256, size=4096 * width, dtype=np.uint8)
    new, base = raw[: 2048 * width], raw[2048 * width :]
    if np.dtype(dtype).kind == "f":  # random bits include NaN and inf: still lossless
        base = (rng.normal(size=2048) * 100).astype(dtype).view(np.uint8)
    coded = transforms.forward(kind, new, base, width, 0.77)
    assert np.array_equal(transforms.inverse(kind, coded, base, width, 0.77), new)


def test_a_rescaled_tensor_codes_to_almost_nothing() -> None:
    base = (np.random.default_rng(0).normal(size=8192) * 1e-3).astype(np.float32)
    new = (base.astype(np.float64) * 1.3).astype(np.float32)
    tensor = TensorRange("bias_scale", 1, 4, 0, new.nbytes)
    choice = transforms.choose(tensor, new.view(np.uint8), base.view(np.uint8))
    assert choice.kind == transforms.FSCALE
    assert np.count_nonzero(choice.data) < 0.05 * choice.data.size


def with_external_data(model: bytes, folder: Path) -> bytes:
    """``model`` saved as model.onnx + model.onnx.data: the .onnx bytes name the data file."""
    path = folder / "model.onnx"
    onnx.save_model(
        onnx.load_from_string(model), path, save_as_external_data=True,
        all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0,
    )  # fmt: skip
    return path.read_bytes()


@pytest.mark.parametrize("side", ["new", "base"])
def test_a_model_with_external_data_is_refused_by_name(side: str, tmp_path: Path) -> None:
    external = with_external_data(INT8_LAYER, tmp_path)
    new, base = (external, INT8_LAYER) if side == "new" else (INT8_LAYER, external)
    with pytest.raises(ExternalData, match=r"'w_quantized' is stored as external data"):
        build_payload(new, base)
    with pytest.raises(ExternalData):
        tensor_ranges(external)
