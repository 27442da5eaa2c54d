"""The container files, read with a real Dockerfile parser (no Docker engine runs here).

Each image must be buildable from what the build context holds, run as a non-root user,
start a command the CLI really has, install extras that exist, and expose the ports the
services listen on by default.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import BaseModel

from tests.deploy.conftest import REPO

dockerfile_parse = pytest.importorskip("dockerfile_parse", reason="the 'deploy' extra lacks it")

DOCKER = REPO / "deploy" / "docker"
IMAGES = {
    # image: (service, ports it must expose, health route)
    "gateway": ("gateway", {8000, 8001, 8002}, "/v2/health/ready"),
    "sync": ("sync", {8720}, "/v1/health"),
    "agent": ("agent", {8710}, "/v2/health/ready"),
}
EXTRAS = {
    "gateway": {"cloud", "cpu", "gpu"},
    "sync": {"sync", "cpu"},
    "agent": {"edge", "cpu", "escalation", "fleet"},
}
# Both write the `onnxruntime` module: one pip install naming both breaks the image.
RUNTIME_EXTRAS = {"cpu", "gpu"}
CHART_UID = 10001


@dataclass
class Stage:
    line: str
    instructions: list[dict[str, Any]]

    def values(self, instruction: str) -> list[str]:
        return [i["value"] for i in self.instructions if i["instruction"] == instruction]


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def expand(self, text: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.args.get(m.group(1), m.group(0)), text)


def load(image: str) -> Dockerfile:
    parser = dockerfile_parse.DockerfileParser(str(DOCKER / f"{image}.Dockerfile"))
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            stages.append(Stage(item["value"], []))
        elif stages:
            stages[-1].instructions.append(item)
        elif item["instruction"] == "ARG" and "=" in item["value"]:
            name, _, default = item["value"].partition("=")
            args[name] = default
    return Dockerfile(args, stages)


def exec_form(value: str) -> list[str]:
    words = json.loads(value)
    assert isinstance(words, list), f"not exec form: {value}"
    return words


def dockerignore_allows(path: str) -> bool:
    """Whether the repository's allow-list .dockerignore lets ``path`` into the context."""
    rules = (REPO / ".dockerignore").read_text().splitlines()
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert "*" in rules, ".dockerignore is expected to start from '*' (an allow-list)"
    return path.split("/")[0] in allowed


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_every_copy_source_is_in_the_repository_and_the_build_context(image: str) -> None:
    dockerfile = load(image)
    copies = [v for stage in dockerfile.stages for v in stage.values("COPY")]
    assert copies
    for value in copies:
        if value.startswith("--from"):
            continue
        *sources, _ = value.split()
        for source in sources:
            assert (REPO / source).exists(), f"{image}: COPY {source} does not exist"
            assert dockerignore_allows(source), f"{image}: .dockerignore drops {source}"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_final_stage_runs_as_the_charts_non_root_uid(image: str) -> None:
    users = load(image).final.values("USER")
    assert users, f"{image}: no USER in the final stage"
    uid, _, gid = users[-1].partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert int(uid) == CHART_UID and int(gid) == CHART_UID


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_entrypoint_is_a_command_of_the_edgeserve_cli(image: str) -> None:
    final = load(image).final
    entrypoint = exec_form(final.values("ENTRYPOINT")[-1])
    command = exec_form(final.values("CMD")[-1])
    assert entrypoint == ["edgeserve"]
    assert command == [IMAGES[image][0], "run"]
    result = subprocess.run(
        [sys.executable, "-m", "edgeserve", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_installed_extras_exist_in_pyproject(image: str) -> None:
    declared = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    runs = " ".join(load(image).final.values("RUN"))
    # "$(ls /wheels/edgeserve-*.whl)[edge]", "${wheel}[cloud]" or ".[sync]"
    groups = re.findall(r"(?:\.whl\)|\}|\.)\[([a-z,]+)\]", runs)
    installed = {extra for group in groups for extra in group.split(",")}
    assert installed == EXTRAS[image]
    assert installed <= declared


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_each_install_names_at_most_one_onnx_runtime(image: str) -> None:
    runs = " ".join(load(image).final.values("RUN"))
    groups = re.findall(r"(?:\.whl\)|\}|\.)\[([a-z,]+)\]", runs)
    assert groups
    for group in groups:
        assert len(RUNTIME_EXTRAS & set(group.split(","))) <= 1, group
    assert "pip uninstall" not in runs  # no image repairs a runtime installed twice


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_exposed_ports_are_the_services_default_ports(image: str) -> None:
    exposed = {int(p) for v in load(image).final.values("EXPOSE") for p in v.split()}
    assert exposed == IMAGES[image][1]
    assert exposed == default_ports(IMAGES[image][0])


def default_ports(service: str) -> set[int]:
    if service == "gateway":
        from cloud_gateway.config import GatewayConfig

        fields = GatewayConfig.model_fields
        names = ("http_port", "grpc_port", "grpc_mtls_port")
        return {fields[name].default for name in names}
    if service == "sync":
        from sync.config import SyncConfig

        return {SyncConfig.model_fields["admin_port"].default}
    from edge_agent.config import AgentConfig

    return {AgentConfig.model_fields["port"].default}


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_healthcheck_asks_a_real_health_route_on_an_exposed_port(image: str) -> None:
    final = load(image).final
    check = final.values("HEALTHCHECK")[-1]
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]+)", check)
    assert match is not None, check
    assert int(match.group(1)) in IMAGES[image][1]
    assert match.group(2) == IMAGES[image][2]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_env_settings_are_real_config_fields(image: str) -> None:
    service = IMAGES[image][0]
    prefix = f"EDGESERVE_{service.upper()}_"
    fields = config_fields(service)
    env = " ".join(load(image).final.values("ENV"))
    names = re.findall(rf"{prefix}(\w+)=", env)
    assert names, f"{image}: no {prefix}* setting"
    assert {name.lower() for name in names} <= fields


def config_fields(service: str) -> set[str]:
    from cloud_gateway.config import GatewayConfig
    from edge_agent.config import AgentConfig
    from sync.config import SyncConfig

    classes: dict[str, type[BaseModel]] = {
        "gateway": GatewayConfig,
        "sync": SyncConfig,
        "agent": AgentConfig,
    }
    return set(classes[service].model_fields)


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_images_are_multi_stage_on_pinned_base_tags(image: str) -> None:
    dockerfile = load(image)
    assert any("pip wheel" in run for run in dockerfile.stages[0].values("RUN"))
    assert len(dockerfile.stages) >= 2
    for stage in dockerfile.stages:
        words = [w for w in stage.line.split(" AS ")[0].split() if not w.startswith("--")]
        base = dockerfile.expand(words[-1])
        if base.startswith("base-"):
            continue  # another stage of this file
        name, _, tag = base.rpartition(":")
        assert name and tag and tag != "latest", f"{image}: base {base} is not pinned by tag"
    assert dockerfile.args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"


def test_gateway_gpu_variant_uses_a_cuda_base_and_the_gpu_extra() -> None:
    dockerfile = load("gateway")
    assert dockerfile.args["VARIANT"] == "cpu"
    assert dockerfile.args["CUDA_IMAGE"].startswith("nvidia/cuda:")
    assert any(s.line.startswith("${CUDA_IMAGE} AS base-gpu") for s in dockerfile.stages)
    assert '[cloud,gpu]"' in " ".join(dockerfile.final.values("RUN"))


def test_agent_image_targets_arm64_with_a_jetson_variant() -> None:
    dockerfile = load("agent")
    assert dockerfile.args["TARGETPLATFORM"] == "linux/arm64"
    bases = [s.line for s in dockerfile.stages if " AS base-" in s.line]
    assert bases and all(line.startswith("--platform=$TARGETPLATFORM ") for line in bases)
    assert dockerfile.args["JETSON_IMAGE"].startswith("nvcr.io/nvidia/l4t-")
    assert any(line.endswith("AS base-jetson") for line in bases)
