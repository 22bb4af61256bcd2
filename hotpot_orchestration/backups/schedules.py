"""`nightly_backup_job` (backup, its checks, retention) and `nightly_backup_schedule` at 02:00."""

from __future__ import annotations

import dagster as dg


def build_nightly(backup: dg.AssetsDefinition, retention: dg.AssetsDefinition):
    job = dg.define_asset_job(
        "nightly_backup_job",
        selection=dg.AssetSelection.assets(backup, retention),
        description="Back up the database for the day that just ended, verify the archive, prune backups.",
    )
    # At 02:00 in the partitions' time zone (HOTPOT_TIMEZONE), for the day that ended two hours before.
    # Running from the first deployment: backups never wait for someone to find a toggle.
    schedule = dg.build_schedule_from_partitioned_job(
        job,
        name="nightly_backup_schedule",
        hour_of_day=2,
        minute_of_hour=0,
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    return job, schedule
