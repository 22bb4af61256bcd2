"""`physical_backup`, its retention, the `wal_archive` check and `pitr_drill`: thin wrappers over the domain
modules (barman, physical, archive, drill)."""

import os
from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from hotpot_orchestration.backups.assets import BACKUP, backup_partitions
from hotpot_orchestration.pitr import cnpg
from hotpot_orchestration.pitr.archive import CheckReport, evaluate
from hotpot_orchestration.pitr.barman import BarmanCloud, BarmanError
from hotpot_orchestration.pitr.physical import apply_retention, take_base_backup
from hotpot_orchestration.pitr.runas import RunAsError
from hotpot_orchestration.platform.pg import PgToolError
from hotpot_orchestration.platform.resources import BackupStorageResource, PostgresResource
from hotpot_orchestration.settings import DEFAULTS, Settings

PHYSICAL = dg.AssetKey("physical_backup")
PHYSICAL_RETENTION = dg.AssetKey("physical_backup_retention")
PITR_DRILL = dg.AssetKey("pitr_drill")
WAL_ARCHIVE = "wal_archive"
WAL_ARCHIVE_CHECK = dg.AssetCheckKey(PHYSICAL, WAL_ARCHIVE)


class PitrResource(dg.ConfigurableResource):
    """The barman-cloud archive: HOTPOT_BACKUP_BUCKET / HOTPOT_PITR_PREFIX / HOTPOT_BARMAN_SERVER_NAME.
    Credentials come from boto3's own chain in the environment, as for the logical backups."""

    bucket: str
    prefix: str = DEFAULTS.pitr_prefix
    server_name: str = DEFAULTS.barman_server_name
    endpoint_url: str | None = None
    kms_key_id: str | None = Field(default=None, description="SSE-KMS key; AES256 when unset")
    wal_archive_max_age_seconds: int = DEFAULTS.wal_archive_max_age_seconds
    recovery_window_days: int = DEFAULTS.pitr_recovery_window_days
    # HOTPOT_PITR_DRIVER: barman-cloud here, or the operator of the CloudNativePG Cluster named below.
    driver: str = DEFAULTS.pitr_driver
    cnpg_namespace: str | None = None
    cnpg_cluster: str | None = None

    def barman(self) -> BarmanCloud:
        return BarmanCloud(
            bucket=self.bucket,
            prefix=self.prefix,
            server_name=self.server_name,
            endpoint_url=self.endpoint_url,
            kms_key_id=self.kms_key_id,
        )

    def cloudnativepg(self) -> cnpg.CnpgCluster | None:
        """The CloudNativePG Cluster with the `cloudnativepg` driver; None: barman-cloud here."""
        if self.driver != "cloudnativepg":
            return None
        return cnpg.CnpgCluster(namespace=self.cnpg_namespace, name=self.cnpg_cluster)


def latest_wal_archive_report(instance: dg.DagsterInstance) -> CheckReport | None:
    """The wal_archive check's latest evaluation (passed or failed) in `instance`; None if it never ran."""
    from dagster._core.storage.asset_check_execution_record import (
        COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES,
    )

    records = instance.event_log_storage.get_asset_check_execution_history(
        WAL_ARCHIVE_CHECK, limit=1, status=set(COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES)
    )
    if not records or records[0].event is None or records[0].event.dagster_event is None:
        return None
    entry = records[0].event
    evaluation = entry.dagster_event.event_specific_data
    metadata = {key: value.value for key, value in evaluation.metadata.items()}
    age = metadata.get("archive_age_seconds")
    return CheckReport(
        passed=evaluation.passed,
        description=evaluation.description or "",
        evaluated_at=datetime.fromtimestamp(entry.timestamp, UTC),
        archive_age_seconds=float(age) if isinstance(age, int | float) and age >= 0 else None,
        newest_archived_wal=str(metadata.get("newest_archived_wal") or ""),
        last_failed_wal=str(metadata.get("last_failed_wal") or ""),
        failed_count=metadata.get("failed_count"),
    )


def build_pitr_assets(settings: Settings):
    partitions = backup_partitions(settings)

    @dg.asset(
        key=PHYSICAL,
        partitions_def=partitions,
        group_name="backups",
        description="A barman-cloud base backup of HOTPOT_DATABASE_URL's server (gzip, encrypted) under "
        "HOTPOT_PITR_PREFIX; with the archived WAL it recovers any moment after it. With "
        "HOTPOT_PITR_DRIVER=cloudnativepg, a Backup that the Cluster's operator takes.",
    )
    def physical_backup(
        context: dg.AssetExecutionContext,
        postgres: PostgresResource,
        backup_storage: BackupStorageResource,
        pitr: PitrResource,
    ) -> dg.MaterializeResult:
        label, cluster, operator = f"hotpot-{context.partition_key}", pitr.cloudnativepg(), {}
        try:
            if cluster is None:
                backup = take_base_backup(
                    pitr.barman(), postgres.target, backup_storage.client(), label=label
                )
            else:
                backup, request = cnpg.take_base_backup(
                    cluster, pitr.barman(), backup_storage.client(), label=label, log=context.log.info
                )
                operator = request.metadata
        except (BarmanError, cnpg.CnpgError) as error:
            raise dg.Failure(description=str(error)) from None
        context.log.info(
            f"base backup {backup.backup_id}: {backup.stored_bytes:,} bytes in {backup.seconds:.1f} s"
        )
        metadata = {**backup.metadata, **operator}
        return dg.MaterializeResult(
            metadata={name: value for name, value in metadata.items() if value is not None}
        )

    @dg.asset(
        key=PHYSICAL_RETENTION,
        deps=[PHYSICAL],
        partitions_def=partitions,
        group_name="backups",
        description="barman-cloud-backup-delete, RECOVERY WINDOW OF HOTPOT_PITR_RECOVERY_WINDOW_DAYS DAYS: "
        "base backups that no moment of the window needs are deleted with their WAL.",
    )
    def physical_backup_retention(
        context: dg.AssetExecutionContext, pitr: PitrResource
    ) -> dg.MaterializeResult:
        try:
            outcome = apply_retention(pitr.barman(), pitr.recovery_window_days, dict(os.environ))
        except BarmanError as error:
            raise dg.Failure(description=str(error)) from None
        context.log.info(f"{outcome['policy']}: kept {len(outcome['kept'])}, deleted {outcome['deleted']}")
        return dg.MaterializeResult(
            metadata={
                "policy": outcome["policy"],
                "kept": dg.MetadataValue.json(outcome["kept"]),
                "deleted": dg.MetadataValue.json(outcome["deleted"]),
            }
        )

    @dg.asset_check(
        asset=PHYSICAL,
        name=WAL_ARCHIVE,
        description="WAL archiving works: pg_stat_archiver's last attempt succeeded and the newest archived "
        "segment is younger than HOTPOT_WAL_ARCHIVE_MAX_AGE_SECONDS while WAL is waiting.",
    )
    def wal_archive(
        postgres: PostgresResource, backup_storage: BackupStorageResource, pitr: PitrResource
    ) -> dg.AssetCheckResult:
        verdict, status, archived = evaluate(
            postgres.target,
            backup_storage.client(),
            pitr.barman(),
            max_age_seconds=pitr.wal_archive_max_age_seconds,
            now=datetime.now(UTC),
        )
        newest = archived.newest if archived else None
        return dg.AssetCheckResult(
            passed=verdict.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=verdict.description,
            metadata={
                "archive_age_seconds": -1.0 if verdict.age_seconds is None else round(verdict.age_seconds, 1),
                "newest_archived_wal": newest[0] if newest else "",
                "failed_count": status.failed_count,
                "last_failed_wal": status.last_failed_wal or "",
                "current_wal": status.current_wal,
            },
        )

    @dg.asset(
        key=PITR_DRILL,
        deps=[PHYSICAL, BACKUP],
        group_name="backups",
        description="Recovers a scratch server from the newest base backup and WAL to the logical backup's "
        "restore point (every table's row count as in its manifest), then to the archive's end (the RPO). "
        "With HOTPOT_PITR_DRIVER=cloudnativepg, a recovery Cluster at the restore point, deleted after.",
    )
    def pitr_drill(
        context: dg.AssetExecutionContext,
        postgres: PostgresResource,
        backup_storage: BackupStorageResource,
        pitr: PitrResource,
    ) -> dg.MaterializeResult:
        # On use: the row counts bring psycopg, which the code location's load must not import.
        from hotpot_orchestration.pitr.drill import run_drill
        from hotpot_orchestration.pitr.recover import RecoveryError

        common = dict(
            barman=pitr.barman(),
            client=backup_storage.client(),
            backup_bucket=backup_storage.bucket,
            backup_prefix=backup_storage.prefix,
            source=postgres.target,
            env=dict(os.environ),
            log=context.log.info,
        )
        try:
            if (cluster := pitr.cloudnativepg()) is None:
                result = run_drill(bin_dir=postgres.bin_dir(), **common)
            else:
                result = cnpg.run_drill(cluster=cluster, **common)
        except (RecoveryError, BarmanError, RunAsError, PgToolError, cnpg.CnpgError) as error:
            raise dg.Failure(description=str(error)) from None
        for note in result.notes:
            context.log.warning(note)
        return dg.MaterializeResult(
            metadata={name: value for name, value in result.metadata.items() if value is not None}
        )

    return physical_backup, physical_backup_retention, wal_archive, pitr_drill
