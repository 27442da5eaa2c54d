"""The router's state as Prometheus metrics, read at each scrape (nothing per request)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from edge_agent.router import Router


class RouterCollector(Collector):
    def __init__(self, router: Router) -> None:
        self._router = router

    def collect(self) -> Iterator[Metric]:
        controllers = sorted(self._router.controllers().items())
        families = {
            "threshold": GaugeMetricFamily(
                "edgeserve_agent_router_threshold",
                "The threshold the rate controller routes under now",
                labels=["model"],
            ),
            "target": GaugeMetricFamily(
                "edgeserve_agent_router_target_rate",
                "The escalation rate the device holds",
                labels=["model"],
            ),
            "realised": GaugeMetricFamily(
                "edgeserve_agent_router_escalation_rate",
                "The escalated share of the controller's window of recent requests",
                labels=["model"],
            ),
        }
        for name, controller in controllers:
            families["threshold"].add_metric([name], controller.threshold)
            families["target"].add_metric([name], controller.target)
            families["realised"].add_metric([name], controller.realised_rate)
        yield from families.values()
        yield CounterMetricFamily(
            "edgeserve_agent_router_bank_failures",
            "Reference banks not used: missing, altered or unreadable",
            value=self._router.bank_failures,
        )
