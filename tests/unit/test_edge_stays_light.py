"""The edge install stays light: serving never imports torch, sklearn, FastAPI or grpc."""

import subprocess
import sys

HEAVY = ("torch", "sklearn", "fastapi", "grpc", "tensorrt", "matplotlib")


def test_agent_server_and_demo_import_no_heavy_package():
    probe = (
        "import sys, edge_agent.server, edgeserve.cli.demo, edgeserve.cli.main;"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_an_agent_without_a_broker_loads_no_sync_machinery():
    probe = (
        "import sys, edge_agent.server;"
        "print([m for m in ('paho', 'edge_agent.sync.client', "
        "'edge_agent.updates') if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
