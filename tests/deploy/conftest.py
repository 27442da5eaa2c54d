"""Shared fixtures of the deployment-file tests: the chart rendered by real Helm."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "edgeserve"
RELEASE = "es"
NAMESPACE = "edge"

Manifest = dict[str, Any]
Render = Callable[[dict[str, Any]], list[Manifest]]


def render_chart(values: dict[str, Any]) -> list[Manifest]:
    """Every object the chart renders for ``values`` (NOTES.txt left out)."""
    helm = pytest.importorskip("helm_python", reason="the 'deploy' extra is not installed")
    chart = helm.Chart.load(CHART)
    try:
        files = chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    finally:
        chart.close()
    manifests: list[Manifest] = []
    for path, text in sorted(files.items()):
        if path.endswith(".yaml"):
            manifests += [doc for doc in yaml.safe_load_all(text) if doc]
    return manifests


@pytest.fixture(scope="session")
def render() -> Render:
    return render_chart


def find(manifests: list[Manifest], kind: str, component: str | None = None) -> list[Manifest]:
    """Objects of ``kind``, optionally only those labelled with ``component``."""
    return [
        m
        for m in manifests
        if m["kind"] == kind
        and (
            component is None
            or m["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        )
    ]


def one(manifests: list[Manifest], kind: str, component: str | None) -> Manifest:
    found = find(manifests, kind, component)
    assert len(found) == 1, f"expected one {kind} for {component}, got {len(found)}"
    return found[0]
