"""The operator's surface: failure alerts and pipeline health for the existing monitoring."""

from __future__ import annotations

import dagster as dg

from hotpot_orchestration.operations.sensors import (
    AlertWebhookResource,
    MetricsTextfileResource,
    pipeline_health_sensor,
    run_failure_alert_sensor,
)
from hotpot_orchestration.settings import Settings

# The age checks fail when backups or drills stop happening altogether, which their own runs cannot
# report: they are evaluated on their own, every hour.
AGE_CHECKS = [
    dg.AssetCheckKey(dg.AssetKey("postgres_backup"), "verified_backup_is_fresh"),
    dg.AssetCheckKey(dg.AssetKey("restore_drill"), "restore_drill_recent"),
]


def build_defs(settings: Settings) -> dg.Definitions:
    age_checks_job = dg.define_asset_job(
        "age_checks_job",
        selection=dg.AssetSelection.checks(*AGE_CHECKS),
        description="Evaluates verified_backup_is_fresh (26 h) and restore_drill_recent (8 days).",
    )
    webhook_url = dg.EnvVar("HOTPOT_ALERT_WEBHOOK_URL") if settings.alert_webhook_url else None
    return dg.Definitions(
        jobs=[age_checks_job],
        schedules=[
            dg.ScheduleDefinition(
                name="age_checks_schedule",
                job=age_checks_job,
                cron_schedule="15 * * * *",
                execution_timezone=settings.timezone,
                default_status=dg.DefaultScheduleStatus.RUNNING,
                description="Hourly: is the newest verified backup under 26 h old, the last passing drill "
                "under 8 days?",
            )
        ],
        sensors=[run_failure_alert_sensor, pipeline_health_sensor],
        resources={
            "alert_webhook": AlertWebhookResource(url=webhook_url, ui_url=settings.ui_url),
            "metrics_textfile": MetricsTextfileResource(
                path=str(settings.metrics_textfile) if settings.metrics_textfile else None
            ),
        },
    )
