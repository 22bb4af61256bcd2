"""The point-in-time drill: recover a scratch server from the archive, check it exactly, measure RTO and RPO.

1. The newest logical backup with a restore point (written by the nightly backup at its snapshot) and the
   newest base backup that ends before that point.
2. Every WAL segment from the base backup on is in the archive (a gap is named before any download).
3. The base backup is restored, the server replays WAL to the restore point and pauses there: every table
   of the logical manifest must have exactly its row count.
4. The same server then replays to the end of the archive and is promoted: the newest commit it holds,
   against the newest commit on the source when the drill began, is the RPO.
The scratch server is stopped and its directory deleted whatever happens (see scratch).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hotpot_orchestration.backups.catalog import Backup, list_backups
from hotpot_orchestration.pitr.archive import archived_wal
from hotpot_orchestration.pitr.barman import BarmanCloud
from hotpot_orchestration.pitr.recover import (
    Recovered,
    RecoveryError,
    RecoveryTarget,
    needed_wal,
    recovered,
)
from hotpot_orchestration.pitr.scratch import DEFAULT_ROOT, ScratchError
from hotpot_orchestration.platform.pg import PgTarget
from hotpot_orchestration.restores.verify import check_tables

# Sessions counting rows in the scratch server at once.
COUNT_JOBS = 2


@dataclass
class DrillResult:
    backup_id: str
    manifest_key: str
    restore_point: str
    tables: int = 0
    rows: int = 0
    restore_seconds: float = 0.0  # the base backup's files downloaded and unpacked
    to_restore_point_seconds: float = 0.0  # from the start until the server is open at the restore point
    total_seconds: float = 0.0  # until promoted at the archive's end
    source_last_commit: datetime | None = None
    recovered_last_commit: datetime | None = None
    rpo_seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def metadata(self) -> dict[str, Any]:
        return {
            "base_backup_id": self.backup_id,
            "logical_manifest": self.manifest_key,
            "restore_point": self.restore_point,
            "tables_checked": self.tables,
            "rows_checked": self.rows,
            "restore_seconds": round(self.restore_seconds, 1),
            "rto_seconds": round(self.to_restore_point_seconds, 1),
            "total_seconds": round(self.total_seconds, 1),
            "rpo_seconds": None if self.rpo_seconds is None else round(self.rpo_seconds, 1),
            "source_last_commit": self.source_last_commit.isoformat() if self.source_last_commit else None,
            "recovered_last_commit": (
                self.recovered_last_commit.isoformat() if self.recovered_last_commit else None
            ),
        }


def newest_logical_with_restore_point(client, bucket: str, prefix: str, database: str) -> Backup:
    backups = [b for b in list_backups(client, bucket, prefix, database) if b.manifest.get("restore_point")]
    if not backups:
        raise RecoveryError(
            f"no logical backup of {database} under s3://{bucket}/{prefix} records a restore point: run "
            "nightly_backup_job (postgres_backup) against a server with wal_level=replica or logical"
        )
    return backups[-1]


def source_last_commit(source: PgTarget) -> tuple[datetime | None, str | None]:
    """The newest commit's time on the source, or why it is unknown."""
    with source.connect() as conn:
        if conn.execute("SELECT current_setting('track_commit_timestamp')").fetchone()[0] != "on":
            return None, "track_commit_timestamp is off on the source: the RPO cannot be measured"
        row = conn.execute("SELECT timestamp FROM pg_last_committed_xact()").fetchone()
    return (row[0] if row else None), None


def check_restore_point(
    database: PgTarget, logical: Backup, result: DrillResult, log: Callable[[str], None]
) -> None:
    """Every table of the logical manifest with its exact row count in the database recovered to the
    manifest's restore point (counted into `result`), or RecoveryError listing the differences."""
    point = logical.manifest["restore_point"]["name"]
    check = check_tables(database, logical.manifest["tables"], jobs=COUNT_JOBS)
    result.tables, result.rows = check.tables, check.rows
    if check.differences:
        raise RecoveryError(
            f"at restore point {point} the recovered {database.dbname} differs from "
            f"{logical.manifest_key}:\n  " + "\n  ".join(check.differences)
        )
    log(f"restore point {point}: {check.tables} tables, {check.rows:,} rows as in the manifest")


def _promote_at_archive_end(recovery: Recovered, user: str, client, barman: BarmanCloud):
    """Replay on from the restore point to the archive's end and promote; the newest commit recovered.
    The archive as listed now is prefetched whole, so the end is found without asking the store again."""
    scratch = recovery.scratch
    last_commit = "SELECT timestamp FROM pg_last_committed_xact()"
    try:
        with recovery.database("postgres", user).connect() as conn:
            # What a server knows of commits is what it replayed since it started: with no commit archived
            # after the restore point, the newest recovered is the one before it.
            at_point = conn.execute(last_commit).fetchone()
            conn.execute("CHECKPOINT")  # a restartpoint here: the restart replays from here, not the base
        needed = needed_wal(archived_wal(client, barman), recovery.begin_wal)
        missing = {name: key for name, key in needed.items() if not scratch.prefetched(name)}
        scratch.prefetch_wal(client, missing)
        # Only gzip (and uncompressed) objects are prefetched; with any other, barman-cloud stays the way in.
        whole = all(scratch.prefetched(name) for name in needed)
        scratch.configure(target_name=None, pause_at_target=False, archive_prefetched=whole)
        scratch.restart()
        scratch.wait(user, promoted=True)
        with recovery.database("postgres", user).connect() as conn:
            at_end = conn.execute(last_commit).fetchone()
        return at_end if at_end and at_end[0] else at_point
    except ScratchError as error:
        raise RecoveryError(
            f"recovering base backup {recovery.base_backup_id} to the archive's end failed: {error}"
        ) from None


def run_drill(
    *,
    barman: BarmanCloud,
    client,
    backup_bucket: str,
    backup_prefix: str,
    source: PgTarget,
    bin_dir: Path,
    env: dict[str, str],
    log: Callable[[str], None] = print,
    root: Path = DEFAULT_ROOT,
) -> DrillResult:
    logical = newest_logical_with_restore_point(client, backup_bucket, backup_prefix, source.dbname)
    point = logical.manifest["restore_point"]
    result = DrillResult(backup_id="", manifest_key=logical.manifest_key, restore_point=point["name"])
    result.source_last_commit, note = source_last_commit(source)
    if note:
        result.notes.append(note)
    log(
        f"point-in-time drill: the restore point {point['name']} at {point['lsn']} of "
        f"{logical.manifest_key}, then the archive's end"
    )
    started = time.monotonic()
    with recovered(
        RecoveryTarget(restore_point=point["name"]),
        barman=barman,
        client=client,
        backup_bucket=backup_bucket,
        backup_prefix=backup_prefix,
        source=source,
        bin_dir=bin_dir,
        env=env,
        log=log,
        root=root,
    ) as recovery:
        result.backup_id, result.restore_seconds = recovery.base_backup_id, recovery.restore_seconds
        result.to_restore_point_seconds = time.monotonic() - started
        check_restore_point(recovery.database(source.dbname, source.user), logical, result, log)
        row = _promote_at_archive_end(recovery, source.user, client, barman)
        result.total_seconds = time.monotonic() - started
    result.recovered_last_commit = row[0] if row else None
    if result.source_last_commit and result.recovered_last_commit:
        lag = (result.source_last_commit - result.recovered_last_commit).total_seconds()
        result.rpo_seconds = max(0.0, lag)  # commits after the drill began may have been archived too
    log(
        f"promoted at the archive's end after {result.total_seconds:.1f} s; RPO "
        f"{'unknown' if result.rpo_seconds is None else f'{result.rpo_seconds:.1f} s'}"
    )
    return result
