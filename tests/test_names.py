"""Names that several modules use (assets, jobs, the run-queue limit key, the backup freshness window) are
written once in the product and imported everywhere else."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

import hotpot_orchestration

PRODUCT = Path(hotpot_orchestration.__file__).parent
SHARED_NAMES = [
    "postgres_backup",
    "verified_backup_is_fresh",
    "restore_drill",
    "restore_drill_recent",
    "restore_drill_job",
    "canary_release_job",
    "blue_green_release_job",
    "rollback_job",
    "production_release",
    "hotpot/release",
]


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(), str(path))) for path in sorted(PRODUCT.rglob("*.py"))]


def test_shared_names_are_written_once():
    """Exact string constants only: descriptions and docstrings that mention a name do not count."""
    written: Counter = Counter()
    where: dict[str, list[str]] = {}
    for path, module in _modules():
        for node in ast.walk(module):
            if isinstance(node, ast.Constant) and node.value in SHARED_NAMES:
                written[node.value] += 1
                where.setdefault(node.value, []).append(f"{path.relative_to(PRODUCT)}:{node.lineno}")
    for name in SHARED_NAMES:
        assert written[name] == 1, f"{name!r} is written {written[name]} times: {where.get(name)}"


def test_the_backup_freshness_window_is_defined_once():
    windows = [
        f"{path.relative_to(PRODUCT)}:{node.lineno}"
        for path, module in _modules()
        for node in ast.walk(module)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == "timedelta"
        and any(ast.unparse(keyword) == "hours=26" for keyword in node.keywords)
    ]
    assert len(windows) == 1, windows


@pytest.mark.parametrize(
    "module",
    [
        "hotpot_orchestration.release.image",
        "hotpot_orchestration.release.rollout.releases",
        "hotpot_orchestration.operations",
        "hotpot_orchestration.restores",
        "hotpot_orchestration.backups.checks",
    ],
)
def test_each_module_imports_on_its_own_without_a_cycle(module):
    """Each module first in a fresh interpreter: an import cycle would fail on a partly initialised one."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
