"""Point-in-time recovery: WAL archiving and base backups in barman-cloud's layout (what CloudNativePG
reads and writes), drilled against the nightly logical backup.

Domain modules (barman, archive, physical, scratch, drill, runas) do not import Dagster and are tested
directly; assets.py wires them to resources. The local path runs barman-cloud here; a CloudNativePG driver
(Backup resources, a recovery Cluster) would replace physical.py and scratch.py behind the same assets.
"""

from __future__ import annotations

import dagster as dg

from hotpot_orchestration.pitr.assets import WAL_ARCHIVE, PitrResource, build_pitr_assets
from hotpot_orchestration.settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
    physical, retention, wal_archive, drill = build_pitr_assets(settings)
    physical_job = dg.define_asset_job(
        "physical_backup_job",
        selection=dg.AssetSelection.assets(physical, retention),
        description="A base backup for the day that just ended, then recovery-window retention.",
    )
    drill_job = dg.define_asset_job(
        "pitr_drill_job", selection=dg.AssetSelection.assets(drill), description="The point-in-time drill."
    )
    check_job = dg.define_asset_job(
        "wal_archive_check_job",
        selection=dg.AssetSelection.checks(wal_archive),
        description=f"Evaluates {WAL_ARCHIVE} (archiver failures, archive age).",
    )
    running = dg.DefaultScheduleStatus.RUNNING
    schedules = [
        # At 01:00, before the 02:00 logical backup whose restore point the 04:30 drill recovers to.
        dg.build_schedule_from_partitioned_job(
            physical_job,
            name="physical_backup_schedule",
            hour_of_day=1,
            minute_of_hour=0,
            default_status=running,
        ),
        dg.ScheduleDefinition(
            name="pitr_drill_schedule",
            job=drill_job,
            cron_schedule="30 4 * * *",
            execution_timezone=settings.timezone,
            default_status=running,
        ),
        # Every five minutes: a failing archive_command is seen within one interval.
        dg.ScheduleDefinition(
            name="wal_archive_check_schedule",
            job=check_job,
            cron_schedule="*/5 * * * *",
            execution_timezone=settings.timezone,
            default_status=running,
        ),
    ]
    return dg.Definitions(
        assets=[physical, retention, drill],
        asset_checks=[wal_archive],
        jobs=[physical_job, drill_job, check_job],
        schedules=schedules,
        resources={
            "pitr": PitrResource(
                bucket=settings.backup_bucket,
                prefix=settings.pitr_prefix,
                server_name=settings.barman_server_name,
                endpoint_url=settings.aws_endpoint_url,
                kms_key_id=settings.backup_kms_key_id,
                wal_archive_max_age_seconds=settings.wal_archive_max_age_seconds,
                recovery_window_days=settings.pitr_recovery_window_days,
                driver=settings.pitr_driver,
                cnpg_namespace=settings.cnpg_namespace,
                cnpg_cluster=settings.cnpg_cluster,
            )
        },
    )
