"""ONNX models whose weights live in other files (``model.onnx`` + ``model.onnx.data``).

The agent refuses them with the command that makes them one file (its hash covers one
file); ``model_files`` lists and checks every file such a model is made of. Models are
real: the packaged digits model re-saved by the ``onnx`` package with external data.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from edgeserve.artifacts import packaged_artifacts
from edgeserve.runtimes import RuntimeOptions, open_session
from edgeserve.runtimes.onnx_files import MalformedOnnx, external_data_locations, model_files
from edgeserve.wire.errors import InternalError, InvalidInput
from models.data import load_split

DIGITS = packaged_artifacts() / "digits-edge-fp32.onnx"


def save_with_external_data(model: onnx.ModelProto, folder: Path, location: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=location, size_threshold=0, convert_attribute=True)  # fmt: skip
    return path


@pytest.fixture
def split_model(tmp_path: Path) -> Path:
    return save_with_external_data(onnx.load(str(DIGITS)), tmp_path / "split", "model.onnx.data")


def logits(path: Path) -> np.ndarray:
    x, _ = load_split(packaged_artifacts(), "test")
    session = open_session("onnx", path, RuntimeOptions())
    try:
        return session.run({"input": np.asarray(x[:32], dtype=np.float32)}, ["logits"])["logits"]
    finally:
        session.close()


def test_a_single_file_model_names_no_external_data() -> None:
    assert external_data_locations(DIGITS) == []
    assert model_files(DIGITS) == [DIGITS]


def test_the_external_data_file_a_model_names_is_found(split_model: Path) -> None:
    assert external_data_locations(split_model) == ["model.onnx.data"]
    assert model_files(split_model) == [split_model, split_model.parent / "model.onnx.data"]


def test_external_data_of_a_constant_node_attribute_is_found(tmp_path: Path) -> None:
    weights = numpy_helper.from_array(np.arange(4096, dtype=np.float32), "w")
    constant = helper.make_node("Constant", [], ["y"], value=weights)
    graph = helper.make_graph(
        [constant], "g", [], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4096])]
    )
    path = save_with_external_data(helper.make_model(graph), tmp_path, "weights.bin")
    assert external_data_locations(path) == ["weights.bin"]


def test_the_agent_refuses_external_data_and_says_how_to_make_one_file(split_model: Path) -> None:
    with pytest.raises(InvalidInput) as refused:
        open_session("onnx", split_model, RuntimeOptions())
    message = refused.value.message
    assert "model.onnx.data" in message
    assert "save_as_external_data=False" in message


def test_the_fix_the_refusal_gives_makes_a_model_that_answers_as_before(
    split_model: Path,
) -> None:
    with pytest.raises(InvalidInput) as refused:
        open_session("onnx", split_model, RuntimeOptions())
    command = refused.value.message.split("save it as one file: python -c ")[1]
    code = command.split('"')[1]  # the program between the double quotes
    subprocess.run([sys.executable, "-c", code], cwd=split_model.parent, check=True, timeout=120)
    (split_model.parent / "model.onnx.data").unlink()  # one file now: the data is not read
    np.testing.assert_array_equal(logits(split_model), logits(DIGITS))


def test_a_missing_external_data_file_is_named_with_the_fix(split_model: Path) -> None:
    (split_model.parent / "model.onnx.data").unlink()
    with pytest.raises(InvalidInput, match=r"'model.onnx.data'.*copy that file with the model"):
        model_files(split_model)


def test_external_data_outside_the_model_folder_is_refused(tmp_path: Path) -> None:
    path = save_with_external_data(onnx.load(str(DIGITS)), tmp_path / "a", "model.onnx.data")
    shutil.move(tmp_path / "a" / "model.onnx.data", tmp_path / "stolen.data")
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../stolen.data"
    onnx.save(model, str(path))
    with pytest.raises(InvalidInput, match=r"outside its folder: \.\./stolen\.data"):
        model_files(path)


def test_a_file_that_is_not_onnx_still_gets_onnxruntimes_own_load_error(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\xff\xff\xff\xff not a protobuf at all")
    with pytest.raises(InternalError, match="onnxruntime could not load"):
        open_session("onnx", path, RuntimeOptions())


def test_a_truncated_model_is_reported_as_malformed(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(DIGITS.read_bytes()[: DIGITS.stat().st_size // 2])
    with pytest.raises(MalformedOnnx, match=r"model\.onnx: not an ONNX model"):
        external_data_locations(path)
