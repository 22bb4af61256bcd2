"""The release gates run from a release's first step (canary or blue-green), and drawn in the asset graph.

`gates` decides on plain data; here the lookups are wired to the run's resources and the instance, each
result is logged, and a refusal fails the step naming every gate that did not pass, with metadata naming
the backup and the WAL archive looked at and links to them in the UI.
"""

from datetime import UTC, datetime

import dagster as dg

from hotpot_orchestration.backups.assets import BACKUP
from hotpot_orchestration.backups.checks import MAX_AGE as MAX_BACKUP_AGE
from hotpot_orchestration.pitr.assets import PHYSICAL, latest_wal_archive_report
from hotpot_orchestration.platform.resources import BackupStorageResource
from hotpot_orchestration.release.image.resource import RegistryResource, ReleaseImageResource
from hotpot_orchestration.release.rollout.gates import (
    ReleaseGateRefused,
    ReleaseGateResult,
    WalArchiveWatch,
    backup_gate,
    image_gate,
    require,
    wal_archive_gate,
)
from hotpot_orchestration.restores import DRILL_ASSET


def gate_deps(wal_archive: WalArchiveWatch | None) -> list[dg.AssetDep]:
    """The gate drawn in the graph, on the first step of either strategy: lineage only, nothing is loaded
    from these assets. Without a partition mapping the unpartitioned step depends on all of
    postgres_backup's daily partitions."""
    deps = [dg.AssetDep(BACKUP), dg.AssetDep(DRILL_ASSET)]
    if wal_archive is not None:
        deps.append(dg.AssetDep(PHYSICAL))  # whose wal_archive check the gate reads
    return deps


def check_gates(
    context,
    image: ReleaseImageResource,
    registry: RegistryResource,
    backup_storage: BackupStorageResource,
    ui_url: str,
    wal_archive: WalArchiveWatch | None = None,
) -> None:
    """The seed's pre-deployment checklist, before anything is deployed or routed. The backup must be of
    HOTPOT_DATABASE_URL's database: another database's backup in the same bucket does not count. A refusal
    names the backup looked at and links to its partition of postgres_backup in the UI (`ui_url`).

    WAL archiving (`wal_archive`; None: not looked at) is judged without the database: release runs get
    the bucket's credentials (boto3's chain, as for the backup) but no HOTPOT_DATABASE_URL, and giving them
    a role that may read pg_stat_archiver would add a database secret to every release pod. The object
    store is listed with backup_storage's client (the barman archive lives in the same bucket), and
    pg_stat_archiver is read through the wal_archive check's latest evaluation in the instance, which
    runs every 5 minutes with the database's credentials."""
    now = datetime.now(UTC)
    backup = backup_gate(
        lambda: _latest_verified_backup(backup_storage),
        now,
        database=backup_storage.database,
        max_age=MAX_BACKUP_AGE,
    )
    wal = wal_archive_gate(
        lambda: _archived_wal(backup_storage, wal_archive),
        lambda: latest_wal_archive_report(context.instance),
        now,
        watch=wal_archive,
    )
    results = [
        backup,
        wal,
        image_gate(lambda: _registry_digest(image, registry), image.reference, image.digest),
    ]
    for result in results:
        context.log.info(f"gate '{result.name}': {_verdict(result, 'FAILED')}: {result.detail}")
    try:
        require(results)
    except ReleaseGateRefused as refused:
        metadata = {result.name: f"{_verdict(result, 'failed')}: {result.detail}" for result in results}
        metadata |= _backup_metadata(backup, now, ui_url)
        if not wal.passed:
            metadata |= _wal_metadata(wal, ui_url)
        raise dg.Failure(description=str(refused), metadata=metadata) from None


def _latest_verified_backup(backup_storage: BackupStorageResource):
    from hotpot_orchestration.backups.catalog import latest_backup  # lazy: boto3 only when a release runs

    return latest_backup(
        backup_storage.client(),
        backup_storage.bucket,
        backup_storage.prefix,
        database=backup_storage.database,
    )


def _archived_wal(backup_storage: BackupStorageResource, wal_archive: WalArchiveWatch):
    from hotpot_orchestration.pitr.archive import archived_wal

    return archived_wal(backup_storage.client(), wal_archive.barman)


def _registry_digest(image: ReleaseImageResource, registry: RegistryResource) -> str | None:
    if image.registry != registry.registry:
        raise ValueError(f"the image is in {image.registry}, the configured registry is {registry.registry}")
    with registry.client() as client:
        return client.manifest_digest(image.repository, image.digest)


def _verdict(result: ReleaseGateResult, failed: str) -> str:
    return "passed" if result.passed else failed


def _backup_metadata(backup: ReleaseGateResult, now: datetime, ui_url: str) -> dict:
    """The backup the gate looked at, and a link to its partition of postgres_backup."""
    if (latest := backup.subject) is None:
        return {}
    return {
        "backup_manifest": latest.manifest_key,
        "backup_age_hours": round((now - latest.created_at).total_seconds() / 3600, 2),
        "backup_link": dg.MetadataValue.url(
            f"{ui_url.rstrip('/')}/assets/{BACKUP.to_user_string()}?view=partitions"
            f"&partition={latest.partition}"
        ),
    }


def _wal_metadata(wal: ReleaseGateResult, ui_url: str) -> dict:
    """The WAL archive the gate looked at, the wal_archive check's verdict, and a link to the check."""
    if (state := wal.subject) is None:
        return {}
    metadata = {
        "wal_archive": state.location,
        "newest_archived_wal": state.newest_wal or "(none)",
        "wal_archive_age_seconds": -1.0 if state.age_seconds is None else round(state.age_seconds, 1),
        "wal_archive_check_link": dg.MetadataValue.url(
            f"{ui_url.rstrip('/')}/assets/{PHYSICAL.to_user_string()}?view=checks"
        ),
    }
    if (report := state.check) is not None:
        metadata |= {
            "wal_archive_check": f"{'passed' if report.passed else 'failed'} at "
            f"{report.evaluated_at:%Y-%m-%d %H:%M:%S} UTC: {report.description}",
            "archiver_last_failed_wal": report.last_failed_wal or "(none)",
        }
    return metadata
