"""The reference-model pipeline: fixed splits, committed artifacts, and faithful conversions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeserve.wire.model_card import ModelCard, card_path_for, file_sha256
from models.data import NUM_CLASSES, load_split

ARTIFACTS = Path(__file__).resolve().parents[2] / "models" / "artifacts"
CLASSIFIER_ARTIFACTS = {
    "digits-edge-fp32": "digits-edge-fp32.onnx",
    "digits-edge": "digits-edge.onnx",
    "digits-edge-tflite": "digits-edge-tflite.tflite",
    "digits-cloud": "digits-cloud.onnx",
}


def _onnx_accuracy(name: str) -> float:
    pytest.importorskip("onnxruntime")
    from models.evaluate import onnx_accuracy

    x, y = load_split(ARTIFACTS, "test")
    return onnx_accuracy(ARTIFACTS / CLASSIFIER_ARTIFACTS[name], x, y)


def _tiny_dense_net():
    torch = pytest.importorskip("torch")
    torch.manual_seed(123)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)
    ).eval()


def _gemm_model(extra_op: str | None = None, trans_b: int = 1):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((10, 64) if trans_b else (64, 10)).astype(np.float32)
    bias = rng.standard_normal(10).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["input", "W", "B"], ["gemm"], transB=trans_b)]
    out = "gemm"
    if extra_op:
        nodes.append(helper.make_node(extra_op, ["gemm"], ["logits"]))
        out = "logits"
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
    )
    return helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


# --- the data split ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def split():
    pytest.importorskip("sklearn")
    from models.data import make_split

    return make_split(seed=0)


def test_split_is_30_percent_test_15_percent_calibration_and_the_rest_train(split):
    total = len(split.y_train) + len(split.y_calibration) + len(split.y_test)
    assert total == 1797
    assert len(split.y_test) == round(0.30 * total)
    assert len(split.y_calibration) == round(0.15 * total)
    assert split.x_train.shape == (len(split.y_train), 64)


def test_split_parts_share_no_sample(split):
    parts = [set(split.train_index), set(split.calibration_index), set(split.test_index)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    assert len(parts[0] | parts[1] | parts[2]) == 1797


def test_split_keeps_every_digit_in_proportion_in_every_part(split):
    overall = np.bincount(np.concatenate([split.y_train, split.y_calibration, split.y_test]))
    for labels in (split.y_train, split.y_calibration, split.y_test):
        expected = overall / overall.sum() * len(labels)
        assert np.all(np.abs(np.bincount(labels, minlength=NUM_CLASSES) - expected) <= 1.5)


def test_features_are_float32_pixels_scaled_to_unit_range_and_labels_int64(split):
    assert split.x_test.dtype == np.float32 and split.y_test.dtype == np.int64
    assert split.x_train.min() == 0.0 and split.x_train.max() == 1.0


def test_committed_npz_splits_equal_a_fresh_split(split):
    x_test, y_test = load_split(ARTIFACTS, "test")
    x_cal, y_cal = load_split(ARTIFACTS, "calibration")
    np.testing.assert_array_equal(x_test, split.x_test)
    np.testing.assert_array_equal(y_test, split.y_test)
    np.testing.assert_array_equal(x_cal, split.x_calibration)
    np.testing.assert_array_equal(y_cal, split.y_calibration)


# --- the committed artifacts ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CLASSIFIER_ARTIFACTS))
def test_committed_artifact_bytes_match_the_sha256_and_size_on_its_card(name):
    artifact = ARTIFACTS / CLASSIFIER_ARTIFACTS[name]
    card = ModelCard.load(card_path_for(artifact))
    assert card.name == name and card.file == artifact.name and card.version == "1"
    assert card.sha256 == file_sha256(artifact)
    assert card.size_bytes == artifact.stat().st_size


@pytest.mark.parametrize("name", sorted(CLASSIFIER_ARTIFACTS))
def test_every_card_declares_the_digits_classifier_contract(name):
    card = ModelCard.load(card_path_for(ARTIFACTS / CLASSIFIER_ARTIFACTS[name]))
    assert [(t.name, t.datatype, t.shape) for t in card.inputs] == [("input", "FP32", [-1, 64])]
    assert [(t.name, t.datatype, t.shape) for t in card.outputs] == [("logits", "FP32", [-1, 10])]
    assert card.logits_output == "logits"
    assert card.labels == [str(d) for d in range(10)]
    assert card.metrics is not None and card.metrics.test_samples == 539


def test_only_the_digits_edge_card_is_int8():
    precisions = {
        name: ModelCard.load(card_path_for(ARTIFACTS / file)).precision
        for name, file in CLASSIFIER_ARTIFACTS.items()
    }
    assert precisions == {
        "digits-edge-fp32": "fp32",
        "digits-edge": "int8",
        "digits-edge-tflite": "fp32",
        "digits-cloud": "fp32",
    }


def test_committed_artifacts_stay_well_under_five_megabytes():
    assert sum(p.stat().st_size for p in ARTIFACTS.iterdir()) < 5 * 1024 * 1024


def test_edge_model_has_fewer_than_50k_parameters():
    pytest.importorskip("torch")
    from models.nets import EdgeMLP, count_parameters

    card = ModelCard.load(ARTIFACTS / "digits-edge-fp32.card.json")
    assert count_parameters(EdgeMLP()) == card.parameters < 50_000


def test_cloud_model_is_more_accurate_than_edge_model_on_the_test_split():
    cloud, edge = _onnx_accuracy("digits-cloud"), _onnx_accuracy("digits-edge-fp32")
    assert cloud >= 0.98
    assert cloud > edge + 0.01


def test_int8_edge_model_is_within_one_point_of_fp32_accuracy():
    assert _onnx_accuracy("digits-edge") >= _onnx_accuracy("digits-edge-fp32") - 0.01


def test_fp32_card_accuracy_is_what_onnxruntime_measures_on_the_committed_split():
    for name in ("digits-edge-fp32", "digits-cloud"):
        card = ModelCard.load(card_path_for(ARTIFACTS / CLASSIFIER_ARTIFACTS[name]))
        assert card.metrics is not None
        assert card.metrics.test_accuracy == pytest.approx(_onnx_accuracy(name), abs=1e-6)


def test_tflite_and_onnx_fp32_agree_on_top1_for_99_percent_of_the_test_split():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("ai_edge_litert")
    from models.evaluate import run_onnx, run_tflite

    x, _ = load_split(ARTIFACTS, "test")
    onnx_top1 = run_onnx(ARTIFACTS / "digits-edge-fp32.onnx", x).argmax(axis=1)
    tflite_top1 = run_tflite(ARTIFACTS / "digits-edge-tflite.tflite", x).argmax(axis=1)
    assert np.mean(onnx_top1 == tflite_top1) >= 0.99


def test_committed_tflite_model_has_batch_one_with_a_dynamic_batch_signature():
    litert = pytest.importorskip("ai_edge_litert.interpreter")

    interpreter = litert.Interpreter(model_path=str(ARTIFACTS / "digits-edge-tflite.tflite"))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert (inp["name"], list(inp["shape"]), list(inp["shape_signature"])) == (
        "input",
        [1, 64],
        [-1, 64],
    )
    assert (out["name"], list(out["shape"]), list(out["shape_signature"])) == (
        "logits",
        [1, 10],
        [-1, 10],
    )
    assert inp["dtype"] == out["dtype"] == np.float32


# --- the converters ---------------------------------------------------------------------


def test_tflite_converter_rejects_an_unsupported_op_with_unsupported_graph_error():
    pytest.importorskip("tflite")
    from models.tflite_convert import UnsupportedGraphError, parse_dense_graph

    with pytest.raises(UnsupportedGraphError, match="Sigmoid"):
        parse_dense_graph(_gemm_model(extra_op="Sigmoid"))


def test_tflite_converter_transposes_gemm_weights_stored_without_trans_b(tmp_path):
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tflite")
    import onnx

    from models.tflite_convert import convert_onnx_to_tflite, verify_against_onnx

    onnx_path = tmp_path / "m.onnx"
    onnx.save(_gemm_model(extra_op="Relu", trans_b=0), str(onnx_path))
    tflite_path = convert_onnx_to_tflite(onnx_path, tmp_path / "m.tflite")
    x = np.random.default_rng(1).random((7, 64), dtype=np.float32)
    assert verify_against_onnx(onnx_path, tflite_path, x) < 1e-4


def test_tflite_conversion_is_byte_deterministic_for_the_same_weights(tmp_path):
    net = _tiny_dense_net()
    pytest.importorskip("tflite")
    from models.export import export_classifier
    from models.tflite_convert import convert_onnx_to_tflite

    onnx_path = export_classifier(net, tmp_path / "tiny.onnx")
    first = convert_onnx_to_tflite(onnx_path, tmp_path / "a.tflite").read_bytes()
    second = convert_onnx_to_tflite(onnx_path, tmp_path / "b.tflite").read_bytes()
    assert first == second


def test_onnx_export_is_byte_deterministic_for_the_same_weights(tmp_path):
    net = _tiny_dense_net()
    from models.export import export_classifier

    first = export_classifier(net, tmp_path / "a.onnx").read_bytes()
    second = export_classifier(net, tmp_path / "b.onnx").read_bytes()
    assert first == second


def test_exported_onnx_has_a_dynamic_batch_axis_and_matches_torch(tmp_path):
    net = _tiny_dense_net()
    pytest.importorskip("onnxruntime")
    from models.export import export_classifier, verify_against_torch

    path = export_classifier(net, tmp_path / "tiny.onnx")
    x = np.random.default_rng(2).random((5, 64), dtype=np.float32)
    assert verify_against_torch(net, path, x) < 1e-4
