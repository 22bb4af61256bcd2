"""`nightly_backup_job` (backup, its checks, retention) and `nightly_backup_schedule` at 02:00."""

from __future__ import annotations

import dagster as dg

from hotpot_orchestration.settings import Settings

# Run tag naming the database a backup run dumps. dagster.yaml's run queue admits one run per value of it,
# so backups of one database never overlap (and never race for its orphans or its key space).
BACKUP_DATABASE_TAG = "hotpot/backup-database"


def backup_run_tags(settings: Settings) -> dict[str, str]:
    return {
        BACKUP_DATABASE_TAG: settings.database_name or "(HOTPOT_DATABASE_URL unset)",
        # Run monitoring ends a longer run; what it left behind is an orphan after this (see orphan_age).
        "dagster/max_runtime": str(settings.backup_timeout_seconds),
        # A failed step was already retried by its RetryPolicy when that could help (transient errors); the
        # instance's run retries must not replay a refused password or partition.
        "dagster/retry_on_asset_or_op_failure": "false",
    }


def build_nightly(backup: dg.AssetsDefinition, retention: dg.AssetsDefinition, settings: Settings):
    job = dg.define_asset_job(
        "nightly_backup_job",
        selection=dg.AssetSelection.assets(backup, retention),
        description="Back up the database for the day that just ended, verify the archive, prune backups.",
        tags=backup_run_tags(settings),
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
