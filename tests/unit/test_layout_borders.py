"""The layout's promise, checked on the source: each tier imports the shared package,
never another tier, and the shared core imports no tier at all.

The tiers are the four top-level packages of the design card. ``edgeserve`` holds what
they share; of it, only the tooling around the tiers (the CLI, benchmarks, evaluation
stacks and test aids) may reach into them, because that is what it is for.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TIERS = ("edge_agent", "cloud_gateway", "sync", "models")
TOOLING = ("cli", "bench", "eval", "testing")


def imported_packages(path: Path) -> set[tuple[int, str]]:
    """Every top-level package ``path`` imports, wherever the import stands (module level,
    inside a function, under TYPE_CHECKING), with its line."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[tuple[int, str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(node.lineno, alias.name.split(".")[0]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.split(".")[0]))
    return found


def crossings(sources: list[Path], forbidden: set[str]) -> list[str]:
    return [
        f"{path.relative_to(REPO)}:{line} imports {package}"
        for path in sources
        for line, package in sorted(imported_packages(path))
        if package in forbidden
    ]


@pytest.mark.parametrize("tier", TIERS)
def test_a_tier_never_imports_another_tier(tier: str) -> None:
    sources = sorted((REPO / tier).rglob("*.py"))
    assert sources, f"no sources under {tier}/"
    assert crossings(sources, set(TIERS) - {tier}) == []


def test_the_shared_core_imports_no_tier() -> None:
    shared = REPO / "edgeserve"
    sources = [
        path
        for path in sorted(shared.rglob("*.py"))
        if path.relative_to(shared).parts[0] not in TOOLING
    ]
    assert len(sources) > 20
    assert crossings(sources, set(TIERS)) == []


def test_the_border_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from sync.registry import Registry\n    import models.nets\n")
    assert sorted(imported_packages(module)) == [(2, "sync"), (3, "models")]


@pytest.mark.parametrize("package", (*TIERS, "edgeserve"))
def test_every_package_says_what_it_is_for(package: str) -> None:
    docstring = ast.get_docstring(ast.parse((REPO / package / "__init__.py").read_text()))
    assert docstring and len(docstring.split()) >= 15, f"{package}/__init__.py says too little"
