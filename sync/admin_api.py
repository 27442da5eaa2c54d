"""The operators' HTTP API of the sync service: FastAPI, a thin adapter over ``SyncCore``.

Routes (all JSON; every ``/v1`` route except health needs ``Authorization: Bearer <token>``)::

    GET  /v1/health                              liveness + broker connection (no token)
    GET  /metrics                                Prometheus text (no token; bind to loopback)
    PUT  /v1/models/{model}/versions/{version}   upload an artifact: the body is the raw
                                                 bytes, the model card is base64url JSON in
                                                 the ``X-Edgeserve-Card`` header
    GET  /v1/models[?model=M]                    registered versions
    POST /v1/rollouts                            start a rollout (``RolloutRequest``)
    GET  /v1/rollouts                            every rollout
    GET  /v1/rollouts/{id}                       one rollout with its devices
    POST /v1/rollouts/{id}/rollback              roll it back (``{"reason": "..."}``)
    GET  /v1/devices[?group=G]                   the fleet as devices report it, with
                                                 each one's certificate expiry
    POST /v1/devices/{device}/revoke             revoke it (``{"reason": "..."}``): CRL,
                                                 broker password removed, broker reloaded
    GET  /v1/certs                               device certificates and pending requests
    POST /v1/certs/{device}/approve              sign a device's pending renewal
    GET  /v1/telemetry/summary[?model=M]         per-version request statistics

The token is generated on first start: its sha256 is kept in the state directory and the
token itself is written once to a 0600 file for the CLI. A random 256-bit token needs no
slow hash (there is nothing to brute-force), so sha256 with a constant-time compare is
enough. Every ``EdgeServeError`` becomes ``{"error": message}`` with its HTTP status in
``_error_response`` and nowhere else.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeserve.durable import write_private
from edgeserve.http_errors import route_errors
from edgeserve.runtimes.onnx_files import ONE_FILE_FIX, MalformedOnnx, external_data_locations
from edgeserve.wire.errors import (
    EdgeServeError,
    IntegrityError,
    InvalidInput,
    PayloadTooLarge,
    Unauthenticated,
)
from edgeserve.wire.manifest import MAX_INLINE_BANK
from edgeserve.wire.model_card import ModelCard
from sync.artifacts import ArtifactStore
from sync.config import TOKEN_FILE, TOKEN_HASH_FILE, SyncConfig
from sync.core import CoreThread
from sync.gate import GateKind
from sync.metrics import SyncMetrics
from sync.rollout import RolloutSpec

log = logging.getLogger(__name__)
CARD_HEADER = "x-edgeserve-card"
MAX_CARD_HEADER = 16 << 10
V = TypeVar("V")


@dataclass
class AdminState:
    config: SyncConfig
    core: CoreThread
    store: ArtifactStore
    metrics: SyncMetrics
    token_sha256: str
    broker_connected: Callable[[], bool]


class RolloutRequest(BaseModel):
    """``POST /v1/rollouts``; omitted policy fields take the service's configured defaults."""

    model_config = ConfigDict(extra="forbid")

    model: str
    version: str
    group: str | None = None
    canary: int | float = Field(1, description="devices (int) or a fraction in (0, 1)")
    stages: list[float] | None = Field(None, description="fractions after the canary")
    promote_after_healthy: int | None = None
    soak_s: float | None = Field(None, ge=0)
    max_failures: int | None = Field(None, ge=0)
    max_failure_rate: float | None = Field(None, ge=0, le=1)
    max_error_rate: float | None = Field(None, ge=0, le=1)
    gate: GateKind = Field("threshold", description="threshold, or sequential (sync.gate)")
    gate_min_requests: int = Field(100, ge=1, description="per cohort before a test decides")
    gate_margin_agreement: float = Field(0.05, ge=0, lt=1)
    gate_margin_escalation: float = Field(0.05, ge=0, lt=1)

    def to_spec(self, config: SyncConfig) -> RolloutSpec:
        return RolloutSpec(
            model=self.model,
            version=self.version,
            group=self.group,
            canary=self.canary,
            stages=self.stages or list(config.rollout_stages),
            promote_after_healthy=self.promote_after_healthy,
            soak_s=_default(self.soak_s, config.rollout_soak_s),
            max_failures=_default(self.max_failures, config.rollout_max_failures),
            max_failure_rate=_default(self.max_failure_rate, config.rollout_max_failure_rate),
            max_error_rate=_default(self.max_error_rate, config.rollout_max_error_rate),
            gate=self.gate,
            gate_min_requests=self.gate_min_requests,
            gate_margin_agreement=self.gate_margin_agreement,
            gate_margin_escalation=self.gate_margin_escalation,
        )


class RollbackRequest(BaseModel):
    reason: str = "manual rollback"


class RevokeRequest(BaseModel):
    reason: str = Field("revoked by the operator", max_length=500)


def _default(value: V | None, fallback: V) -> V:
    return fallback if value is None else value


# -- the admin token ----------------------------------------------------------------------


def ensure_admin_token(state_dir: Path) -> str:
    """The stored sha256 of the admin token; on first start make one and write it (0600)."""
    hash_path = state_dir / TOKEN_HASH_FILE
    if hash_path.is_file():
        return hash_path.read_text().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    token = "esa_" + secrets.token_urlsafe(32)
    write_private(state_dir / TOKEN_FILE, (token + "\n").encode())
    digest = _sha256(token)
    write_private(hash_path, (digest + "\n").encode())
    log.info("admin token created", extra={"file": str(state_dir / TOKEN_FILE)})
    return digest


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- dependencies -------------------------------------------------------------------------


def _state(request: Request) -> AdminState:
    state: AdminState = request.app.state.admin
    return state


State = Annotated[AdminState, Depends(_state)]


async def _authorized(request: Request, state: State) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("missing bearer token (Authorization: Bearer <admin token>)")
    if not hmac.compare_digest(_sha256(token.strip()), state.token_sha256):
        raise Unauthenticated("the admin token is not valid")


router = APIRouter(prefix="/v1", dependencies=[Depends(_authorized)])


def create_admin_app(state: AdminState) -> FastAPI:
    app = FastAPI(title="edgeserve sync admin", version="v1", docs_url="/docs")
    app.state.admin = state
    app.include_router(router)

    async def _error_response(request: Request, exc: EdgeServeError) -> Response:
        log.log(
            logging.ERROR if exc.code.http_status >= 500 else logging.WARNING,
            "admin request refused",
            extra={"path": request.url.path, "code": exc.code.label, "reason": exc.message},
        )
        return JSONResponse({"error": exc.message}, exc.code.http_status)

    route_errors(app, _error_response)

    @app.get("/v1/health")
    async def health(state: State) -> dict[str, Any]:
        return {"status": "ok", "broker_connected": state.broker_connected()}

    @app.get("/metrics")
    async def metrics(state: State) -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    return app


def _json(value: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(jsonable_encoder(value), status)


# -- routes -------------------------------------------------------------------------------


@router.put("/models/{model}/versions/{version}")
async def upload_version(model: str, version: str, request: Request, state: State) -> Response:
    card = _card_from_header(request, model, version)
    # Before a byte of the body is read: an immutable version is refused at once.
    await state.core.call(lambda core: core.check_new_version(card, card.sha256))
    declared = int(request.headers.get("content-length") or 0)
    if declared > state.config.max_artifact_bytes:
        raise PayloadTooLarge(f"artifact of {declared} bytes is over the upload limit")
    sha = await state.store.put_artifact_stream(request.stream(), state.config.max_artifact_bytes)
    size = state.store.artifact_path(sha).stat().st_size
    if (sha, size) != (card.sha256, card.size_bytes):
        raise IntegrityError(
            f"uploaded bytes (sha256 {sha[:12]}, {size} B) do not match the card "
            f"(sha256 {card.sha256[:12]}, {card.size_bytes} B)"
        )
    if card.format == "onnx":
        await asyncio.to_thread(_refuse_external_data, state.store.artifact_path(sha), card)
    golden_inputs = await _ensure_self_test(state.store, card, sha)
    row = await state.core.call(lambda core: core.register_version(card, sha))
    body = {
        "model": row.model,
        "version": row.version,
        "sha256": row.sha256,
        "size": row.size,
        "format": row.format,
        "golden_inputs": golden_inputs,
    }
    return _json(body, 201)


def _refuse_external_data(artifact: Path, card: ModelCard) -> None:
    """Agents serve one-file models only (the hash covers every weight): refuse here, with
    the fix, rather than on every device after the download."""
    try:
        locations = external_data_locations(artifact)
    except MalformedOnnx:
        return  # not an ONNX protobuf: the self-test's own load error says more
    if locations:
        raise InvalidInput(
            f"{card.file} keeps its weights in other files ({', '.join(locations)}) that "
            "agents do not take; " + ONE_FILE_FIX.format(name=card.file)
        )


def _card_from_header(request: Request, model: str, version: str) -> ModelCard:
    encoded = request.headers.get(CARD_HEADER)
    if not encoded:
        raise InvalidInput(f"the model card must be sent base64url-encoded in {CARD_HEADER}")
    if len(encoded) > MAX_CARD_HEADER:
        raise PayloadTooLarge(f"{CARD_HEADER} is over {MAX_CARD_HEADER} bytes")
    try:
        card = ModelCard.model_validate_json(base64.urlsafe_b64decode(encoded))
    except (binascii.Error, ValueError, ValidationError) as exc:
        raise InvalidInput(f"{CARD_HEADER} is not a base64url model card: {exc}") from exc
    if (card.name, card.version) != (model, version):
        raise InvalidInput(
            f"the card names {card.name} v{card.version}, the path {model} v{version}"
        )
    return card


async def _ensure_self_test(store: ArtifactStore, card: ModelCard, sha: str) -> int:
    """Golden vectors for the artifact, computed off the loop; how many input tensors."""
    from sync.golden import compute_self_test

    existing = store.self_test(sha)
    if existing is None:
        try:
            existing = await asyncio.to_thread(compute_self_test, card, store.artifact_path(sha))
        except EdgeServeError as exc:
            raise InvalidInput(f"the artifact does not run as its card says: {exc}") from exc
        store.save_self_test(sha, existing)
    return len(existing.inputs)


@router.put("/models/{model}/versions/{version}/bank")
async def upload_bank(model: str, version: str, request: Request, state: State) -> Response:
    declared = int(request.headers.get("content-length") or 0)
    if declared > MAX_INLINE_BANK:
        raise PayloadTooLarge(
            f"a bank of {declared} bytes is over {MAX_INLINE_BANK}: rebuild it with a "
            "smaller per-class cap (it travels inside the signed manifest)"
        )
    data = b""
    async for block in request.stream():
        data += block
        if len(data) > MAX_INLINE_BANK:
            raise PayloadTooLarge(f"the bank is over {MAX_INLINE_BANK} bytes")
    sha = await state.core.call(lambda core: core.add_bank(model, version, data))
    return _json({"model": model, "version": version, "bank_sha256": sha}, 201)


@router.get("/models")
async def list_versions(state: State, model: str | None = None) -> Response:
    return _json(await state.core.call(lambda core: core.versions(model)))


@router.post("/rollouts")
async def start_rollout(body: RolloutRequest, state: State) -> Response:
    spec = body.to_spec(state.config)
    return _json(await state.core.call(lambda core: core.start_rollout(spec)), 201)


@router.get("/rollouts")
async def list_rollouts(state: State) -> Response:
    return _json(await state.core.call(lambda core: core.rollouts()))


@router.get("/builds")
async def list_builds(state: State) -> Response:
    return _json(await state.core.call(lambda core: core.builds()))


@router.get("/rollouts/{rollout_id}")
async def show_rollout(rollout_id: int, state: State) -> Response:
    return _json(await state.core.call(lambda core: core.rollout(rollout_id)))


@router.post("/rollouts/{rollout_id}/rollback")
async def rollback_rollout(
    rollout_id: int, state: State, body: RollbackRequest | None = None
) -> Response:
    reason = (body or RollbackRequest()).reason
    return _json(await state.core.call(lambda core: core.rollback(rollout_id, reason)))


@router.get("/devices")
async def list_devices(state: State, group: str | None = None) -> Response:
    return _json(await state.core.call(lambda core: core.device_views(group)))


@router.post("/devices/{device_id}/revoke")
async def revoke_device(
    device_id: str, state: State, body: RevokeRequest | None = None
) -> Response:
    reason = (body or RevokeRequest()).reason
    status = await state.core.call(lambda core: core.revoke_device(device_id, reason))
    return _json(status.as_dict())


@router.get("/certs")
async def list_certs(state: State) -> Response:
    statuses = await state.core.call(lambda core: core.cert_statuses())
    return _json([status.as_dict() for status in statuses])


@router.post("/certs/{device_id}/approve")
async def approve_cert(device_id: str, state: State) -> Response:
    status = await state.core.call(lambda core: core.approve_cert(device_id))
    return _json(status.as_dict())


@router.get("/telemetry/summary")
async def telemetry_summary(state: State, model: str | None = None) -> Response:
    return _json(await state.core.call(lambda core: core.telemetry_summary(model)))
