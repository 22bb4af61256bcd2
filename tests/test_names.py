"""Names other code depends on (design.md's jobs, assets, checks, schedules and sensors, the run-queue key,
the backup freshness window) are written once in the product and imported everywhere else; the alert rules,
which cannot import, are checked against the limits they repeat."""

from __future__ import annotations

import ast
import functools
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

import hotpot_orchestration

PRODUCT = Path(hotpot_orchestration.__file__).parent
DEPLOY = PRODUCT.parent / "deploy"
# The public names of design.md (jobs, assets, checks, schedules, sensors), and the run-queue key.
PUBLIC_NAMES = [
    "nightly_backup_job",
    "restore_drill_job",
    "restore_database_job",
    "build_image_job",
    "canary_release_job",
    "blue_green_release_job",
    "rollback_job",
    "postgres_backup",
    "backup_retention",
    "restore_drill",
    "api_image",
    "production_release",
    "nightly_backup_schedule",
    "restore_drill_schedule",
    "age_checks_schedule",
    "new_image_tag_sensor",
    "release_failure_sensor",
    "run_failure_alert_sensor",
    "pipeline_health_sensor",
    "physical_backup",
    "pitr_drill",
    "wal_archive",
    "verified_backup_is_fresh",
    "restore_drill_recent",
    "hotpot/release",
]


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(), str(path))) for path in sorted(PRODUCT.rglob("*.py"))]


def _not_names(module: ast.Module) -> set[int]:
    """Strings that are no Dagster name even when they read like one: dict keys (metadata such as
    `wal_archive`) and `__all__` (Python attribute names)."""
    skipped = set()
    for node in ast.walk(module):
        if isinstance(node, ast.Dict):
            skipped.update(id(key) for key in node.keys if key is not None)
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            skipped.update(id(item) for item in ast.walk(node.value))
    return skipped


@functools.cache
def _written() -> dict[str, list[str]]:
    """Where each exact string constant is written; descriptions and docstrings that mention a name are
    longer strings and do not count."""
    where: dict[str, list[str]] = defaultdict(list)
    for path, module in _modules():
        skipped = _not_names(module)
        for node in ast.walk(module):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skipped:
                where[node.value].append(f"{path.relative_to(PRODUCT)}:{node.lineno}")
    return where


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_each_public_name_is_written_once(name):
    places = _written().get(name, [])
    assert len(places) == 1, f"{name!r} is written {len(places)} times: {places}"


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


def test_the_alert_rules_use_the_checks_limits():
    """Prometheus rules cannot import the limits: they are read back and compared."""
    from hotpot_orchestration.backups.checks import MAX_AGE
    from hotpot_orchestration.restores import MAX_DRILL_AGE

    rules = yaml.safe_load((DEPLOY / "prometheus" / "pipeline-alerts.yml").read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    backup_hours = MAX_AGE // timedelta(hours=1)
    assert f"> {backup_hours} * 3600" in alerts["BackupTooOld"]["expr"]
    assert f"over {backup_hours} hours" in alerts["BackupTooOld"]["annotations"]["summary"]
    assert f"> {MAX_DRILL_AGE.days} * 86400" in alerts["RestoreDrillFailing"]["expr"]
    assert f"for {MAX_DRILL_AGE.days} days" in alerts["RestoreDrillFailing"]["annotations"]["summary"]


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
