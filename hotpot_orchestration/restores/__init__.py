"""Restore drills that prove backups restore, and the guarded restore job.

The work is in plain modules (`procedure`, `scratch`, `download`, `pgtools`, `verify`, `guard`), imported
inside the steps so that loading the code location does not load psycopg or boto3; this module only adapts
them to Dagster.
"""

import os
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
from pydantic import Field

from hotpot_orchestration.backups.assets import BACKUP, BACKUPS_GROUP
from hotpot_orchestration.pitr.assets import PitrResource
from hotpot_orchestration.platform.resources import BackupStorageResource, PostgresResource
from hotpot_orchestration.platform.units import format_bytes, format_duration
from hotpot_orchestration.restores.errors import DEFAULT_LOCK_TIMEOUT_SECONDS, RestoreError, RestoreSetupError
from hotpot_orchestration.settings import Settings, load_settings

DRILL_ASSET = dg.AssetKey("restore_drill")
DRILL_JOB = "restore_drill_job"
DRILL_PASSED = "restore_drill_passed"
DRILL_RECENT = "restore_drill_recent"
MAX_DRILL_AGE = timedelta(days=8)
# Metadata lists stay readable and within what the event log stores comfortably.
MAX_LISTED = 200
# pg_restore jobs and row-counting sessions. The work runs on the database server, whose cores this process
# cannot see: 4 keeps a 2-core server busy through the gaps between items (measured faster there than 2)
# without swamping it. Raise it for a big server.
DEFAULT_JOBS = 4
LOCK_TIMEOUT_FIELD = Field(
    default=DEFAULT_LOCK_TIMEOUT_SECONDS,
    ge=1,
    le=3600,
    description="seconds a DROP or RENAME of a database waits for another session's lock before failing "
    "with the holder's pid, user, application, state and query start",
)
WORK_DIR_FIELD = Field(
    default=None,
    description="directory to download the dump into (it must hold the whole dump); the system temp "
    "directory (TMPDIR) when unset",
)


class RestoreDrillConfig(dg.Config):
    partition: str | None = Field(
        default=None,
        description="YYYY-MM-DD partition of postgres_backup to drill; newest verified when unset",
    )
    backup_key: str | None = Field(
        default=None, description="S3 key of one backup's dump (or manifest) to drill, verified or not"
    )
    jobs: int = Field(
        default=DEFAULT_JOBS, ge=1, le=64, description="parallel pg_restore jobs and counting sessions"
    )
    lock_timeout_seconds: int = LOCK_TIMEOUT_FIELD
    work_dir: str | None = WORK_DIR_FIELD


class RestoreDatabaseConfig(dg.Config):
    target_database: str = Field(description="database to restore into, on HOTPOT_DATABASE_URL's server")
    partition: str | None = Field(default=None, description="YYYY-MM-DD: that day's newest verified backup")
    backup_key: str | None = Field(
        default=None, description="S3 key of the dump (or its manifest) to restore"
    )
    target_time: str | None = Field(
        default=None,
        description="point in time: HOTPOT_DATABASE_URL's database as of this moment (ISO 8601 with its "
        "offset, e.g. 2026-03-01T18:30:00Z), recovered from the newest base backup before it and the WAL "
        "archive",
    )
    restore_point: str | None = Field(
        default=None,
        description="point in time: HOTPOT_DATABASE_URL's database at this named restore point (each "
        "nightly backup records one, named in its manifest), recovered from the WAL archive",
    )
    replace: bool = Field(
        default=False, description="drop a non-empty target and put the backup in its place"
    )
    confirm: str = Field(
        default="",
        description="the target database's name again: to replace a non-empty target, to end the sessions "
        "connected to the target, and for HOTPOT_DATABASE_URL's database in any case",
    )
    keep_owners_and_privileges: bool = Field(
        default=False,
        description="restore the backup's owners and GRANTs (the roles must exist); off: objects are owned "
        "by the restoring role, as pg_restore --no-owner --no-privileges does",
    )
    jobs: int = Field(
        default=DEFAULT_JOBS, ge=1, le=64, description="parallel pg_restore jobs and counting sessions"
    )
    lock_timeout_seconds: int = LOCK_TIMEOUT_FIELD
    work_dir: str | None = WORK_DIR_FIELD


def _listed(items: list[str]) -> dg.MetadataValue:
    shown = [f"- {item}" for item in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        shown.append(f"- ... and {len(items) - MAX_LISTED} more")
    return dg.MetadataValue.md("\n".join(shown) or "none")


def _report_metadata(report, bucket: str) -> dict[str, object]:
    megabytes_per_second = (
        report.dump_bytes / 1e6 / report.download_seconds if report.download_seconds else 0.0
    )
    backup = report.backup
    if backup.manifest_key:
        source = {
            "backup": dg.MetadataValue.path(f"s3://{bucket}/{backup.dump_key}"),
            "backup_partition": backup.partition,
            "backup_created_at": backup.created_at.isoformat(),
            "sha256": backup.manifest["sha256"],
        }
    else:  # a point in time: the database recovered from the WAL archive, copied with pg_dump
        source = {"recovered": backup.dump_key, "newest_commit_recovered": backup.created_at.isoformat()}
    return {
        "passed": report.passed,
        **source,
        "scratch_database": report.scratch_database or "(not created)",
        # Seconds and bytes for the plots, each with its readable companion.
        "rto_seconds": dg.MetadataValue.float(round(report.rto_seconds, 2)),
        "rto": format_duration(report.rto_seconds),
        "download_seconds": dg.MetadataValue.float(round(report.download_seconds, 2)),
        "download_duration": format_duration(report.download_seconds),
        "restore_seconds": dg.MetadataValue.float(round(report.restore_seconds, 2)),
        "restore_duration": format_duration(report.restore_seconds),
        "verify_seconds": dg.MetadataValue.float(round(report.verify_seconds, 2)),
        "verify_duration": format_duration(report.verify_seconds),
        "rpo_hours": dg.MetadataValue.float(round(report.backup_age_seconds / 3600, 3)),
        "dump_bytes": dg.MetadataValue.int(report.dump_bytes),
        "dump_size": format_bytes(report.dump_bytes),
        "download_mb_per_second": dg.MetadataValue.float(round(megabytes_per_second, 1)),
        "tables_verified": dg.MetadataValue.int(report.tables),
        "rows_verified": dg.MetadataValue.int(report.rows),
        "difference_count": dg.MetadataValue.int(len(report.differences)),
        "differences": _listed(report.differences),
        "warnings": _listed(report.warnings),
        "leftovers_removed": _listed(report.cleaned_up),
    }


def _log_warnings(context: dg.OpExecutionContext, report) -> None:
    for warning in report.warnings:
        context.log.warning(warning)


def _setup_failure(error: Exception) -> dg.Failure:
    """Problems of the setup (no backup, unusable binaries, missing roles, a refusal) end the step with their
    own message, which says what to change, instead of a stack trace."""
    return dg.Failure(description=str(error), allow_retries=False)


@dg.asset(
    key=DRILL_ASSET,
    deps=[BACKUP],
    group_name=BACKUPS_GROUP,
    kinds={"postgres", "s3"},
    check_specs=[
        dg.AssetCheckSpec(
            DRILL_PASSED,
            asset=DRILL_ASSET,
            blocking=True,
            description="The backup restored and matched its manifest: pg_restore without errors, every "
            "table with its exact row count, the archive's schema, sequences, extensions and large objects.",
        )
    ],
    description="Restores the newest verified backup (or a chosen partition's, or one backup_key) into a "
    "scratch database on HOTPOT_DRILL_DATABASE_URL's server, verifies it against the backup's manifest and "
    "drops it. A materialization is a passing drill; a failing drill fails its run and lists every "
    "difference.",
)
def restore_drill(
    context: dg.AssetExecutionContext,
    config: RestoreDrillConfig,
    postgres: PostgresResource,
    drill_postgres: PostgresResource,
    backup_storage: BackupStorageResource,
):
    from hotpot_orchestration.restores import procedure

    client = backup_storage.client()
    try:
        backup = procedure.select_backup(
            client,
            backup_storage.bucket,
            backup_storage.prefix,
            database=None if config.backup_key else postgres.target.dbname,
            partition=config.partition,
            key=config.backup_key,
        )
        context.log.info(f"drilling {backup.dump_key} (created {backup.created_at.isoformat()})")
        report = procedure.restore_backup(
            client,
            backup_storage.bucket,
            backup,
            drill_postgres.target,
            drill_postgres.bin_dir(),
            procedure.RestoreOptions(
                jobs=config.jobs,
                work_dir=config.work_dir,
                lock_timeout_seconds=config.lock_timeout_seconds,
            ),
            kind="drill",
            log=context.log.info,
        )
    except RestoreError as error:
        raise _setup_failure(error) from None
    _log_warnings(context, report)
    metadata = _report_metadata(report, backup_storage.bucket)
    yield dg.AssetCheckResult(check_name=DRILL_PASSED, passed=report.passed, metadata=metadata)
    if not report.passed:
        # No materialization: the newest materialization of restore_drill is always the newest passing drill,
        # which is what restore_drill_recent and the pipeline-health metrics read.
        raise dg.Failure(
            description=f"restore drill of {report.backup.dump_key} found {len(report.differences)} "
            f"differences; the first: {report.differences[0]}",
            metadata=metadata,
            allow_retries=False,
        )
    yield dg.MaterializeResult(metadata=metadata)


@dg.asset_check(
    asset=DRILL_ASSET,
    name=DRILL_RECENT,
    description=f"The newest passing restore drill is at most {MAX_DRILL_AGE.days} days old.",
)
def restore_drill_recent(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    event = context.instance.get_latest_materialization_event(DRILL_ASSET)
    if event is None:
        return dg.AssetCheckResult(passed=False, metadata={"last_passing_drill": "never"})
    age = timedelta(seconds=time.time() - event.timestamp)
    return dg.AssetCheckResult(
        passed=age <= MAX_DRILL_AGE,
        metadata={
            "last_passing_drill": datetime.fromtimestamp(event.timestamp, UTC).isoformat(timespec="seconds"),
            "age_days": dg.MetadataValue.float(round(age / timedelta(days=1), 2)),
            "limit_days": MAX_DRILL_AGE.days,
        },
    )


def _restore_backup(context, config, server, postgres, backup_storage, keep):
    from hotpot_orchestration.restores import procedure

    client = backup_storage.client()
    backup = procedure.select_backup(
        client,
        backup_storage.bucket,
        backup_storage.prefix,
        database=None if config.backup_key else server.dbname,
        partition=config.partition,
        key=config.backup_key,
    )
    if not backup.verified:
        context.log.warning(f"{backup.dump_key} was never verified after it was taken; restoring it as asked")
    context.log.info(
        f"restoring {backup.dump_key} into {config.target_database!r} on {server.host}:{server.port}"
    )
    return procedure.restore_backup(
        client,
        backup_storage.bucket,
        backup,
        server,
        postgres.bin_dir(),
        _restore_options(config),
        kind="restore",
        keep=lambda scratch: keep(scratch, f"s3://{backup_storage.bucket}/{backup.dump_key}"),
        avoid=(config.target_database,),
        log=context.log.info,
    )


def _restore_point_in_time(context, config, server, postgres, backup_storage, pitr, keep):
    # On use: recovery brings psycopg and the scratch server, which the code location's load must not import.
    from hotpot_orchestration.pitr.barman import BarmanError
    from hotpot_orchestration.pitr.recover import RecoveryError, RecoveryTarget
    from hotpot_orchestration.pitr.runas import RunAsError
    from hotpot_orchestration.platform.pg import PgToolError

    try:
        target = RecoveryTarget.parse(target_time=config.target_time, restore_point=config.restore_point)
    except ValueError as error:
        raise RestoreSetupError(str(error)) from None
    context.log.info(f"restoring {server.dbname} as of {target.describe()} into {config.target_database!r}")
    try:
        return _recover_and_restore(context, config, target, server, postgres, backup_storage, pitr, keep)
    except (RecoveryError, BarmanError, RunAsError, PgToolError) as error:
        raise RestoreSetupError(str(error)) from None


def _recover_and_restore(context, config, target, server, postgres, backup_storage, pitr, keep):
    from hotpot_orchestration.pitr.recover import recovered
    from hotpot_orchestration.restores.point_in_time import restore_point_in_time

    with recovered(
        target,
        barman=pitr.barman(),
        client=backup_storage.client(),
        backup_bucket=backup_storage.bucket,
        backup_prefix=backup_storage.prefix,
        source=server,
        bin_dir=postgres.bin_dir(),
        env=dict(os.environ),
        log=context.log.info,
    ) as recovery:
        return restore_point_in_time(
            recovery,
            server.dbname,
            server.user,
            server,
            postgres.bin_dir(),
            _restore_options(config),
            keep=lambda scratch: keep(
                scratch,
                f"base backup {recovery.base_backup_id} and WAL in s3://{pitr.bucket}/{pitr.prefix} to "
                f"{target.describe()}",
            ),
            avoid=(config.target_database,),
            log=context.log.info,
        )


def _restore_options(config: RestoreDatabaseConfig):
    from hotpot_orchestration.restores import procedure

    return procedure.RestoreOptions(
        jobs=config.jobs,
        keep_owners_and_privileges=config.keep_owners_and_privileges,
        work_dir=config.work_dir,
        lock_timeout_seconds=config.lock_timeout_seconds,
    )


@dg.op(
    name="restore_database",
    description="Restores the chosen backup (or the database as of a point in time, recovered from the WAL "
    "archive) into a scratch database, verifies it against its manifest (or the recovered original) and "
    "only then puts it in the target's place. Never restores into postgres, the templates or "
    "HOTPOT_DRILL_DATABASE_URL's database. Refuses a non-empty target without replace: true and the "
    "target's name as confirm, a target with connected sessions without that confirm, and "
    "HOTPOT_DATABASE_URL's database without it.",
)
def restore_database(
    context: dg.OpExecutionContext,
    config: RestoreDatabaseConfig,
    postgres: PostgresResource,
    backup_storage: BackupStorageResource,
    pitr: PitrResource,
) -> dg.Output[None]:
    from hotpot_orchestration.restores import guard

    server = postgres.target
    protected = server.dbname
    # The drill server's database, from the validated setting: the job's resources stay those it restores
    # with. Unset, drills use HOTPOT_DATABASE_URL's server and `postgres` is refused anyway.
    drill_database = load_settings().drill_database_name or None
    request = guard.RestoreRequest(
        target_database=config.target_database,
        partition=config.partition,
        backup_key=config.backup_key,
        replace=config.replace,
        confirm=config.confirm,
        target_time=config.target_time,
        restore_point=config.restore_point,
    )
    try:
        # Refusals come before anything is downloaded; they are checked again just before the swap.
        before = guard.check(request, server, protected_database=protected, drill_database=drill_database)
        context.log.info(
            f"target {config.target_database!r} on {server.host}:{server.port} now: "
            f"{before.describe() if before.exists else 'does not exist'}"
        )

        def keep(scratch, provenance: str) -> None:
            guard.put_in_place(
                scratch,
                request,
                server,
                protected_database=protected,
                drill_database=drill_database,
                provenance=provenance,
            )

        if config.target_time or config.restore_point:
            report = _restore_point_in_time(context, config, server, postgres, backup_storage, pitr, keep)
        else:
            report = _restore_backup(context, config, server, postgres, backup_storage, keep)
    except RestoreError as error:
        raise _setup_failure(error) from None
    _log_warnings(context, report)
    metadata = _report_metadata(report, backup_storage.bucket)
    if not report.passed:
        raise dg.Failure(
            description=f"restore of {report.backup.dump_key} did not match its manifest; "
            f"{config.target_database!r} was left untouched. First difference: {report.differences[0]}",
            metadata=metadata,
            allow_retries=False,
        )
    if not config.keep_owners_and_privileges:
        context.log.info(
            f"objects in {config.target_database!r} are owned by {server.user}, without the backup's GRANTs; "
            "pass keep_owners_and_privileges: true to restore them (the roles must exist)"
        )
    return dg.Output(None, metadata={"target_database": config.target_database, **metadata})


@dg.job(
    name="restore_database_job",
    # A real restore is never replayed automatically: whoever launched it decides what happens next.
    tags={"dagster/max_retries": "0"},
    description="Restores a chosen backup into a target database, the seed's restore script done safely.",
)
def restore_database_job():
    restore_database()


def build_defs(settings: Settings) -> dg.Definitions:
    restore_drill_job = dg.define_asset_job(
        DRILL_JOB,
        selection=dg.AssetSelection.assets(DRILL_ASSET),
        # A drill that found differences is a result, not a hiccup: only crashed runs are retried.
        tags={"dagster/retry_on_asset_or_op_failure": "false"},
        description="Restore drill: the newest verified backup restored, verified and dropped.",
    )
    return dg.Definitions(
        assets=[restore_drill],
        asset_checks=[restore_drill_recent],
        jobs=[restore_drill_job, restore_database_job],
        schedules=[
            dg.ScheduleDefinition(
                name="restore_drill_schedule",
                job=restore_drill_job,
                cron_schedule=settings.restore_drill_cron,
                execution_timezone=settings.timezone,
                default_status=dg.DefaultScheduleStatus.RUNNING,
                description="Daily restore drill after the nightly backup (HOTPOT_RESTORE_DRILL_CRON).",
            ),
        ],
    )
