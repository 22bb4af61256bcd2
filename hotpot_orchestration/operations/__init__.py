"""The operator's surface: failure alerts and pipeline health for the existing monitoring."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from hotpot_orchestration.backups.checks import BACKUP, FRESH, MAX_AGE
from hotpot_orchestration.operations.sensors import (
    AlertWebhookResource,
    MetricsTextfileResource,
    pipeline_health_sensor,
    run_failure_alert_sensor,
)
from hotpot_orchestration.restores import DRILL_ASSET, DRILL_RECENT, MAX_DRILL_AGE
from hotpot_orchestration.settings import Settings

# The age checks fail when backups or drills stop happening altogether, which their own runs cannot
# report: they are evaluated on their own, every hour.
AGE_CHECKS = [
    dg.AssetCheckKey(BACKUP, FRESH),
    dg.AssetCheckKey(DRILL_ASSET, DRILL_RECENT),
]
_LIMITS = f"{MAX_AGE // timedelta(hours=1)} h, {MAX_DRILL_AGE.days} days"


def build_defs(settings: Settings) -> dg.Definitions:
    age_checks_job = dg.define_asset_job(
        "age_checks_job",
        selection=dg.AssetSelection.checks(*AGE_CHECKS),
        description=f"Evaluates {FRESH} and {DRILL_RECENT} ({_LIMITS}).",
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
                description=f"Hourly: {FRESH} and {DRILL_RECENT} ({_LIMITS}).",
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
