"""Escalation: how the edge agent asks the cloud gateway about a request it is unsure of.

``EscalationClient`` sends one request through a ``CloudTransport`` within a time budget,
behind a ``CircuitBreaker`` and a cap on concurrent escalations, and returns either the
cloud's answer or a degraded reason — it never raises for cloud problems, so the agent
can always fall back to its local answer. ``GrpcCloudTransport`` (OIP v2 over gRPC with
the device's mTLS certificate) is imported only when first used, because the edge
install does not carry grpc unless escalation is configured; ``InMemoryCloudTransport``
stands in for it in unit tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edge_agent.escalation.breaker import (
    BreakerState,
    BreakerTransitions,
    CircuitBreaker,
)
from edge_agent.escalation.client import (
    MIN_BUDGET_S,
    DegradedReason,
    EscalationClient,
    EscalationOutcome,
    EscalationStats,
)
from edge_agent.escalation.transport import (
    CloudTransport,
    InMemoryCloudTransport,
    TlsFiles,
)

if TYPE_CHECKING:
    from edge_agent.escalation.grpc_transport import GrpcCloudTransport

__all__ = [
    "MIN_BUDGET_S",
    "BreakerState",
    "BreakerTransitions",
    "CircuitBreaker",
    "CloudTransport",
    "DegradedReason",
    "EscalationClient",
    "EscalationOutcome",
    "EscalationStats",
    "GrpcCloudTransport",
    "InMemoryCloudTransport",
    "TlsFiles",
]


def __getattr__(name: str) -> Any:
    # grpc is heavy and optional on the edge: import it only when the transport is asked for.
    if name == "GrpcCloudTransport":
        from edge_agent.escalation.grpc_transport import GrpcCloudTransport

        return GrpcCloudTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
