"""`postgres_backup` and `backup_retention`: thin Dagster wrappers over the backup domain modules."""

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import dagster as dg

from hotpot_orchestration.backups.catalog import (
    Orphans,
    delete_backup,
    list_backups,
    orphan_age,
    remove_orphans,
)
from hotpot_orchestration.backups.errors import BackupError, s3_errors
from hotpot_orchestration.backups.retention import RetentionPlan, plan_retention
from hotpot_orchestration.backups.stream import Progress
from hotpot_orchestration.platform.pg import PgToolError
from hotpot_orchestration.platform.resources import BackupStorageResource, PostgresResource
from hotpot_orchestration.platform.units import format_bytes, format_duration
from hotpot_orchestration.settings import Settings

if TYPE_CHECKING:  # backup brings psycopg, which the code location's load does not need
    from hotpot_orchestration.backups.backup import BackupResult

URL_VARIABLE = "HOTPOT_DATABASE_URL"
BACKUPS_GROUP = "backups"
BACKUP = dg.AssetKey("postgres_backup")
RETENTION = dg.AssetKey("backup_retention")
# A dump is always of the database as it is now. The nightly run backs up the day that just ended, so a
# partition is accepted until a day after its end; an older one would be labelled with a day it is not of.
PARTITION_GRACE = timedelta(days=1)
PARTITIONS_START = "2025-01-01"


def backup_partitions(settings: Settings) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(start_date=PARTITIONS_START, timezone=settings.timezone)


def endpoint_of(storage: BackupStorageResource) -> str:
    return storage.endpoint_url or f"AWS S3 ({storage.region})"


# Attempts of a step that failed with an error that may pass (S3 5xx or unreachable, a part damaged on the
# way, a lost database connection, a stall), a minute apart and then longer; refused credentials or a
# refused partition fail at once.
BACKUP_ATTEMPTS = 3
BACKUP_RETRY = dg.RetryPolicy(
    max_retries=BACKUP_ATTEMPTS - 1, delay=60, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


def failure(message: str, *, transient: bool = False) -> dg.Failure:
    """The step's failure: retried by the step's RetryPolicy only when it may pass by itself."""
    return dg.Failure(description=message, allow_retries=transient)


# What `compression_ratio` compares, shown beside it.
COMPRESSION_RATIO_OF = "table data (heap + TOAST, no indexes) per dump byte"


def orphan_metadata(orphans: Orphans) -> dict[str, dg.MetadataValue]:
    return {
        "orphan_dumps_deleted": dg.MetadataValue.json(orphans.dumps),
        "orphan_uploads_aborted": dg.MetadataValue.json(orphans.uploads),
    }


def _refuse_stale_partition(context: dg.AssetExecutionContext, now: datetime) -> None:
    window = context.partition_time_window
    if now - window.end > PARTITION_GRACE:
        raise failure(
            f"Refusing to back up partition {context.partition_key}: its day ended at "
            f"{window.end.isoformat()}, more than a day ago. A backup is a dump of the database as it is "
            "now, so it cannot stand for that day. Materialize the latest partition instead.",
        )


def _progress_logger(context: dg.AssetExecutionContext) -> Callable[[Progress], None]:
    def progress(done: Progress) -> None:
        context.log.info(
            f"uploaded {format_bytes(done.bytes)} in {format_duration(done.seconds)} "
            f"({done.bytes_per_second / 1e6:,.1f} MB/s)"
        )

    return progress


def _backup(
    context: dg.AssetExecutionContext,
    settings: Settings,
    postgres: PostgresResource,
    backup_storage: BackupStorageResource,
    older_than: timedelta,
) -> "BackupResult":
    """take_backup for the run's partition; its errors as the step's failure."""
    # Imported here: it brings psycopg, which the code location's load does not need.
    from hotpot_orchestration.backups.backup import take_backup

    try:
        return take_backup(
            target=postgres.target,
            url_variable=URL_VARIABLE,
            bin_dir=postgres.bin_dir(),
            connect_s3=backup_storage.client,
            endpoint=endpoint_of(backup_storage),
            bucket=backup_storage.bucket,
            prefix=backup_storage.prefix,
            partition=context.partition_key,
            encryption=backup_storage.encryption_args(),
            log=context.log.info,
            on_progress=_progress_logger(context),
            compression=settings.backup_compression,
            stall_seconds=settings.backup_stall_seconds,
            orphans_older_than=older_than,
        )
    except (BackupError, PgToolError) as error:
        # Notes say what was left behind when cleaning up after the failure failed too.
        message = " ".join([str(error), *getattr(error, "__notes__", ())])
        raise failure(message, transient=getattr(error, "transient", False)) from None


def backup_metadata(result: "BackupResult", seconds: float) -> dict[str, dg.MetadataValue]:
    manifest = result.manifest
    return {
        # Raw numbers for the plots, each with its readable companion.
        "dump_bytes": dg.MetadataValue.int(result.dump_bytes),
        "dump_size": dg.MetadataValue.text(format_bytes(result.dump_bytes)),
        # The whole database on disk (pg_database_size): indexes, free space and catalogs too.
        "database_bytes": dg.MetadataValue.int(result.database_bytes),
        "database_size": dg.MetadataValue.text(format_bytes(result.database_bytes)),
        # What the dump holds: the dumped tables' heap and TOAST (pg_table_size), no indexes.
        "table_data_bytes": dg.MetadataValue.int(result.table_data_bytes),
        "table_data_size": dg.MetadataValue.text(format_bytes(result.table_data_bytes)),
        "compression_ratio": dg.MetadataValue.float(
            round(result.table_data_bytes / max(result.dump_bytes, 1), 3)
        ),
        "compression_ratio_of": dg.MetadataValue.text(COMPRESSION_RATIO_OF),
        "duration_seconds": dg.MetadataValue.float(round(seconds, 3)),
        "duration": dg.MetadataValue.text(format_duration(seconds)),
        # Dump bytes stored per second, from the snapshot to the manifest (to 4 significant digits: a small
        # database's rate is a fraction of a MB/s).
        "mb_per_second": dg.MetadataValue.float(float(f"{result.dump_bytes / 1e6 / max(seconds, 1e-9):.4g}")),
        "tables": dg.MetadataValue.int(len(manifest["tables"])),
        "rows": dg.MetadataValue.int(result.rows),
        "large_objects": dg.MetadataValue.int(manifest["large_objects"]),
        "parts": dg.MetadataValue.int(result.parts),
        "part_size_bytes": dg.MetadataValue.int(result.part_size),
        "s3_uri": dg.MetadataValue.text(f"s3://{result.bucket}/{manifest['dump_key']}"),
        "sha256": dg.MetadataValue.text(manifest["sha256"]),
        "dump_key": dg.MetadataValue.text(manifest["dump_key"]),
        "manifest_key": dg.MetadataValue.text(result.manifest_key),
        "compression": dg.MetadataValue.text(manifest["compression"]),
        "server_version": dg.MetadataValue.text(manifest["server_version"]),
        "pg_dump_version": dg.MetadataValue.text(manifest["pg_dump_version"]),
        "created_at": dg.MetadataValue.timestamp(datetime.fromisoformat(manifest["created_at"])),
        **orphan_metadata(result.orphans),
    }


def _backup_asset(
    settings: Settings, retry_policy: dg.RetryPolicy, older_than: timedelta
) -> dg.AssetsDefinition:
    @dg.asset(
        key=BACKUP,
        group_name=BACKUPS_GROUP,
        partitions_def=backup_partitions(settings),
        kinds={"postgres", "s3"},
        description=(
            f"A pg_dump (custom format) of {URL_VARIABLE}, streamed into S3 with a manifest of the same "
            "snapshot (exact row counts, versions, size, SHA-256). One per day in HOTPOT_TIMEZONE; only "
            "the latest partition can be materialized. Sizes and the duration are shown in bytes and "
            "seconds (for plots) and in KiB/MiB/GiB and minutes; compression_ratio is the dumped tables' "
            "data (pg_table_size: heap + TOAST, no indexes) per dump byte."
        ),
        retry_policy=retry_policy,
    )
    def postgres_backup(
        context: dg.AssetExecutionContext, postgres: PostgresResource, backup_storage: BackupStorageResource
    ) -> dg.MaterializeResult:
        _refuse_stale_partition(context, datetime.now(UTC))
        started = time.monotonic()
        result = _backup(context, settings, postgres, backup_storage, older_than)
        seconds = time.monotonic() - started
        context.log.info(
            f"stored s3://{result.bucket}/{result.manifest['dump_key']}: {format_bytes(result.dump_bytes)} "
            f"({result.dump_bytes:,} bytes), {len(result.manifest['tables'])} tables, {result.rows:,} rows, "
            f"in {format_duration(seconds)}"
        )
        return dg.MaterializeResult(metadata=backup_metadata(result, seconds))

    return postgres_backup


@dataclass(frozen=True)
class _Pruned:
    plan: RetentionPlan
    orphans: Orphans


def _prune(
    context: dg.AssetExecutionContext,
    settings: Settings,
    backup_storage: BackupStorageResource,
    database: str,
    older_than: timedelta,
) -> _Pruned:
    """Deletes the backups retention lets go and what killed backups left. Raises BackupError."""
    client = backup_storage.client()
    bucket, prefix, endpoint = backup_storage.bucket, backup_storage.prefix, endpoint_of(backup_storage)
    with s3_errors(endpoint, f"listing backups under s3://{bucket}/{prefix}{database}/"):
        backups = list_backups(client, bucket, prefix, database)
    plan = plan_retention(
        backups,
        now=datetime.now(UTC),
        retention_days=settings.backup_retention_days,
        min_keep=settings.backup_min_keep,
    )
    for backup in plan.delete:
        with s3_errors(endpoint, f"deleting s3://{bucket}/{backup.dump_key}"):
            delete_backup(client, bucket, backup)
        context.log.info(f"deleted s3://{bucket}/{backup.dump_key} and its manifest")
    with s3_errors(endpoint, f"removing what killed backups left under s3://{bucket}/{prefix}{database}/"):
        orphans = remove_orphans(
            client, bucket, prefix, database, older_than=older_than, now=datetime.now(UTC)
        )
    for note in orphans.notes(bucket):
        context.log.info(note)
    return _Pruned(plan=plan, orphans=orphans)


def _log_kept(
    context: dg.AssetExecutionContext, settings: Settings, bucket: str, database: str, plan: RetentionPlan
) -> None:
    verified_kept = sum(backup.verified for backup in plan.keep)
    if verified_kept < settings.backup_min_keep:
        context.log.warning(
            f"only {verified_kept} verified backups of {database} exist; HOTPOT_BACKUP_MIN_KEEP asks for "
            f"{settings.backup_min_keep}"
        )
    for backup in plan.guarded:
        context.log.info(f"kept s3://{bucket}/{backup.dump_key} past the window: among the last good backups")


def retention_metadata(pruned: _Pruned) -> dict[str, dg.MetadataValue]:
    plan = pruned.plan
    return {
        "deleted": dg.MetadataValue.int(len(plan.delete)),
        "kept": dg.MetadataValue.int(len(plan.keep)),
        "kept_verified": dg.MetadataValue.int(sum(backup.verified for backup in plan.keep)),
        "kept_past_window": dg.MetadataValue.int(len(plan.guarded)),
        "deleted_keys": dg.MetadataValue.json([backup.dump_key for backup in plan.delete]),
        "kept_keys": dg.MetadataValue.json([{"key": b.dump_key, "verified": b.verified} for b in plan.keep]),
        **orphan_metadata(pruned.orphans),
    }


def _retention_asset(
    settings: Settings, retry_policy: dg.RetryPolicy, older_than: timedelta, backup: dg.AssetsDefinition
) -> dg.AssetsDefinition:
    @dg.asset(
        key=RETENTION,
        group_name=BACKUPS_GROUP,
        deps=[backup],
        kinds={"s3"},
        description=(
            f"Deletes backups (dump and manifest) older than {settings.backup_retention_days} days "
            f"(HOTPOT_BACKUP_RETENTION_DAYS), always keeping the newest {settings.backup_min_keep} verified "
            "ones (HOTPOT_BACKUP_MIN_KEEP), and what killed backups left (dumps without a manifest, "
            "unfinished uploads) once older than a backup run can last. Keys it did not write are never "
            "touched."
        ),
        retry_policy=retry_policy,
    )
    def backup_retention(
        context: dg.AssetExecutionContext, postgres: PostgresResource, backup_storage: BackupStorageResource
    ) -> dg.MaterializeResult:
        database = postgres.target.dbname
        try:
            pruned = _prune(context, settings, backup_storage, database, older_than)
        except BackupError as error:
            raise failure(str(error), transient=error.transient) from None
        _log_kept(context, settings, backup_storage.bucket, database, pruned.plan)
        return dg.MaterializeResult(metadata=retention_metadata(pruned))

    return backup_retention


def build_backup_assets(
    settings: Settings, retry_policy: dg.RetryPolicy = BACKUP_RETRY
) -> list[dg.AssetsDefinition]:
    """`retry_policy` is BACKUP_RETRY in the code location; tests pass one with short delays."""
    older_than = orphan_age(
        timeout_seconds=settings.backup_timeout_seconds, stall_seconds=settings.backup_stall_seconds
    )
    backup = _backup_asset(settings, retry_policy, older_than)
    return [backup, _retention_asset(settings, retry_policy, older_than, backup)]
