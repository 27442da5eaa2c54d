"""The demo's cloud part: the gateway process, two tenants, batching, refusals, and an
experiment (``demo_experiment``)."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

from cloud_gateway.tenancy import TenantStore
from edgeserve.cli.demo_experiment import show_experiment_demo
from edgeserve.client import NODELAY, metric_value
from edgeserve.eval.stack import CascadeStack
from edgeserve.wire import oip_rest
from edgeserve.wire.tensors import InferRequest, InferTensor

CLOUD_MODEL = "digits-cloud"


def _post(
    http: httpx.Client, key: str | None, model: str, x: npt.NDArray[np.float32]
) -> httpx.Response:
    request = InferRequest(model, [InferTensor.from_numpy("input", x)])
    request.parameters["binary_data_output"] = True
    body, length = oip_rest.encode_request(request, binary=True)
    headers = {"Inference-Header-Content-Length": str(length)}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return http.post(f"/v2/models/{model}/infer", content=body, headers=headers)


def show_cloud(
    console: Console, stack: CascadeStack, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]
) -> None:
    """Tenants 'apps' (all models) and 'limited' (2 req/s, one model) against the gateway."""
    with TenantStore(stack.workdir / "gateway-state" / "tenants.db") as store:
        _, limited = store.add_tenant("limited", ["digits-edge-fp32"], rate_per_s=2, burst=3)
    keys = {"apps": stack.app_key, "limited": limited}
    ports = stack.gateway.ports
    console.rule("5. cloud gateway: OIP v2 over REST and gRPC, tenants, dynamic batching")
    transport = httpx.HTTPTransport(
        socket_options=[NODELAY], limits=httpx.Limits(max_connections=64)
    )
    base = f"http://127.0.0.1:{ports['http']}"
    with httpx.Client(base_url=base, timeout=30, transport=transport) as http:
        _concurrent_load(console, http, keys["apps"], x, y)
        _refusals(console, http, keys, x)
        _batching(console, http)
        show_experiment_demo(console, stack, http, x, y)


def _concurrent_load(
    console: Console,
    http: httpx.Client,
    key: str,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
) -> None:
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        replies = list(
            pool.map(lambda i: _post(http, key, CLOUD_MODEL, x[i : i + 1]), range(len(x)))
        )
    elapsed = time.perf_counter() - started
    correct = 0
    for i, reply in enumerate(replies):
        length = int(reply.headers["Inference-Header-Content-Length"])
        logits = oip_rest.decode_response(reply.content, length).output("logits").data
        correct += int(np.argmax(logits) == y[i])
    console.print(
        f"{len(x)} digits from 32 concurrent clients: accuracy {correct / len(x):.2%} "
        f"(cloud CNN), {len(x) / elapsed:.0f} req/s through the Python client"
    )


def _refusals(
    console: Console, http: httpx.Client, keys: dict[str, str], x: npt.NDArray[np.float32]
) -> None:
    key_id = keys["apps"].split("_")[1]
    wrong_secret = f"es_{key_id}_" + "x" * 43
    cases = [
        ("no API key", None, CLOUD_MODEL),
        ("wrong API key", "es_000000000000_" + "x" * 43, CLOUD_MODEL),
        ("the apps tenant's key id with a wrong secret", wrong_secret, CLOUD_MODEL),
        ("tenant 'limited' calls a model it may not use", keys["limited"], CLOUD_MODEL),
        ("unknown model", keys["apps"], "no-such-model"),
    ]
    table = Table("case", "status", "error")
    for label, key, model in cases:
        reply = _post(http, key, model, x[:1])
        table.add_row(label, str(reply.status_code), reply.json()["error"])
    flood = [_post(http, keys["limited"], "digits-edge-fp32", x[:1]) for _ in range(6)]
    codes = [r.status_code for r in flood]
    last = flood[-1]
    table.add_row(
        "'limited' sends 6 requests at once (2 req/s, burst 3)",
        " ".join(map(str, codes)),
        f"Retry-After: {last.headers.get('Retry-After')}; {last.json().get('error', '')}",
    )
    console.print(table)
    started = time.perf_counter()
    refused = [_post(http, wrong_secret, CLOUD_MODEL, x[:1]).status_code for _ in range(200)]
    each_ms = (time.perf_counter() - started) / len(refused) * 1e3
    console.print(
        f"{refused.count(401)} wrong secrets for a real key id: each refused in "
        f"{each_ms:.2f} ms round trip, before the body is read (keys are stored as "
        "SHA-256 digests: 256 random bits need no slow password hash)"
    )


def _batching(console: Console, http: httpx.Client) -> None:
    text = http.get("/metrics").text
    count = metric_value(text, f'edgeserve_gateway_batch_size_count{{model="{CLOUD_MODEL}"}}')
    rows = metric_value(text, f'edgeserve_gateway_batch_size_sum{{model="{CLOUD_MODEL}"}}')
    if count:
        console.print(
            f"dynamic batching: {int(rows)} requests ran in {int(count)} batches "
            f"(mean {rows / count:.1f} rows per batch)"
        )
