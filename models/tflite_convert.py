"""ONNX -> TFLite for dense (Gemm/Relu) classifiers, written without TensorFlow.

TensorFlow is far too heavy a dependency for one small MLP, so the ``.tflite`` flatbuffer
is assembled directly with the builder functions of the ``tflite`` package (the
generated schema bindings). Each ONNX ``Gemm`` becomes one ``FULLY_CONNECTED`` op, with
a following ``Relu`` fused into it; anything else is refused rather than guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
import numpy.typing as npt
import onnx
import tflite
from onnx import numpy_helper

from models.data import FloatArray
from models.evaluate import run_onnx, run_tflite

SUPPORTED_OPS = frozenset({"Gemm", "Relu"})
_SCHEMA_VERSION = 3
_FILE_IDENTIFIER = b"TFL3"
# TFLite kernels may read weights with SIMD loads; the official converter aligns
# buffer data to 16 bytes, so do the same.
_BUFFER_ALIGNMENT = 16
_DESCRIPTION = "edgeserve.models.tflite_convert"  # baked into the committed .tflite: keep


class UnsupportedGraphError(ValueError):
    """The ONNX graph uses an op or pattern this converter does not translate."""


class TFLiteMismatchError(RuntimeError):
    """The converted TFLite model does not reproduce the ONNX model's outputs."""


@dataclass(frozen=True)
class DenseLayer:
    """One FULLY_CONNECTED op: ``y = act(x @ weight.T + bias)``, weight stored [out, in]."""

    weight: npt.NDArray[np.float32]
    bias: npt.NDArray[np.float32]
    relu: bool
    output_name: str


@dataclass(frozen=True)
class DenseGraph:
    input_name: str
    in_features: int
    layers: list[DenseLayer]

    @property
    def output_name(self) -> str:
        return self.layers[-1].output_name


def _attribute(node: onnx.NodeProto, name: str, default: float | int) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _gemm_layer(node: onnx.NodeProto, constants: dict[str, FloatArray]) -> DenseLayer:
    if _attribute(node, "transA", 0) != 0:
        raise UnsupportedGraphError(f"Gemm {node.name!r}: transA=1 is not supported")
    if node.input[1] not in constants:
        raise UnsupportedGraphError(f"Gemm {node.name!r}: weight must be a constant initializer")
    alpha = float(_attribute(node, "alpha", 1.0))
    beta = float(_attribute(node, "beta", 1.0))
    weight = constants[node.input[1]]
    # FULLY_CONNECTED wants [out, in]; Gemm stores that when transB=1, [in, out] otherwise.
    if _attribute(node, "transB", 0) == 0:
        weight = weight.T
    out_features = weight.shape[0]
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in constants:
            raise UnsupportedGraphError(f"Gemm {node.name!r}: bias must be a constant initializer")
        try:
            bias = np.broadcast_to(constants[node.input[2]], (1, out_features)).reshape(-1)
        except ValueError as error:
            raise UnsupportedGraphError(f"Gemm {node.name!r}: bias is not per-output") from error
    else:
        bias = np.zeros(out_features, dtype=np.float32)
    return DenseLayer(
        weight=np.ascontiguousarray(weight * alpha, dtype=np.float32),
        bias=np.ascontiguousarray(bias * beta, dtype=np.float32),
        relu=False,
        output_name=node.output[0],
    )


def parse_dense_graph(model: onnx.ModelProto) -> DenseGraph:
    """Read a chain of Gemm (+Relu) nodes; raise :class:`UnsupportedGraphError` otherwise."""
    graph = model.graph
    constants = {
        init.name: numpy_helper.to_array(init).astype(np.float32) for init in graph.initializer
    }
    inputs = [inp for inp in graph.input if inp.name not in constants]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise UnsupportedGraphError("only single-input, single-output graphs are supported")
    unsupported = sorted({node.op_type for node in graph.node} - SUPPORTED_OPS)
    if unsupported:
        raise UnsupportedGraphError(
            f"unsupported ONNX op(s) {', '.join(unsupported)}; supported: {sorted(SUPPORTED_OPS)}"
        )
    input_name = inputs[0].name
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].HasField("dim_value"):
        raise UnsupportedGraphError(
            f"input {input_name!r} must be rank 2 with a fixed feature axis"
        )
    layers: list[DenseLayer] = []
    current = input_name
    for node in graph.node:
        if node.input[0] != current:
            raise UnsupportedGraphError(f"{node.op_type} {node.name!r} breaks the single chain")
        if node.op_type == "Gemm":
            layers.append(_gemm_layer(node, constants))
        elif layers and not layers[-1].relu:
            # A Relu right after a Gemm rides along as the fused activation.
            last = layers[-1]
            layers[-1] = DenseLayer(last.weight, last.bias, True, node.output[0])
        else:
            raise UnsupportedGraphError(f"Relu {node.name!r} does not follow a Gemm")
        current = node.output[0]
    if not layers or current != graph.output[0].name:
        raise UnsupportedGraphError("graph output is not produced by the Gemm chain")
    in_features = int(dims[1].dim_value)
    for layer in layers:
        if layer.weight.shape[1] != in_features:
            raise UnsupportedGraphError(f"shape mismatch before {layer.output_name!r}")
        in_features = layer.weight.shape[0]
    return DenseGraph(input_name, int(dims[1].dim_value), layers)


class _FlatModelWriter:
    """Collects tensors/buffers/ops, then serializes them bottom-up as flatbuffers require."""

    def __init__(self) -> None:
        self.builder = flatbuffers.Builder(1024)
        self.buffers: list[bytes] = [b""]  # buffer 0 is the empty sentinel by convention
        self.tensors: list[tuple[str, list[int], list[int] | None, int]] = []

    def add_tensor(self, name: str, shape: list[int], data: FloatArray | None = None) -> int:
        buffer_index = 0
        signature: list[int] | None = [-1, *shape[1:]]
        if data is not None:
            self.buffers.append(np.ascontiguousarray(data, dtype="<f4").tobytes())
            buffer_index = len(self.buffers) - 1
            signature = None
        self.tensors.append((name, shape, signature, buffer_index))
        return len(self.tensors) - 1

    def _int_vector(self, values: list[int]) -> int:
        return int(self.builder.CreateNumpyVector(np.asarray(values, dtype=np.int32)))

    def _table_vector(self, offsets: list[int]) -> int:
        self.builder.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            self.builder.PrependUOffsetTRelative(offset)
        return int(self.builder.EndVector())

    def _buffer(self, data: bytes) -> int:
        b = self.builder
        data_offset = None
        if data:
            b.StartVector(1, len(data), _BUFFER_ALIGNMENT)
            b.head -= len(data)
            b.Bytes[b.head : b.head + len(data)] = data
            data_offset = b.EndVector()
        tflite.BufferStart(b)
        if data_offset is not None:
            tflite.BufferAddData(b, data_offset)
        return int(tflite.BufferEnd(b))

    def _tensor(self, name: str, shape: list[int], signature: list[int] | None, buf: int) -> int:
        b = self.builder
        name_offset = b.CreateString(name)
        shape_offset = self._int_vector(shape)
        signature_offset = self._int_vector(signature) if signature else None
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape_offset)
        if signature_offset is not None:
            tflite.TensorAddShapeSignature(b, signature_offset)
        tflite.TensorAddType(b, tflite.TensorType.FLOAT32)
        tflite.TensorAddBuffer(b, buf)
        tflite.TensorAddName(b, name_offset)
        return int(tflite.TensorEnd(b))

    def _fully_connected(self, inputs: list[int], output: int, relu: bool) -> int:
        b = self.builder
        activation = (
            tflite.ActivationFunctionType.RELU if relu else tflite.ActivationFunctionType.NONE
        )
        tflite.FullyConnectedOptionsStart(b)
        tflite.FullyConnectedOptionsAddFusedActivationFunction(b, activation)
        options = tflite.FullyConnectedOptionsEnd(b)
        inputs_offset = self._int_vector(inputs)
        outputs_offset = self._int_vector([output])
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, 0)
        tflite.OperatorAddInputs(b, inputs_offset)
        tflite.OperatorAddOutputs(b, outputs_offset)
        tflite.OperatorAddBuiltinOptionsType(b, tflite.BuiltinOptions.FullyConnectedOptions)
        tflite.OperatorAddBuiltinOptions(b, options)
        return int(tflite.OperatorEnd(b))

    def _tensor_map(self, name: str, index: int) -> int:
        name_offset = self.builder.CreateString(name)
        tflite.TensorMapStart(self.builder)
        tflite.TensorMapAddName(self.builder, name_offset)
        tflite.TensorMapAddTensorIndex(self.builder, index)
        return int(tflite.TensorMapEnd(self.builder))

    def finish(
        self, ops: list[tuple[list[int], int, bool]], graph_in: int, graph_out: int
    ) -> bytes:
        b = self.builder
        buffers = self._table_vector([self._buffer(data) for data in self.buffers])
        tensors = self._table_vector([self._tensor(*spec) for spec in self.tensors])
        operators = self._table_vector([self._fully_connected(*op) for op in ops])
        sub_inputs, sub_outputs = self._int_vector([graph_in]), self._int_vector([graph_out])
        subgraph_name = b.CreateString("main")
        tflite.SubGraphStart(b)
        tflite.SubGraphAddTensors(b, tensors)
        tflite.SubGraphAddInputs(b, sub_inputs)
        tflite.SubGraphAddOutputs(b, sub_outputs)
        tflite.SubGraphAddOperators(b, operators)
        tflite.SubGraphAddName(b, subgraph_name)
        subgraphs = self._table_vector([tflite.SubGraphEnd(b)])

        tflite.OperatorCodeStart(b)
        tflite.OperatorCodeAddDeprecatedBuiltinCode(b, tflite.BuiltinOperator.FULLY_CONNECTED)
        tflite.OperatorCodeAddBuiltinCode(b, tflite.BuiltinOperator.FULLY_CONNECTED)
        tflite.OperatorCodeAddVersion(b, 1)
        opcodes = self._table_vector([tflite.OperatorCodeEnd(b)])

        sig_inputs = self._table_vector([self._tensor_map(self.tensors[graph_in][0], graph_in)])
        sig_outputs = self._table_vector([self._tensor_map(self.tensors[graph_out][0], graph_out)])
        signature_key = b.CreateString("serving_default")
        tflite.SignatureDefStart(b)
        tflite.SignatureDefAddInputs(b, sig_inputs)
        tflite.SignatureDefAddOutputs(b, sig_outputs)
        tflite.SignatureDefAddSignatureKey(b, signature_key)
        tflite.SignatureDefAddSubgraphIndex(b, 0)
        signatures = self._table_vector([tflite.SignatureDefEnd(b)])

        description = b.CreateString(_DESCRIPTION)
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, _SCHEMA_VERSION)
        tflite.ModelAddOperatorCodes(b, opcodes)
        tflite.ModelAddSubgraphs(b, subgraphs)
        tflite.ModelAddDescription(b, description)
        tflite.ModelAddBuffers(b, buffers)
        tflite.ModelAddSignatureDefs(b, signatures)
        b.Finish(tflite.ModelEnd(b), file_identifier=_FILE_IDENTIFIER)
        return bytes(b.Output())


def dense_graph_to_tflite(graph: DenseGraph) -> bytes:
    """Serialize a parsed dense graph as a TFLite flatbuffer (batch 1, batch axis dynamic)."""
    writer = _FlatModelWriter()
    current = writer.add_tensor(graph.input_name, [1, graph.in_features])
    graph_input = current
    ops: list[tuple[list[int], int, bool]] = []
    for index, layer in enumerate(graph.layers):
        out_features, in_features = layer.weight.shape
        weight = writer.add_tensor(
            f"dense_{index}/weight", [out_features, in_features], layer.weight
        )
        bias = writer.add_tensor(f"dense_{index}/bias", [out_features], layer.bias)
        output = writer.add_tensor(layer.output_name, [1, out_features])
        ops.append(([current, weight, bias], output, layer.relu))
        current = output
    return writer.finish(ops, graph_input, current)


def convert_onnx_to_tflite(onnx_path: Path, tflite_path: Path) -> Path:
    """Convert a Gemm/Relu ONNX classifier to ``tflite_path``; tensor names are kept."""
    graph = parse_dense_graph(onnx.load(str(onnx_path)))
    tflite_path.parent.mkdir(parents=True, exist_ok=True)
    tflite_path.write_bytes(dense_graph_to_tflite(graph))
    return tflite_path


def verify_against_onnx(
    onnx_path: Path, tflite_path: Path, x: FloatArray, atol: float = 1e-4
) -> float:
    """Raise :class:`TFLiteMismatchError` unless TFLite matches ORT on ``x``; returns max |diff|."""
    expected = run_onnx(onnx_path, x)
    actual = run_tflite(tflite_path, x)
    if actual.shape != expected.shape or not np.allclose(actual, expected, rtol=0.0, atol=atol):
        raise TFLiteMismatchError(
            f"{tflite_path.name}: outputs differ from ONNX beyond atol={atol} "
            f"(shape {actual.shape} vs {expected.shape})"
        )
    return float(np.max(np.abs(actual - expected)))
