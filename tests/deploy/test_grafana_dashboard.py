"""The Grafana dashboard: every metric it charts is one the running services export.

One real stack per module — a gateway with an agent escalating to it over mTLS, and a
broker, the sync service and an enrolled agent — takes a few requests, then each
/metrics is scraped. A metric that has not been observed yet still declares its family
(``# TYPE``), so it counts as exported; the requests make most of them carry samples.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeserve.client import OipHttpClient
from edgeserve.eval.fleet import FleetStack, start_fleet
from edgeserve.eval.stack import CascadeStack, start_cascade
from tests.deploy.conftest import REPO

pytestmark = pytest.mark.integration

DASHBOARD = REPO / "deploy" / "grafana" / "edgeserve-dashboard.json"
METRIC = re.compile(r"\bedgeserve_[a-z0-9_]*[a-z0-9]\b")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "gauge": ("",),
    "unknown": ("",),
}
ESCALATE_SOME = {"score": "max_probability", "threshold": 0.9, "escalation_model": "digits-cloud"}


def load_dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = list(dashboard["panels"])
    for panel in dashboard["panels"]:
        panels += panel.get("panels", [])
    return panels


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in all_panels(dashboard) for t in p.get("targets", [])]


def exported_names(exposition: str) -> set[str]:
    """Every series name the exposition offers: samples, and the names declared families
    would have (``foo`` counter -> ``foo_total``; histogram -> ``_bucket/_sum/_count``)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names |= {sample.name for sample in family.samples}
        names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return names


@pytest.fixture(scope="module")
def cascade(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CascadeStack]:
    stack = start_cascade(tmp_path_factory.mktemp("cascade"), cache_entries="0")
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetStack]:
    stack = start_fleet(tmp_path_factory.mktemp("fleet"), ["dev-0"], telemetry_interval_s="0.2")
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def scraped(cascade: CascadeStack, fleet: FleetStack, digits: Any) -> dict[str, set[str]]:
    """Names each service exports after a few requests through every tier."""
    x, _ = digits
    with OipHttpClient(cascade.agent_url, timeout=30) as agent:
        agent.set_router_policy("digits-edge", ESCALATE_SOME)
        for row in x[:20]:
            agent.infer("digits-edge", {"input": row[None, :]})
        agent_text = agent.metrics()
    headers = {"Authorization": f"Bearer {cascade.app_key}"}
    with OipHttpClient(cascade.gateway_url, timeout=30, headers=headers) as gateway:
        for row in x[:5]:
            gateway.infer("digits-cloud", {"input": row[None, :]})
        gateway_text = gateway.metrics()
    with OipHttpClient(fleet.agent_url("dev-0"), timeout=30) as device:
        device.infer("digits-edge", {"input": x[:4]})
        device_text = device.metrics()
    sync_text = httpx.get(f"{fleet.admin_url}/metrics", timeout=30).text
    return {
        "gateway": exported_names(gateway_text),
        "agent": exported_names(agent_text) | exported_names(device_text),
        "sync": exported_names(sync_text),
    }


def test_every_charted_metric_is_exported_by_a_running_service(
    scraped: dict[str, set[str]],
) -> None:
    exported = set().union(*scraped.values())
    charted = {name for expr in exprs(load_dashboard()) for name in METRIC.findall(expr)}
    assert charted, "the dashboard charts no edgeserve metric"
    assert sorted(charted - exported) == []


def test_the_dashboard_charts_every_tier(scraped: dict[str, set[str]]) -> None:
    charted = {name for expr in exprs(load_dashboard()) for name in METRIC.findall(expr)}
    for tier, names in scraped.items():
        assert charted & names, f"no panel charts a metric of the {tier}"


def test_requests_made_the_latency_histograms_carry_samples(scraped: dict[str, set[str]]) -> None:
    # The gateway served requests, so its histograms have buckets, not only a TYPE line.
    assert "edgeserve_gateway_request_seconds_bucket" in scraped["gateway"]
    assert "edgeserve_agent_inference_seconds_bucket" in scraped["agent"]


def test_template_variables_query_metrics_that_exist(scraped: dict[str, set[str]]) -> None:
    exported = set().union(*scraped.values())
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    assert {"datasource", "job", "instance", "model"} <= set(variables)
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance", "model"):
        query = variables[name]["query"]["query"]
        pattern = re.search(r'__name__=~"([^"]+)"', query)
        assert pattern is not None, query
        assert any(re.fullmatch(pattern.group(1), metric) for metric in exported), query
        assert query.endswith(f", {name})")


def test_every_query_is_filtered_by_the_job_and_instance_variables() -> None:
    for expr in exprs(load_dashboard()):
        for selector in re.findall(r"edgeserve_\w+\{([^}]*)\}", expr):
            assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, expr
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr


def test_panels_have_unique_ids_and_non_overlapping_grid_positions() -> None:
    dashboard = load_dashboard()
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"panel {panel['id']} overlaps another"
        cells |= area


def test_every_panel_and_query_uses_the_datasource_variable() -> None:
    dashboard = load_dashboard()
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]
    for panel in all_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["refId"]


def test_dashboard_file_is_committed_as_indented_json() -> None:
    text = DASHBOARD.read_text()
    assert text == json.dumps(json.loads(text), indent=2) + "\n"
