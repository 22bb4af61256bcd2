"""Sensors that watch this code location's runs for operators."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from hotpot_orchestration.backups.checks import BACKUP
from hotpot_orchestration.operations.alerts import FailedRun, post_alert, slack_message
from hotpot_orchestration.operations.health import PipelineHealth, render, write_textfile
from hotpot_orchestration.pitr.assets import PITR_DRILL, latest_wal_archive_report
from hotpot_orchestration.release.rollout.releases import OUTCOME_TAG, RELEASE_JOBS, ROLLED_BACK
from hotpot_orchestration.restores import DRILL_ASSET, DRILL_JOB
from hotpot_orchestration.settings import DEFAULTS


class AlertWebhookResource(dg.ConfigurableResource):
    """Slack-compatible incoming webhook (HOTPOT_ALERT_WEBHOOK_URL); unset sends alerts to the log only."""

    url: str | None = Field(default=None, description="fed from HOTPOT_ALERT_WEBHOOK_URL, a credential")
    ui_url: str = Field(default=DEFAULTS.ui_url, description="the Dagster UI, for links to runs")


def failed_run_from(context: dg.RunFailureSensorContext, ui_url: str) -> FailedRun:
    run = context.dagster_run
    step_failures = context.get_step_failure_events()
    if step_failures:
        first = step_failures[0]
        step, error = first.step_key, first.event_specific_data.error
    else:
        step, error = None, context.failure_event.event_specific_data.error
    # A step whose RetryPolicy gave up fails with "Exceeded max_retries of N"; the last attempt's own
    # error, under it, is what says what to fix.
    gave_up = ""
    if error and error.cls_name == "RetryRequestedFromPolicy" and error.cause:
        gave_up, error = error.message.strip(), error.cause
    # Dagster wraps an op's exception; operators want the exception itself.
    while error and error.cls_name == "DagsterExecutionStepExecutionError" and error.cause:
        error = error.cause
    message = error.message if error else (context.failure_event.message or "")
    if error and error.cls_name == "Failure":  # our own Failure's description is the message itself
        message = message.partition(": ")[2] or message
    if gave_up:
        first, _, rest = message.strip().partition("\n")
        message = f"{first} ({gave_up.lower()})\n{rest}"
    return FailedRun(
        job_name=run.job_name,
        run_id=run.run_id,
        failing_step=step,
        error=message,
        run_url=f"{ui_url.rstrip('/')}/runs/{run.run_id}",
    )


@dg.run_failure_sensor(
    name="run_failure_alert_sensor",
    description="Posts every failed run of this code location to HOTPOT_ALERT_WEBHOOK_URL (Slack format).",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
def run_failure_alert_sensor(context: dg.RunFailureSensorContext, alert_webhook: AlertWebhookResource):
    failed = failed_run_from(context, alert_webhook.ui_url)
    message = slack_message(failed)
    if not alert_webhook.url:
        context.log.error(f"[alert] {message['text']} ({failed.run_url}); HOTPOT_ALERT_WEBHOOK_URL is unset")
        return
    delivery = post_alert(alert_webhook.url, message)
    if delivery.delivered:
        context.log.info(f"alert for run {failed.run_id} delivered ({delivery.detail})")
    else:
        context.log.error(
            f"alert for run {failed.run_id} NOT delivered after {delivery.attempts} attempts "
            f"({delivery.detail}): {message['text']}"
        )


FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


def _latest_run(instance: dg.DagsterInstance, job_names, statuses=None) -> dg.DagsterRun | None:
    records = [
        record
        for name in job_names
        for record in instance.get_run_records(dg.RunsFilter(job_name=name, statuses=statuses), limit=1)
    ]
    newest = max(records, key=lambda record: record.create_timestamp, default=None)
    return newest.dagster_run if newest else None


def _seconds(event: dg.EventLogEntry | None, name: str) -> float | None:
    """A number from a materialization's metadata (absent or not a number: None)."""
    if event is None or event.asset_materialization is None:
        return None
    entry = event.asset_materialization.metadata.get(name)
    value = entry.value if entry is not None else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def read_health(instance: dg.DagsterInstance) -> PipelineHealth:
    """What the instance alone knows: no database, S3 or registry is asked (the sensor has no credentials
    of theirs). WAL archiving comes from the wal_archive check's latest evaluation."""
    backup = instance.get_latest_materialization_event(BACKUP)
    drill = instance.get_latest_materialization_event(DRILL_ASSET)
    drill_run = _latest_run(instance, [DRILL_JOB], statuses=FINISHED)
    release_run = _latest_run(instance, RELEASE_JOBS)
    if release_run is None:
        release_state = "none"
    elif release_run.status == dg.DagsterRunStatus.SUCCESS:
        # A release that rolled back on purpose ends without error, but it did not release.
        rolled_back = release_run.tags.get(OUTCOME_TAG) == ROLLED_BACK
        release_state = "failed" if rolled_back else "succeeded"
    elif release_run.status in FINISHED:
        release_state = "failed"
    else:
        release_state = "running"
    wal = latest_wal_archive_report(instance)
    pitr_drill = instance.get_latest_materialization_event(PITR_DRILL)
    return PipelineHealth(
        last_backup_at=backup.timestamp if backup else None,
        last_passing_drill_at=drill.timestamp if drill else None,
        last_drill_passed=None if drill_run is None else drill_run.status == dg.DagsterRunStatus.SUCCESS,
        release_state=release_state,
        release_job=release_run.job_name if release_run else None,
        wal_archive_age_seconds=wal.archive_age_seconds if wal else None,
        wal_archive_checked_at=wal.evaluated_at.timestamp() if wal else None,
        wal_archive_passed=wal.passed if wal else None,
        last_pitr_drill_at=pitr_drill.timestamp if pitr_drill else None,
        pitr_drill_rto_seconds=_seconds(pitr_drill, "rto_seconds"),
        pitr_drill_rpo_seconds=_seconds(pitr_drill, "rpo_seconds"),
    )


class MetricsTextfileResource(dg.ConfigurableResource):
    """Where pipeline health is written for node_exporter's textfile collector (HOTPOT_METRICS_TEXTFILE)."""

    path: str | None = None


@dg.sensor(
    name="pipeline_health_sensor",
    description=(
        "Every minute, writes the last successful backup and drill, the newest release's state, the WAL "
        "archive's age (the wal_archive check's latest evaluation) and the last pitr_drill's RTO and RPO in "
        "Prometheus format to HOTPOT_METRICS_TEXTFILE (alert rules: deploy/prometheus/pipeline-alerts.yml)."
    ),
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def pipeline_health_sensor(context: dg.SensorEvaluationContext, metrics_textfile: MetricsTextfileResource):
    if not metrics_textfile.path:
        return dg.SkipReason("HOTPOT_METRICS_TEXTFILE is unset: nothing to export")
    health = read_health(context.instance)
    write_textfile(metrics_textfile.path, render(health))
    return dg.SkipReason(
        f"wrote pipeline health to {metrics_textfile.path} (release: {health.release_state})"
    )
