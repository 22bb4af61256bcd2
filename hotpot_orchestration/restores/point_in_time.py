"""restore_database_job's point-in-time mode.

The moment is recovered into a scratch server (`pitr.recover`), paused there and read-only. pg_dump copies
the database out of it, and the copy is restored, verified and put in place exactly as a nightly backup is
(`procedure.restore_dump`, `guard`). What it is verified against is read from the recovered server itself,
in the same instant (replay is paused): every table's row count, the sequences, extensions, large objects
and the schema.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from hotpot_orchestration.backups.catalog import Backup
from hotpot_orchestration.backups.snapshot import read_inventory
from hotpot_orchestration.pitr.recover import Recovered, RecoveryError
from hotpot_orchestration.platform import proc
from hotpot_orchestration.platform.pg import PgTarget, tool_version
from hotpot_orchestration.restores.download import work_dir
from hotpot_orchestration.restores.procedure import (
    RestoreOptions,
    RestoreReport,
    prepare,
    restore_dump,
)
from hotpot_orchestration.restores.scratch import ScratchDatabase

# The copy is read once, by pg_restore on this machine: light compression keeps pg_dump off the critical
# path while it still shrinks the work directory several times.
DUMP_COMPRESSION = "--compress=1"
# A copy that takes longer than this has stalled (a day is far beyond any database this job restores).
DUMP_TIMEOUT_SECONDS = 24 * 3600


def recovered_contents(database: PgTarget, bin_dir: Path, *, dump_bytes: int) -> dict:
    """The recovered database as a manifest describes a backup: what the copy must hold."""
    with database.connect() as conn:
        server_version = conn.execute("SHOW server_version").fetchone()[0]
        version_num = int(conn.execute("SHOW server_version_num").fetchone()[0])
        inventory = read_inventory(conn)
    return {
        "database": database.dbname,
        "dump_bytes": dump_bytes,
        "server_version": server_version,
        "server_version_num": version_num,
        "pg_dump_version": tool_version(bin_dir / "pg_dump"),
        "tables": inventory.tables,
        "sequences": inventory.sequences,
        "extensions": inventory.extensions,
        "large_objects": inventory.large_objects,
    }


def newest_commit(database: PgTarget) -> datetime:
    """The newest transaction replayed: the moment the restored database will show."""
    with database.connect() as conn:
        replayed = conn.execute("SELECT pg_last_xact_replay_timestamp()").fetchone()[0]
    return replayed or datetime.now(UTC)


def dump_database(bin_dir: Path, database: PgTarget, path: Path) -> float:
    """pg_dump -Fc of `database` into `path`; the seconds it took."""
    argv = [str(bin_dir / "pg_dump"), "--format=custom", DUMP_COMPRESSION, f"--file={path}"]
    started = time.monotonic()
    try:
        proc.run(argv, timeout=DUMP_TIMEOUT_SECONDS, env=database.env())
    except proc.CommandFailed as error:
        raise RecoveryError(f"copying the recovered {database.dbname}: {error}") from None
    return time.monotonic() - started


def restore_point_in_time(
    recovered: Recovered,
    dbname: str,
    user: str,
    server: PgTarget,
    bin_dir: Path,
    options: RestoreOptions,
    *,
    keep: Callable[[ScratchDatabase], None],
    avoid: tuple[str, ...] = (),
    log: Callable[[str], None] = print,
) -> RestoreReport:
    """Copy `dbname` out of the recovered server into a scratch database on `server`, verify the copy
    against the recovered original, and `keep` it when nothing differs. The report's backup names the
    recovered moment; its `created_at` is the newest commit recovered."""
    source = recovered.database(dbname, user)
    label = f"{dbname} at {recovered.target.describe()} (base backup {recovered.base_backup_id} and WAL)"
    with work_dir(options.work_dir, log=log) as directory:
        dump = directory / "point-in-time.dump"
        log(f"copying {label} with pg_dump")
        seconds = dump_database(bin_dir, source, dump)
        size = dump.stat().st_size
        manifest = recovered_contents(source, bin_dir, dump_bytes=size)
        backup = Backup(
            dump_key=label,
            manifest_key="",
            partition="",
            created_at=newest_commit(source),
            manifest=manifest,
            verified=True,
        )
        report = RestoreReport(backup=backup, started_at=datetime.now(UTC))
        report.dump_bytes, report.download_seconds = size, seconds
        majors = prepare(report, server, bin_dir, options, log=log)
        restore_dump(
            dump,
            report,
            server,
            bin_dir,
            options,
            kind="restore",
            keep=keep,
            avoid=avoid,
            log=log,
            majors=majors,
        )
    return report
