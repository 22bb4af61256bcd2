"""One restore of one backup: download and check it, pg_restore it into a fresh scratch database, and
compare the result with the backup's manifest.

Restore drills stop there (the scratch database is dropped, whatever happened); restore_database_job goes on
to keep the verified scratch database as its target (see `guard`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from hotpot_orchestration.backups.catalog import Backup, latest_backup, list_backups
from hotpot_orchestration.platform.pg import PgTarget
from hotpot_orchestration.restores import pgtools, verify
from hotpot_orchestration.restores.download import (
    ChecksumMismatch,
    check_free_space,
    download_verified,
    work_dir,
)
from hotpot_orchestration.restores.errors import DEFAULT_LOCK_TIMEOUT_SECONDS, NoBackup, RestoreSetupError
from hotpot_orchestration.restores.scratch import (
    ScratchDatabase,
    drop_abandoned,
    maintenance_target,
)

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestoreOptions:
    jobs: int
    keep_owners_and_privileges: bool = False
    # Where the dump is downloaded; the system temp directory (TMPDIR) when None.
    work_dir: str | None = None
    # How long a DROP or RENAME of a database waits for another session's lock.
    lock_timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS


@dataclass
class RestoreReport:
    backup: Backup
    started_at: datetime
    scratch_database: str | None = None
    dump_bytes: int = 0
    download_seconds: float = 0.0
    restore_seconds: float = 0.0
    verify_seconds: float = 0.0
    tables: int = 0
    rows: int = 0
    differences: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cleaned_up: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.differences

    @property
    def rto_seconds(self) -> float:
        return self.download_seconds + self.restore_seconds + self.verify_seconds

    @property
    def backup_age_seconds(self) -> float:
        """The RPO this backup gives at the time of the restore: everything newer would be lost."""
        return (self.started_at - self.backup.created_at).total_seconds()


def select_backup(
    client,
    bucket: str,
    prefix: str,
    *,
    database: str | None,
    partition: str | None = None,
    key: str | None = None,
) -> Backup:
    """The backup with dump or manifest `key`, else the newest verified one (of `partition` if given)."""
    location = f"s3://{bucket}/{prefix}" + (f"{database}/" if database else "")
    if key:
        for backup in list_backups(client, bucket, prefix, database):
            if key in (backup.dump_key, backup.manifest_key):
                return backup
        raise NoBackup(
            f"no backup with key {key!r} under {location} (keys look like {prefix}DB/DATE/DB-STAMP.dump)"
        )
    backup = latest_backup(client, bucket, prefix, partition=partition, database=database)
    if backup is not None:
        return backup
    unverified = latest_backup(
        client, bucket, prefix, verified_only=False, partition=partition, database=database
    )
    scope = f"partition {partition}" if partition else location
    if unverified is None:
        raise NoBackup(f"no backup in {scope}: run nightly_backup_job first")
    raise NoBackup(
        f"no verified backup in {scope}; the newest unverified one is {unverified.dump_key} "
        f"(to use it anyway, name it as backup_key)"
    )


def server_major(server: PgTarget) -> int:
    with maintenance_target(server).connect() as conn:
        return int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000


def restore_backup(
    client,
    bucket: str,
    backup: Backup,
    server: PgTarget,
    bin_dir: Path,
    options: RestoreOptions,
    *,
    kind: str = "drill",
    keep: Callable[[ScratchDatabase], None] | None = None,
    avoid: tuple[str, ...] = (),
    log: Callable[[str], None] = _log.info,
) -> RestoreReport:
    """Restore `backup` into a scratch database on `server` and verify it against its manifest.

    Differences (a dump that does not match its checksum included) are returned in the report, not raised:
    they are what a drill is for. Problems of the setup (binaries, missing roles, an unreachable server)
    raise. `keep` is called with the scratch database only when everything matched; otherwise, and after
    any exception or interruption, the scratch database is dropped. `avoid`: database names the scratch
    database's maintenance session must not be connected to (one about to be dropped).
    """
    manifest = backup.manifest
    report = RestoreReport(backup=backup, started_at=datetime.now(UTC))
    majors = prepare(report, server, bin_dir, options, log=log)
    with work_dir(options.work_dir, log=log) as directory:
        check_free_space(directory, manifest["dump_bytes"])
        try:
            download = download_verified(
                client,
                bucket,
                backup.dump_key,
                directory / "backup.dump",
                sha256=manifest["sha256"],
                size=manifest["dump_bytes"],
                log=log,
            )
        except ChecksumMismatch as mismatch:
            report.differences.append(f"checksum: {mismatch}; pg_restore was not run")
            return report
        report.dump_bytes, report.download_seconds = download.bytes, download.seconds
        restore_dump(
            download.path,
            report,
            server,
            bin_dir,
            options,
            kind=kind,
            keep=keep,
            avoid=avoid,
            log=log,
            majors=majors,
        )
    return report


def prepare(
    report: RestoreReport,
    server: PgTarget,
    bin_dir: Path,
    options: RestoreOptions,
    *,
    log: Callable[[str], None],
) -> tuple[int, int]:
    """Before anything is downloaded: pg_restore can read the dump, scratch databases a killed run left
    are dropped, an older target server is warned about. (pg_restore's major, the server's major.)"""
    manifest = report.backup.manifest
    restore_major = pgtools.check_pg_restore_can_read(bin_dir, manifest["pg_dump_version"])
    report.cleaned_up = drop_abandoned(server, log=log, lock_timeout_seconds=options.lock_timeout_seconds)
    target_major = server_major(server)
    if target_major < manifest["server_version_num"] // 10000:
        report.warnings.append(
            f"the backup is of PostgreSQL {manifest['server_version']} and {server.host}:{server.port} runs "
            f"PostgreSQL {target_major}: objects that need a newer server fail and are listed as differences"
        )
    return restore_major, target_major


def restore_dump(
    dump: Path,
    report: RestoreReport,
    server: PgTarget,
    bin_dir: Path,
    options: RestoreOptions,
    *,
    kind: str,
    keep: Callable[[ScratchDatabase], None] | None,
    avoid: tuple[str, ...],
    log: Callable[[str], None],
    majors: tuple[int, int],
) -> None:
    """pg_restore `dump` into a scratch database and compare it with `report.backup`'s manifest, adding to
    `report`; `keep` the scratch database when nothing differs (see `restore_backup`)."""
    manifest = report.backup.manifest
    restore_major, target_major = majors
    with_privileges = options.keep_owners_and_privileges
    archived = pgtools.archive_schema(bin_dir, dump, with_privileges=with_privileges)
    if with_privileges:
        missing = pgtools.missing_roles(server, pgtools.referenced_roles(bin_dir, dump))
        if missing:
            raise RestoreSetupError(
                f"the backup's objects are owned by or granted to roles that do not exist on "
                f"{server.host}:{server.port}: {', '.join(missing)}. Create them first, or restore "
                f"without keep_owners_and_privileges (objects are then owned by {server.user}, "
                "without GRANTs)"
            )
    with ScratchDatabase(
        server, kind, avoid=avoid, log=log, lock_timeout_seconds=options.lock_timeout_seconds
    ) as scratch:
        report.scratch_database = scratch.name
        log(f"restoring {report.backup.dump_key} into {scratch.name} with pg_restore --jobs={options.jobs}")
        run = pgtools.run_pg_restore(
            bin_dir,
            scratch.target,
            dump,
            jobs=options.jobs,
            keep_owners_and_privileges=with_privileges,
            server_major=target_major,
            restore_major=restore_major,
        )
        report.restore_seconds = run.seconds
        report.differences += run.errors
        report.warnings += run.tolerated
        log(f"pg_restore finished in {run.seconds:.1f}s with exit code {run.returncode}")
        started = time.monotonic()
        tables = verify.check_tables(scratch.target, manifest["tables"], jobs=options.jobs)
        with scratch.target.connect() as conn:
            catalog = verify.check_catalog(conn, manifest)
        restored = pgtools.database_schema(bin_dir, scratch.target, with_privileges=with_privileges)
        report.verify_seconds = time.monotonic() - started
        report.tables, report.rows = tables.tables, tables.rows
        report.differences += tables.differences + catalog + pgtools.schema_differences(archived, restored)
        log(
            f"verified {report.tables} tables and {report.rows:,} rows against the manifest in "
            f"{report.verify_seconds:.1f}s: {len(report.differences)} differences"
        )
        if report.passed and keep is not None:
            keep(scratch)
