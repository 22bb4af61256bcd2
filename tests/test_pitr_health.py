"""Point-in-time recovery in pipeline health: the WAL archive's age and the last pitr_drill's RTO and RPO in
the textfile, from the events the wal_archive check and pitr_drill write to the instance; the
WalArchiveLagging rule on them, checked and unit-tested by promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from hotpot_orchestration.operations.health import render
from hotpot_orchestration.operations.sensors import (
    MetricsTextfileResource,
    pipeline_health_sensor,
    read_health,
)
from hotpot_orchestration.pitr.assets import PHYSICAL, PITR_DRILL, WAL_ARCHIVE
from hotpot_orchestration.pitr.drill import DrillResult
from hotpot_orchestration.settings import load_settings

PROMETHEUS = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
RULES, RULE_TESTS = PROMETHEUS / "pipeline-alerts.yml", PROMETHEUS / "pipeline-alerts.test.yml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    if not Path(PROMTOOL).exists():
        pytest.fail("promtool not found: install the Debian package `prometheus` (make test does this)")
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=60)


def samples(text: str) -> dict[str, float]:
    return {
        name: float(value)
        for name, value in (line.split() for line in text.splitlines() if line and not line.startswith("#"))
        if "{" not in name
    }


def wal_archive_evaluation(passed: bool, age: float, description: str) -> dg.AssetCheckEvaluation:
    """As the wal_archive check records it (its metadata keys)."""
    return dg.AssetCheckEvaluation(
        asset_key=PHYSICAL,
        check_name=WAL_ARCHIVE,
        passed=passed,
        description=description,
        metadata={
            "archive_age_seconds": age,
            "newest_archived_wal": "000000010000000000000041" if age >= 0 else "",
            "failed_count": 0 if passed else 4,
            "last_failed_wal": "" if passed else "000000010000000000000042",
            "current_wal": "000000010000000000000042",
        },
    )


def drill_materialization(rto: float, rpo: float | None) -> dg.AssetMaterialization:
    """As pitr_drill records it: DrillResult's own metadata, None values left out."""
    result = DrillResult(
        backup_id="20260301T010000",
        manifest_key="database/hotpot/2026-03-01/manifest.json",
        restore_point="hotpot-2026-03-01",
        tables=12,
        rows=3400,
        to_restore_point_seconds=rto,
        rpo_seconds=rpo,
    )
    metadata = {name: value for name, value in result.metadata.items() if value is not None}
    return dg.AssetMaterialization(PITR_DRILL, metadata=metadata)


def test_sensor_exports_the_wal_archive_age_and_the_pitr_drills_rto_and_rpo(tmp_path):
    textfile = tmp_path / "hotpot.prom"
    resource = MetricsTextfileResource(path=str(textfile))

    def export(instance) -> dict[str, float]:
        context = dg.build_sensor_context(instance=instance, resources={"metrics_textfile": resource})
        pipeline_health_sensor(context)
        return samples(textfile.read_text())

    with dg.instance_for_test() as instance:
        # Nothing known yet: timestamps 0, values -1, as the other series say "unknown".
        unknown = export(instance)
        assert unknown["hotpot_wal_archive_age_seconds"] == -1
        assert unknown["hotpot_wal_archive_check_passed"] == -1
        assert unknown["hotpot_wal_archive_check_timestamp_seconds"] == 0
        assert unknown["hotpot_pitr_drill_rto_seconds"] == -1
        assert unknown["hotpot_pitr_drill_rpo_seconds"] == -1
        assert unknown["hotpot_pitr_drill_last_success_timestamp_seconds"] == 0

        instance.report_runless_asset_event(wal_archive_evaluation(True, 42.5, "newest ... 42 s old"))
        instance.report_runless_asset_event(drill_materialization(81.3, 0.0))
        healthy = export(instance)
        assert healthy["hotpot_wal_archive_age_seconds"] == 42.5
        assert healthy["hotpot_wal_archive_check_passed"] == 1
        assert healthy["hotpot_pitr_drill_rto_seconds"] == 81.3
        assert healthy["hotpot_pitr_drill_rpo_seconds"] == 0
        drill = instance.get_latest_materialization_event(PITR_DRILL)
        # Every digit of a Unix time (`:g` once rounded it to 10,000 s).
        assert healthy["hotpot_pitr_drill_last_success_timestamp_seconds"] == pytest.approx(drill.timestamp)

        # The latest evaluation counts: a failing one with the archive unlisted (age unknown, -1).
        instance.report_runless_asset_event(wal_archive_evaluation(False, -1.0, "cannot be listed"))
        instance.report_runless_asset_event(drill_materialization(95.0, None))  # RPO unknown
        failing = export(instance)
        assert failing["hotpot_wal_archive_check_passed"] == 0
        assert failing["hotpot_wal_archive_age_seconds"] == -1
        assert failing["hotpot_pitr_drill_rto_seconds"] == 95
        assert failing["hotpot_pitr_drill_rpo_seconds"] == -1
        health = read_health(instance)
        assert failing["hotpot_wal_archive_check_timestamp_seconds"] == health.wal_archive_checked_at
    assert promtool("check", "metrics", stdin=render(health)).returncode == 0


def test_wal_archive_lagging_rule_is_valid_and_fires_on_lag_only():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "alert: WalArchiveLagging" in RULES.read_text()
    # Tied to the limit the wal_archive check (and the release gate) use by default.
    assert load_settings({}).wal_archive_max_age_seconds == 300
    assert "hotpot_wal_archive_age_seconds > 300" in RULES.read_text()
    # Lag after archiving stops fires; an idle server's old segment does not; an unlisted archive and a
    # check that stopped running do.
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
