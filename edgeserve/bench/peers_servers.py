"""The peer servers of ``edgeserve bench peers``, as one standalone program.

``naive``: what a user writes first — FastAPI on uvicorn (one process), a sync ``def``
route (FastAPI runs it in its threadpool) that parses the OIP v2 JSON body, calls
``session.run`` and returns OIP JSON. No batching, JSON only.

``pytriton``: NVIDIA PyTriton — Triton's C++ HTTP/gRPC front doors and dynamic batcher
in front of an ``@batch`` onnxruntime callable (``max_batch_size`` 64, Triton's default
queue delay). It runs in its own Python 3.13 venv (PyTriton's stub fails on 3.11.7), so
this file imports only the standard library at module level and is started as
``python -I peers_servers.py`` (``-I``: the folder of this file must not shadow modules).

Every ONNX session gets one intra-op and one inter-op thread, as the gateway's model
configs do, so the contenders differ in their serving path and not in kernel threading.
Each server writes ``{"http": port, ...}`` to ``--port-file`` once it answers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import socket
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

MAX_BATCH = 64


def _session(path: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _models(specs: Sequence[str]) -> dict[str, str]:
    """``name=path`` pairs from the command line."""
    return dict(spec.split("=", 1) for spec in specs)


def _write_ports(path: Path, ports: dict[str, int]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(ports))
    temporary.replace(path)  # the harness must never read a half-written file


# -- naive FastAPI --------------------------------------------------------------------------


def naive_app(models: dict[str, str], on_ready: Any = None) -> Any:
    import numpy as np
    from fastapi import FastAPI, HTTPException

    sessions = {name: _session(path) for name, path in models.items()}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if on_ready is not None:
            on_ready()
        yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/v2/models/{name}/infer")
    def infer(name: str, body: dict[str, Any]) -> dict[str, Any]:
        if name not in sessions:
            raise HTTPException(404, f"unknown model {name}")
        tensor = body["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        (y,) = sessions[name].run(None, {tensor["name"]: x})
        output = {"name": "logits", "datatype": "FP32", "shape": list(y.shape)}
        return {"model_name": name, "outputs": [{**output, "data": y.ravel().tolist()}]}

    return app


def serve_naive(models: dict[str, str], port_file: Path) -> None:
    import uvicorn

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    app = naive_app(models, lambda: _write_ports(port_file, {"http": port}))
    # uvicorn handles SIGTERM itself: it stops accepting and drains.
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run([listener])


# -- PyTriton -------------------------------------------------------------------------------


def _triton_infer(session: Any) -> Any:
    """An ``@batch`` callable: Triton's batcher stacks requests, one ``session.run`` a batch."""

    def infer(input: Any) -> dict[str, Any]:  # Triton passes inputs by their names
        return {"logits": session.run(["logits"], {"input": input})[0]}

    return importlib.import_module("pytriton.decorators").batch(infer)


def serve_pytriton(models: dict[str, str], port_file: Path, ports: dict[str, int]) -> None:
    import numpy as np

    # Imported by name: PyTriton lives only in its own venv, not where mypy runs.
    config = importlib.import_module("pytriton.model_config")
    triton_module = importlib.import_module("pytriton.triton")
    stop = threading.Event()
    # Signals can only be handled on the main thread; a SIGTERM here lets Triton clean up.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server_config = triton_module.TritonConfig(
        http_address="127.0.0.1",
        http_port=ports["http"],
        grpc_address="127.0.0.1",
        grpc_port=ports["grpc"],
        metrics_port=ports["metrics"],
        log_verbose=0,
    )
    with triton_module.Triton(config=server_config) as triton:
        for name, path in models.items():
            triton.bind(
                model_name=name,
                infer_func=_triton_infer(_session(path)),
                inputs=[config.Tensor(name="input", dtype=np.float32, shape=(64,))],
                outputs=[config.Tensor(name="logits", dtype=np.float32, shape=(10,))],
                config=config.ModelConfig(
                    max_batch_size=MAX_BATCH, batcher=config.DynamicBatcher()
                ),
                strict=True,
            )
        triton.run()
        _write_ports(port_file, ports)
        while not stop.wait(1.0) and triton.is_alive():
            pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("server", choices=("naive", "pytriton"))
    parser.add_argument("--model", action="append", required=True, help="name=path.onnx")
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--ports", default="{}", help="pytriton: JSON {http, grpc, metrics}")
    args = parser.parse_args(argv)
    models = _models(args.model)
    if args.server == "naive":
        serve_naive(models, args.port_file)
    else:
        serve_pytriton(models, args.port_file, json.loads(args.ports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
