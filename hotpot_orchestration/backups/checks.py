"""Checks of `postgres_backup`: the stored archive reads back in full (blocking), and a good one is fresh.

Both live in one multi-check op so that, in the nightly run, freshness is judged after the new backup has
been verified (separate check ops would run in no guaranteed order); each can still run alone from the UI.
"""

from datetime import UTC, datetime, timedelta

import dagster as dg

from hotpot_orchestration.backups.assets import BACKUP, endpoint_of, failure
from hotpot_orchestration.backups.catalog import Backup, latest_backup, load_backup, record_verification
from hotpot_orchestration.backups.errors import BackupError, s3_errors
from hotpot_orchestration.backups.verify import verify_backup
from hotpot_orchestration.platform.pg import PgToolError
from hotpot_orchestration.platform.resources import BackupStorageResource, PostgresResource

VALID = "backup_archive_is_valid"
FRESH = "verified_backup_is_fresh"
MAX_AGE = timedelta(hours=26)


def _latest_materialized(
    context: dg.AssetCheckExecutionContext, storage: BackupStorageResource
) -> Backup | None:
    """The backup the latest materialization of postgres_backup wrote (in a nightly run: this run's)."""
    event = context.instance.get_latest_materialization_event(BACKUP)
    if event is None or event.asset_materialization is None:
        return None
    manifest_key = event.asset_materialization.metadata["manifest_key"].value
    return load_backup(storage.client(), storage.bucket, storage.prefix, manifest_key)


def _check_archive(context, postgres: PostgresResource, storage: BackupStorageResource, endpoint: str):
    client = storage.client()
    with s3_errors(endpoint, "reading the latest backup's manifest"):
        backup = _latest_materialized(context, storage)
    if backup is None:
        return dg.AssetCheckResult(
            check_name=VALID,
            passed=False,
            description="postgres_backup was never materialized: nothing to read",
        )
    verdict = verify_backup(client, storage.bucket, backup, bin_dir=postgres.bin_dir(), endpoint=endpoint)
    with s3_errors(endpoint, f"recording the verification in s3://{storage.bucket}/{backup.manifest_key}"):
        record_verification(
            client,
            storage.bucket,
            backup,
            ok=verdict.ok,
            detail=verdict.detail,
            extra_args=storage.encryption_args(),
        )
    context.log.info(f"s3://{storage.bucket}/{backup.dump_key}: {verdict.detail}")
    return dg.AssetCheckResult(
        check_name=VALID,
        passed=verdict.ok,
        description=verdict.detail,
        metadata={
            "dump_key": dg.MetadataValue.text(backup.dump_key),
            "tables": dg.MetadataValue.int(verdict.tables),
            "rows": dg.MetadataValue.int(verdict.rows),
            "duration_seconds": dg.MetadataValue.float(round(verdict.seconds, 3)),
        },
    )


def _check_fresh(postgres: PostgresResource, storage: BackupStorageResource, endpoint: str):
    with s3_errors(endpoint, "listing backups"):
        latest = latest_backup(
            storage.client(),
            storage.bucket,
            storage.prefix,
            verified_only=True,
            database=postgres.target.dbname,
        )
    if latest is None:
        return dg.AssetCheckResult(
            check_name=FRESH, passed=False, description="there is no verified backup of the database at all"
        )
    age = datetime.now(UTC) - latest.created_at
    hours = age.total_seconds() / 3600
    return dg.AssetCheckResult(
        check_name=FRESH,
        passed=age <= MAX_AGE,
        description=(
            f"the latest verified backup, s3://{storage.bucket}/{latest.dump_key}, is {hours:.1f} h old "
            f"(limit {MAX_AGE // timedelta(hours=1)} h)"
        ),
        metadata={
            "age_hours": dg.MetadataValue.float(round(hours, 2)),
            "dump_key": dg.MetadataValue.text(latest.dump_key),
        },
    )


def build_backup_checks() -> list[dg.AssetChecksDefinition]:
    @dg.multi_asset_check(
        specs=[
            dg.AssetCheckSpec(
                VALID,
                asset=BACKUP,
                blocking=True,
                description=(
                    "The latest backup streamed back from S3 through pg_restore in full: every table of the "
                    "manifest with exactly its row count, its sequences and large objects, and the SHA-256 "
                    "of the object. The result is recorded in the manifest's `verification`; retention "
                    "counts only verified backups."
                ),
            ),
            dg.AssetCheckSpec(
                FRESH,
                asset=BACKUP,
                description=f"The latest verified backup is at most {MAX_AGE // timedelta(hours=1)} h old.",
            ),
        ],
        can_subset=True,
    )
    def postgres_backup_checks(
        context: dg.AssetCheckExecutionContext,
        postgres: PostgresResource,
        backup_storage: BackupStorageResource,
    ):
        endpoint = endpoint_of(backup_storage)
        selected = {key.name for key in context.selected_asset_check_keys}
        try:
            if VALID in selected:
                yield _check_archive(context, postgres, backup_storage, endpoint)
            if FRESH in selected:
                yield _check_fresh(postgres, backup_storage, endpoint)
        except (BackupError, PgToolError) as error:
            transient = getattr(error, "transient", False)
            raise failure(str(error), transient=transient) from None

    return [postgres_backup_checks]
