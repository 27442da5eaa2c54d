"""Seeded generators of malformed OIP v2 requests, for the storm test of every front door.

REST cases are raw HTTP (``HttpCase``): headers, body, and how the body's length lies.
gRPC cases are raw bytes for a method of ``inference.GRPCInferenceService`` (``GrpcCase``),
so nothing on the client side can refuse to send them. Every generator takes a
``random.Random`` and a valid digit row, and returns one case.
"""

from __future__ import annotations

import gzip
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from edgeserve.wire import oip_grpc
from edgeserve.wire.proto import grpc_service_pb2 as pb
from edgeserve.wire.tensors import InferRequest, InferTensor

HUGE = "x" * 100_000
# The longest name a URL carries here: uvicorn's parser refuses a 100,000-byte request line
# itself (a plain 400 the app never sees), so the 100k names travel in bodies.
LONG_PATH_NAME = "x" * 8_000
HUGE_DIM = 2**63 - 1
BAD_SHAPES: list[Any] = [
    [0, HUGE_DIM],
    [HUGE_DIM, 0],
    [2**62, 4],
    [2**32, 2**32],
    [-1, 64],
    [1, -64],
    [1] * 65,
    [0] * 65,
    [1] * 300,
    [1.0, 64],
    ["1", 64],
    [True, 64],
    None,
    "1,64",
    [[1], 64],
    [2**64 - 1, 1],
    {"rows": 1},
]
BAD_DATATYPES: list[Any] = ["FP8", "fp32", "", HUGE, 5, None, ["FP32"], "COMPLEX64", "BF16"]
# Known datatypes with data they cannot hold, or that the model does not take.
WRONG_DATA: list[tuple[str, Any]] = [
    ("INT8", 1000),
    ("UINT8", -1),
    ("FP16", 1e6),
    ("FP32", 1e300),
    ("FP64", 1e300),
    ("INT64", 2**64 - 1),
    ("UINT64", -1),
    ("BOOL", 1),
    ("BYTES", 1),
    ("INT32", 1.5),
    ("FP32", "1.5"),
    ("FP32", True),
    ("FP32", None),
    ("FP16", 70000),
    ("INT8", 1),
]
BAD_PARAMETERS: list[Any] = [
    {"timeout": -1},
    {"timeout": 0},
    {"timeout": "abc"},
    {"timeout": 1e30},
    {"timeout": True},
    {"timeout": [1]},
    {"priority": -1},
    {"priority": "high"},
    {"priority": 1.5},
    {HUGE: -1, "timeout": -5},
    [],
    "fast",
]


@dataclass
class HttpCase:
    """One raw HTTP request. ``length`` is what Content-Length claims (None: the truth);
    a claim longer than the body is followed by closing the write side (a disconnect)."""

    kind: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    model: str | None = None
    length: int | None = None

    @property
    def disconnects(self) -> bool:
        return self.length is not None and self.length > len(self.body)


@dataclass
class GrpcCase:
    kind: str
    payload: bytes
    method: str = "ModelInfer"
    # Codes this case must get, when the test knows them (None: any refusal, or OK).
    expect: tuple[str, ...] | None = None


# -- REST -------------------------------------------------------------------------------


def _tensor(row: np.ndarray, **overrides: Any) -> dict[str, Any]:
    tensor = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row.tolist()}
    tensor.update(overrides)
    return tensor


def _document(row: np.ndarray, **overrides: Any) -> bytes:
    return orjson.dumps({"inputs": [_tensor(row, **overrides)]})


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(7 if depth < 4 else 4)
    if choice == 0:
        return rng.randint(-(2**63), 2**64 - 1)
    if choice == 1:
        return rng.uniform(-1e308, 1e308)
    if choice == 2:
        return rng.choice([None, True, False, "", "FP32", "input"])
    if choice == 3:
        return rng.randbytes(rng.randrange(16)).hex()
    if choice == 4:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["inputs", "name", "shape", "datatype", "data", "parameters", "outputs", "id"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def http_random_bytes(rng: random.Random, row: np.ndarray) -> HttpCase:
    return HttpCase("random-bytes", rng.randbytes(rng.randrange(0, 600)))


def http_random_json(rng: random.Random, row: np.ndarray) -> HttpCase:
    document = _random_json(rng)
    if rng.random() < 0.5:
        document = {"inputs": [_random_json(rng, 1) for _ in range(rng.randrange(1, 3))]}
    return HttpCase("random-json", orjson.dumps(document))


def http_bad_shape(rng: random.Random, row: np.ndarray) -> HttpCase:
    data = rng.choice([[], row.tolist()])
    return HttpCase("bad-shape", _document(row, shape=rng.choice(BAD_SHAPES), data=data))


def http_bad_datatype(rng: random.Random, row: np.ndarray) -> HttpCase:
    if rng.random() < 0.4:
        return HttpCase("bad-datatype", _document(row, datatype=rng.choice(BAD_DATATYPES)))
    datatype, value = rng.choice(WRONG_DATA)
    return HttpCase("wrong-data", _document(row, datatype=datatype, data=[value] * 64))


def http_bad_data(rng: random.Random, row: np.ndarray) -> HttpCase:
    nested: Any = row.tolist()
    for _ in range(100):
        nested = [nested]
    data = rng.choice(
        [
            row.tolist()[:63],
            [*row.tolist(), 1.0],
            [row.tolist()[:40], row.tolist()[40:]],
            {"values": 1},
            "sixty-four floats",
            [None] * 64,
            nested,
            [1, "a", None, [2]] * 16,
        ]
    )
    return HttpCase("bad-data", _document(row, data=data))


def http_huge_names(rng: random.Random, row: np.ndarray) -> HttpCase:
    if rng.random() < 0.5:
        return HttpCase(
            "huge-model-name", _document(row), model=rng.choice([LONG_PATH_NAME, "no-such"])
        )
    return HttpCase("huge-tensor-name", _document(row, name=HUGE))


def http_bad_parameters(rng: random.Random, row: np.ndarray) -> HttpCase:
    if rng.random() < 0.3:
        literal = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999"])
        body = _document(row)[:-1] + b',"parameters":{"timeout":' + literal + b"}}"
        return HttpCase("nan-parameter", body)
    document = orjson.loads(_document(row))
    document["parameters"] = rng.choice(BAD_PARAMETERS)
    return HttpCase("bad-parameters", orjson.dumps(document))


def http_bad_binary(rng: random.Random, row: np.ndarray) -> HttpCase:
    raw = row.astype("<f4").tobytes()
    size = rng.choice([len(raw) - 4, len(raw) + 4, -1, "256", 2**62, 255])
    tensor = _tensor(row, parameters={"binary_data_size": size})
    del tensor["data"]
    header = orjson.dumps({"inputs": [tensor]})
    length = rng.choice(
        [str(len(header)), str(len(header) + len(raw) + 10), "-1", "abc", "9" * 5000, "0"]
    )
    headers = {"Inference-Header-Content-Length": length}
    return HttpCase("bad-binary", header + raw, headers)


def http_bad_encoding(rng: random.Random, row: np.ndarray) -> HttpCase:
    plain = _document(row)
    choice = rng.randrange(5)
    if choice == 0:
        packed = gzip.compress(plain)
        body, encoding = packed[: -rng.randrange(1, 9)], "gzip"
    elif choice == 1:
        body, encoding = rng.randbytes(rng.randrange(1, 300)), "deflate"
    elif choice == 2:
        body, encoding = zlib.compress(plain)[:-3], "deflate"
    elif choice == 3:
        body, encoding = gzip.compress(b"\0" * (5 << 20)), "gzip"  # a bomb past the limit
    else:
        body, encoding = plain, rng.choice(["br", "gzip, deflate", "x" * 300])
    return HttpCase("bad-encoding", body, {"Content-Encoding": encoding})


def http_lying_length(rng: random.Random, row: np.ndarray) -> HttpCase:
    body = _document(row)
    if rng.random() < 0.5:
        return HttpCase("length-too-long", body, length=len(body) + rng.randrange(1, 5000))
    return HttpCase("length-too-short", body, length=rng.randrange(0, len(body)))


HTTP_CASES: list[Callable[[random.Random, np.ndarray], HttpCase]] = [
    http_random_bytes,
    http_random_json,
    http_bad_shape,
    http_bad_datatype,
    http_bad_data,
    http_huge_names,
    http_bad_parameters,
    http_bad_binary,
    http_bad_encoding,
    http_lying_length,
]


# -- gRPC -------------------------------------------------------------------------------


def infer_message(model: str, row: np.ndarray) -> pb.ModelInferRequest:
    request = InferRequest(model, [InferTensor.from_numpy("input", row[None, :])])
    return oip_grpc.request_to_proto(request)


def grpc_random_bytes(rng: random.Random, model: str, row: np.ndarray) -> GrpcCase:
    method = rng.choice(["ModelInfer", "ModelInfer", "ModelMetadata", "ServerLive"])
    return GrpcCase("random-bytes", rng.randbytes(rng.randrange(1, 400)), method)


def grpc_cut_or_flipped(rng: random.Random, model: str, row: np.ndarray) -> GrpcCase:
    raw = bytearray(infer_message(model, row).SerializeToString())
    if rng.random() < 0.5:
        return GrpcCase("truncated", bytes(raw[: rng.randrange(1, len(raw))]))
    for _ in range(rng.randrange(1, 6)):
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    return GrpcCase("bit-flipped", bytes(raw))


def grpc_bad_shape(rng: random.Random, model: str, row: np.ndarray) -> GrpcCase:
    msg = infer_message(model, row)
    shape = rng.choice([[0, HUGE_DIM], [HUGE_DIM, 0], [-1, 64], [1] * 65, [0] * 80, [2**62, 4]])
    del msg.inputs[0].shape[:]
    msg.inputs[0].shape.extend(shape)
    if rng.random() < 0.5:
        msg.raw_input_contents[0] = b""
    return GrpcCase("bad-shape", msg.SerializeToString(), expect=("INVALID_ARGUMENT",))


def grpc_bad_tensor(rng: random.Random, model: str, row: np.ndarray) -> GrpcCase:
    msg = infer_message(model, row)
    tensor = msg.inputs[0]
    choice = rng.randrange(5)
    if choice == 0:
        tensor.datatype = rng.choice(["FP8", "", HUGE, "COMPLEX64"])
    elif choice == 1:
        msg.raw_input_contents[0] = msg.raw_input_contents[0][: rng.randrange(256)]
    elif choice == 2:
        del msg.raw_input_contents[:]
        tensor.datatype = "INT8"
        tensor.contents.int_contents.extend([1000] * 64)
    elif choice == 3:
        tensor.name = HUGE
    else:
        msg.raw_input_contents.append(b"\0" * 4)
    return GrpcCase("bad-tensor", msg.SerializeToString(), expect=("INVALID_ARGUMENT",))


def grpc_bad_parameters(rng: random.Random, model: str, row: np.ndarray) -> GrpcCase:
    msg = infer_message(model, row)
    key, field_name, value = rng.choice(
        [
            ("timeout", "double_param", float("nan")),
            ("timeout", "double_param", float("inf")),
            ("timeout", "double_param", -float("inf")),
            ("timeout", "int64_param", -5),
            ("timeout", "string_param", "soon"),
            ("timeout", "bool_param", True),
            ("priority", "int64_param", -1),
            ("priority", "double_param", float("nan")),
            ("priority", "string_param", HUGE),
        ]
    )
    setattr(msg.parameters[key], field_name, value)
    return GrpcCase("bad-parameters", msg.SerializeToString(), expect=("INVALID_ARGUMENT",))


def grpc_huge_model_name(rng: random.Random, model: str, row: np.ndarray) -> GrpcCase:
    name = rng.choice([HUGE, "no-such-model"])
    return GrpcCase(
        "huge-model-name", infer_message(name, row).SerializeToString(), expect=("NOT_FOUND",)
    )


GRPC_CASES: list[Callable[[random.Random, str, np.ndarray], GrpcCase]] = [
    grpc_random_bytes,
    grpc_cut_or_flipped,
    grpc_bad_shape,
    grpc_bad_tensor,
    grpc_bad_parameters,
    grpc_huge_model_name,
]
