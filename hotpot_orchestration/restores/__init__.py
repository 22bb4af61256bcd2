"""Restore drills that prove backups restore, and the guarded restore job."""

from __future__ import annotations

import dagster as dg

from hotpot_orchestration.platform.planned import planned_asset, planned_job
from hotpot_orchestration.settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
    restore_drill_job = planned_job("restore_drill_job", issue=4)
    return dg.Definitions(
        assets=[planned_asset("restore_drill", issue=4, deps=["postgres_backup"], group_name="backups")],
        jobs=[restore_drill_job, planned_job("restore_database_job", issue=4)],
        schedules=[
            dg.ScheduleDefinition(
                name="restore_drill_schedule",
                job=restore_drill_job,
                cron_schedule="0 4 * * *",
                execution_timezone=settings.timezone,
                description="Daily drill after the nightly backup. Not built yet (open issue #4).",
            )
        ],
    )
