"""Pipeline health export: the textfile, its format (checked by promtool) and the alert rules on it."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
import uuid
from pathlib import Path

import dagster as dg
import pytest

from hotpot_orchestration.definitions import build_definitions
from hotpot_orchestration.operations.health import PipelineHealth, render
from hotpot_orchestration.operations.sensors import MetricsTextfileResource, pipeline_health_sensor
from hotpot_orchestration.settings import load_settings

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "pipeline-alerts.yml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    if not Path(PROMTOOL).exists():
        pytest.fail("promtool not found: install the Debian package `prometheus` (make test does this)")
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_rendered_metrics_pass_promtool():
    text = render(PipelineHealth(1_700_000_000.0, 1_699_990_000.0, True, "running", "canary_release_job"))
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hotpot_backup_last_success_timestamp_seconds 1700000000.0" in text
    assert 'hotpot_release_state{state="running",job="canary_release_job"} 1' in text
    assert 'hotpot_release_state{state="failed",job="canary_release_job"} 0' in text


def test_alert_rules_are_valid_and_fire_when_they_should(tmp_path):
    assert promtool("check", "rules", str(RULES)).returncode == 0
    # Backup taken at t=0, drill passed at t=0; at 27 h the backup is too old, the drill is still fine;
    # at 9 days the drill alert fires too.
    tests = tmp_path / "pipeline-alerts.test.yml"
    tests.write_text(
        textwrap.dedent(
            f"""
            rule_files: [{RULES}]
            evaluation_interval: 5m
            tests:
              - interval: 5m
                input_series:
                  - series: hotpot_backup_last_success_timestamp_seconds
                    values: '0+0x3000'
                  - series: hotpot_restore_drill_last_success_timestamp_seconds
                    values: '0+0x3000'
                  - series: hotpot_restore_drill_last_passed
                    values: '1+0x3000'
                  - series: hotpot_release_state{{state="failed",job="canary_release_job"}}
                    values: '0+0x3000'
                alert_rule_test:
                  - eval_time: 25h
                    alertname: BackupTooOld
                    exp_alerts: []
                  - eval_time: 27h
                    alertname: BackupTooOld
                    exp_alerts:
                      - exp_labels: {{severity: critical}}
                        exp_annotations:
                          summary: "No successful database backup for over 26 hours"
                          description: >-
                            The newest successful postgres_backup is 1d 3h 0m 0s old.
                            Open nightly_backup_job's runs in the Dagster UI;
                            docs/runbook.md "Take a backup now".
                  - eval_time: 7d
                    alertname: RestoreDrillFailing
                    exp_alerts: []
                  - eval_time: 9d
                    alertname: RestoreDrillFailing
                    exp_alerts:
                      - exp_labels: {{severity: critical}}
                        exp_annotations:
                          summary: "Restore drills are failing or have not passed for 8 days"
                          description: >-
                            Backups are not proven restorable. Open restore_drill_job's runs in the Dagster
                            UI; docs/runbook.md "Run a restore drill".
                  - eval_time: 1h
                    alertname: ReleaseFailed
                    exp_alerts: []
            """
        )
    )
    result = promtool("test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr


@dg.op
def release_step():
    raise RuntimeError("canary 5xx ratio 0.2 > 0.1")


@dg.job(name="canary_release_job")
def failing_release():
    release_step()


def test_sensor_writes_what_the_instance_knows(tmp_path):
    textfile = tmp_path / "hotpot.prom"
    resource = MetricsTextfileResource(path=str(textfile))
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"metrics_textfile": resource})
        pipeline_health_sensor(context)
        assert "hotpot_backup_last_success_timestamp_seconds 0" in textfile.read_text()
        assert 'hotpot_release_state{state="none",job=""} 1' in textfile.read_text()

        instance.report_runless_asset_event(dg.AssetMaterialization("postgres_backup"))
        failing_release.execute_in_process(instance=instance, raise_on_error=False)
        pipeline_health_sensor(
            dg.build_sensor_context(instance=instance, resources={"metrics_textfile": resource})
        )
    text = textfile.read_text()
    assert "hotpot_backup_last_success_timestamp_seconds 0\n" not in text
    assert 'hotpot_release_state{state="failed",job="canary_release_job"} 1' in text
    assert "hotpot_restore_drill_last_passed -1" in text
    assert [path.name for path in tmp_path.iterdir()] == ["hotpot.prom"], "no temporary file left behind"


def test_sensor_skips_without_a_textfile():
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(
            instance=instance, resources={"metrics_textfile": MetricsTextfileResource()}
        )
        result = pipeline_health_sensor(context)
    assert "HOTPOT_METRICS_TEXTFILE is unset" in result.skip_message


def test_age_checks_job_flags_a_pipeline_that_stopped(postgres, s3, monkeypatch):
    bucket = f"age-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    env = {
        "HOTPOT_DATABASE_URL": postgres.url,
        "HOTPOT_BACKUP_BUCKET": bucket,
        **s3.env(),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    defs = build_definitions(load_settings())
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("age_checks_job").execute_in_process(instance=instance)
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    # No backup and no drill ever: both age checks fail, and nothing else ran.
    assert set(evaluations) == {"verified_backup_is_fresh", "restore_drill_recent"}
    assert not any(e.passed for e in evaluations.values())
    assert not result.get_asset_materialization_events()
