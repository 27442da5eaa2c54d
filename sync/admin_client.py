"""The HTTP client of the sync admin API, for the ``edgeserve fleet`` CLI and for tests.

It speaks the routes documented in ``admin_api``, streams artifact uploads from disk with
a progress callback (never reading the whole file into memory), and turns every error
answer back into the ``wire.errors`` type the service raised, so callers handle one
exception tree on both sides of the wire.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from edgeserve.wire.errors import (
    EdgeServeError,
    InternalError,
    InvalidInput,
    ModelNotFound,
    PayloadTooLarge,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    UpdateRefused,
)
from edgeserve.wire.model_card import ModelCard, card_path_for, file_sha256
from sync.config import TOKEN_FILE

DEFAULT_URL = "http://127.0.0.1:8720"
UPLOAD_BLOCK = 256 << 10
Progress = Callable[[int], None]

_BY_STATUS: dict[int, type[EdgeServeError]] = {
    400: InvalidInput,
    401: Unauthenticated,
    403: PermissionDenied,
    404: ModelNotFound,
    409: UpdateRefused,
    413: PayloadTooLarge,
    503: Unavailable,
}


def load_token(token: str | None, token_file: Path | None, state_dir: Path | None) -> str:
    """The admin token: given, else ``EDGESERVE_FLEET_TOKEN``, else the service's file."""
    if token:
        return token
    if env := os.environ.get("EDGESERVE_FLEET_TOKEN"):
        return env
    path = token_file or (state_dir / TOKEN_FILE if state_dir else None)
    if path is None:
        raise Unauthenticated("no admin token: pass --token or --token-file")
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise Unauthenticated(f"cannot read the admin token from {path}: {exc}") from exc


def card_for_upload(artifact: Path, model: str, version: str, card: Path | None) -> ModelCard:
    """The artifact's card, renamed to ``model@version`` and pinned to these exact bytes."""
    card_path = card or card_path_for(artifact)
    if not card_path.is_file():
        raise InvalidInput(f"no model card at {card_path} (pass --card)")
    loaded = ModelCard.load(card_path)
    return loaded.model_copy(
        update={
            "name": model,
            "version": version,
            "file": artifact.name,
            "sha256": file_sha256(artifact),
            "size_bytes": artifact.stat().st_size,
        }
    )


class AdminClient:
    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
        self.url = url

    # -- routes ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return dict(self._request("GET", "/v1/health"))

    def upload(self, artifact: Path, card: ModelCard, progress: Progress | None = None) -> Any:
        encoded = base64.urlsafe_b64encode(card.model_dump_json(exclude_none=True).encode())
        headers = {
            "X-Edgeserve-Card": encoded.decode(),
            "Content-Type": "application/octet-stream",
            "Content-Length": str(artifact.stat().st_size),
        }
        path = f"/v1/models/{card.name}/versions/{card.version}"
        return self._request("PUT", path, content=_read_blocks(artifact, progress), headers=headers)

    def upload_bank(self, card: ModelCard, folder: Path) -> Any:
        """Send the reference bank ``card`` names, from ``folder`` (beside its card)."""
        if card.bank is None:
            return None
        bank = folder / card.bank.file
        if not bank.is_file():
            raise InvalidInput(f"the card names the bank {card.bank.file}, not found in {folder}")
        path = f"/v1/models/{card.name}/versions/{card.version}/bank"
        return self._request("PUT", path, content=bank.read_bytes())

    def versions(self, model: str | None = None) -> Any:
        return self._request("GET", "/v1/models", params=_params(model=model))

    def builds(self) -> Any:
        return self._request("GET", "/v1/builds")

    def start_rollout(self, request: dict[str, Any]) -> Any:
        return self._request("POST", "/v1/rollouts", json=request)

    def rollouts(self) -> Any:
        return self._request("GET", "/v1/rollouts")

    def rollout(self, rollout_id: int) -> Any:
        return self._request("GET", f"/v1/rollouts/{rollout_id}")

    def rollback(self, rollout_id: int, reason: str) -> Any:
        return self._request("POST", f"/v1/rollouts/{rollout_id}/rollback", json={"reason": reason})

    def devices(self, group: str | None = None) -> Any:
        return self._request("GET", "/v1/devices", params=_params(group=group))

    def revoke(self, device_id: str, reason: str) -> Any:
        return self._request("POST", f"/v1/devices/{device_id}/revoke", json={"reason": reason})

    def certs(self) -> Any:
        return self._request("GET", "/v1/certs")

    def approve_cert(self, device_id: str) -> Any:
        return self._request("POST", f"/v1/certs/{device_id}/approve")

    def telemetry(self, model: str | None = None) -> Any:
        return self._request("GET", "/v1/telemetry/summary", params=_params(model=model))

    # -- plumbing -------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unavailable(f"sync service at {self.url} is not reachable: {exc}") from exc
        if response.is_success:
            return response.json()
        raise _error(response)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _error(response: httpx.Response) -> EdgeServeError:
    try:
        message = str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        message = response.text[:300] or response.reason_phrase
    kind = _BY_STATUS.get(response.status_code, InternalError)
    return kind(f"{message} (HTTP {response.status_code})")


def _read_blocks(path: Path, progress: Progress | None) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while block := handle.read(UPLOAD_BLOCK):
            yield block
            if progress is not None:
                progress(len(block))


def _params(**values: str | None) -> dict[str, str]:
    return {key: value for key, value in values.items() if value is not None}
