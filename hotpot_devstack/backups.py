"""Backups as the nightly job leaves them, for tests and benches, without Dagster.

`take_verified_backup` takes a real backup of a devstack database and runs the archive check on it;
`write_backup_record` writes only what the catalog reads (a stand-in dump object and its manifest), for
retention, freshness and release gates, which never open the dump.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hotpot_orchestration.backups.backup import take_backup
from hotpot_orchestration.backups.catalog import (
    Backup,
    backup_keys,
    latest_backup,
    new_manifest,
    orphan_age,
    record_verification,
    write_manifest,
)
from hotpot_orchestration.backups.stream import MIN_PART_BYTES, PartHasher
from hotpot_orchestration.backups.verify import verify_backup
from hotpot_orchestration.platform.pg import PgTarget
from hotpot_orchestration.settings import load_settings

from .postgres import Postgres
from .s3 import S3Server


def take_verified_backup(postgres: Postgres, s3: S3Server, bucket: str, dbname: str, prefix: str) -> Backup:
    client = s3.client()
    defaults = load_settings({})
    take_backup(
        target=PgTarget.from_url(postgres.url_for(dbname)),
        url_variable="HOTPOT_DATABASE_URL",
        bin_dir=postgres.bin_dir,
        connect_s3=lambda: client,
        endpoint=s3.endpoint_url,
        bucket=bucket,
        prefix=prefix,
        partition=datetime.now(UTC).strftime("%Y-%m-%d"),
        encryption={},
        log=lambda message: None,
        stall_seconds=defaults.backup_stall_seconds,
        orphans_older_than=orphan_age(
            timeout_seconds=defaults.backup_timeout_seconds, stall_seconds=defaults.backup_stall_seconds
        ),
    )
    backup = latest_backup(client, bucket, prefix, verified_only=False, database=dbname)
    verdict = verify_backup(client, bucket, backup, bin_dir=postgres.bin_dir, endpoint=s3.endpoint_url)
    if not verdict.ok:
        raise RuntimeError(f"the backup of {dbname} did not verify: {verdict.detail}")
    record_verification(client, bucket, backup, ok=True, detail=verdict.detail, extra_args={})
    return latest_backup(client, bucket, prefix, database=dbname)


def write_backup_record(
    client, bucket: str, prefix: str, database: str, created_at: datetime, *, ok: bool | None = None
) -> tuple[str, str]:
    """A backup's dump key (holding a stand-in archive) and manifest key, as `postgres_backup` writes them;
    `ok` is the archive check's verdict, None when it has not run. Returns (dump key, manifest key)."""
    partition = created_at.date().isoformat()
    dump_key, manifest_key = backup_keys(prefix, database, partition, created_at)
    stand_in = PartHasher(MIN_PART_BYTES)
    stand_in.update(b"PGDMP")
    client.put_object(Bucket=bucket, Key=dump_key, Body=b"PGDMP")
    manifest = new_manifest(
        database=database,
        partition=partition,
        created_at=created_at,
        dump_key=dump_key,
        dump_bytes=5,
        sha256=stand_in.whole.hexdigest(),
        part_bytes=MIN_PART_BYTES,
        s3_checksum_sha256=stand_in.composite(),
        compression="gzip:6",
        server_version="18.6",
        server_version_num=180006,
        pg_dump_version="18.6",
        snapshot="00000003-00000002-1",
        tables=[],
        sequences=[],
        extensions=[],
        large_objects=0,
    )
    if ok is not None:
        manifest["verification"] = {"verified_at": created_at.isoformat(), "ok": ok, "detail": "test"}
    write_manifest(client, bucket, manifest_key, manifest, {})
    return dump_key, manifest_key
