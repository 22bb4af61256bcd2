"""Nightly PostgreSQL backups to S3 and their retention."""

from __future__ import annotations

import dagster as dg

from hotpot_orchestration.platform.planned import planned_asset, planned_job
from hotpot_orchestration.settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
    nightly_backup_job = planned_job("nightly_backup_job", issue=3)
    return dg.Definitions(
        assets=[
            planned_asset("postgres_backup", issue=3, group_name="backups"),
            planned_asset("backup_retention", issue=3, deps=["postgres_backup"], group_name="backups"),
        ],
        jobs=[nightly_backup_job],
        schedules=[
            dg.ScheduleDefinition(
                name="nightly_backup_schedule",
                job=nightly_backup_job,
                cron_schedule="0 2 * * *",
                execution_timezone=settings.timezone,
            )
        ],
    )
