"""What a tenant is allowed, and who is asking: ``Tenant`` is stored, ``Principal`` is served.

A ``Tenant`` is a row of the tenant store: the models it may use, its token-bucket rate,
its in-flight cap and its place in the fair queue. A ``Principal`` is what the gateway
core receives once a request has been authenticated: the tenant's allowance plus the
credential that proved it (an API key id or a device id), never the secret itself.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cloud_gateway.scheduler.token_bucket import RateLimit

TenantKind = Literal["app", "device"]
ALL_MODELS = "*"

# Names end up in metrics labels, log lines and file names: keep them boring.
TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A device id is its client certificate's common name, so the same rule plus ':'.
DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class Tenant(BaseModel):
    """One tenant: its allowed models (``'*'`` = all) and its share of the gateway."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=TENANT_NAME.pattern)
    allowed_models: list[str] = Field(min_length=1)
    rate_per_s: float = Field(default=10.0, gt=0)
    burst: float = Field(default=20.0, gt=0)
    max_in_flight: int = Field(default=16, ge=1)
    weight: float = Field(default=1.0, gt=0)
    # 1 is the highest tier, as in the scheduler's FairQueue; lower tiers are opt-in.
    priority_tier: int = Field(default=1, ge=1)
    kind: TenantKind = "app"

    @field_validator("rate_per_s", "burst", "weight")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be finite")
        return value

    @field_validator("allowed_models")
    @classmethod
    def _model_names(cls, names: list[str]) -> list[str]:
        cleaned = [name.strip() for name in names]
        if any(not name for name in cleaned):
            raise ValueError("model names must not be empty")
        return sorted(set(cleaned))

    def can_use(self, model: str) -> bool:
        return ALL_MODELS in self.allowed_models or model in self.allowed_models


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: exactly one of ``key_id`` (API key) or ``device_id`` (mTLS)."""

    tenant: str
    kind: TenantKind
    allowed_models: tuple[str, ...]
    weight: float
    priority_tier: int
    rate_per_s: float
    burst: float
    max_in_flight: int
    key_id: str | None = None
    device_id: str | None = None

    def __post_init__(self) -> None:
        if (self.key_id is None) == (self.device_id is None):
            raise ValueError("a principal has exactly one of key_id and device_id")

    @classmethod
    def for_key(cls, tenant: Tenant, key_id: str) -> Principal:
        return cls._of(tenant, key_id=key_id)

    @classmethod
    def for_device(cls, tenant: Tenant, device_id: str) -> Principal:
        return cls._of(tenant, device_id=device_id)

    @classmethod
    def _of(
        cls, tenant: Tenant, key_id: str | None = None, device_id: str | None = None
    ) -> Principal:
        return cls(
            tenant=tenant.name,
            kind=tenant.kind,
            allowed_models=tuple(tenant.allowed_models),
            weight=tenant.weight,
            priority_tier=tenant.priority_tier,
            rate_per_s=tenant.rate_per_s,
            burst=tenant.burst,
            max_in_flight=tenant.max_in_flight,
            key_id=key_id,
            device_id=device_id,
        )

    @property
    def identity(self) -> str:
        """``tenant/key:<id>`` or ``tenant/device:<id>``, for logs (never a secret)."""
        if self.key_id is not None:
            return f"{self.tenant}/key:{self.key_id}"
        return f"{self.tenant}/device:{self.device_id}"

    @property
    def rate_limit(self) -> RateLimit:
        """The allowance in the scheduler's terms, for ``TenantLimiter``."""
        return RateLimit(self.rate_per_s, self.burst, self.max_in_flight)

    def can_use(self, model: str) -> bool:
        return ALL_MODELS in self.allowed_models or model in self.allowed_models
