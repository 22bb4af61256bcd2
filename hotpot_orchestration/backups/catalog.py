"""Where backups live in the bucket and what their manifests say.

Layout (a contract: restore drills and release gates read it):

    {prefix}{dbname}/{YYYY-MM-DD partition}/{dbname}-{YYYYmmddTHHMMSSZ}-{run}.dump
    {prefix}{dbname}/{YYYY-MM-DD partition}/{dbname}-{YYYYmmddTHHMMSSZ}-{run}.manifest.json

`{run}` is 8 hex digits drawn by each backup, so two backups of one partition taken in the same second
never share a key (keys written before it, without `-{run}`, are still read). The manifest is written only
after its dump is complete, so a backup exists once its manifest does. Only keys of exactly this shape whose
manifest carries `MANIFEST_FORMAT` and names the dump beside it count as backups: anything else under the
prefix belongs to someone else and is neither listed nor ever deleted. The one exception is `remove_orphans`:
a dump of this shape that carries this project's object metadata but has no manifest, or an unfinished
upload to such a key, once old enough that its backup cannot still be running.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

MANIFEST_FORMAT = "hotpot-backup-manifest/1"
DUMP_SUFFIX = ".dump"
MANIFEST_SUFFIX = ".manifest.json"
_STAMP = "%Y%m%dT%H%M%SZ"
_STEM = (
    r"(?P<database>[^/]+)/(?P<partition>\d{4}-\d{2}-\d{2})/(?P=database)-(?P<stamp>\d{8}T\d{6}Z)"
    r"(?:-(?P<run>[0-9a-f]{8}))?"
)
_MANIFEST_KEY = re.compile(_STEM + re.escape(MANIFEST_SUFFIX))
_DUMP_KEY = re.compile(_STEM + re.escape(DUMP_SUFFIX))


@dataclass(frozen=True)
class Backup:
    dump_key: str
    manifest_key: str
    partition: str
    created_at: datetime
    manifest: dict[str, Any]
    verified: bool


def backup_keys(prefix: str, database: str, partition: str, created_at: datetime) -> tuple[str, str]:
    """(dump key, manifest key) of a new backup of `database` taken at `created_at` for `partition`: a new
    pair on every call."""
    if "/" in database:
        raise ValueError(f"database name {database!r} cannot be part of an S3 key layout that uses '/'")
    stamp = created_at.astimezone(UTC).strftime(_STAMP)
    stem = f"{prefix}{database}/{partition}/{database}-{stamp}-{secrets.token_hex(4)}"
    return stem + DUMP_SUFFIX, stem + MANIFEST_SUFFIX


def new_manifest(
    *,
    database: str,
    partition: str,
    created_at: datetime,
    dump_key: str,
    dump_bytes: int,
    sha256: str,
    part_bytes: int,
    s3_checksum_sha256: str,
    compression: str,
    server_version: str,
    server_version_num: int,
    pg_dump_version: str,
    snapshot: str,
    tables: list[dict[str, Any]],
    sequences: list[dict[str, Any]],
    extensions: list[dict[str, Any]],
    large_objects: int,
    restore_point: dict[str, str] | None = None,
    table_data_bytes: int | None = None,
) -> dict[str, Any]:
    """A manifest in the contract's field order; `verification` stays null until the archive is read back.
    `restore_point` ({"name", "lsn"}) names the snapshot's WAL position for point-in-time drills.
    `table_data_bytes` is the dumped tables' data size (pg_table_size: heap + TOAST, no indexes) in the
    snapshot; manifests written before it was recorded lack it, so readers use `.get`."""
    return {
        "format": MANIFEST_FORMAT,
        "database": database,
        "partition": partition,
        "created_at": created_at.astimezone(UTC).isoformat(),
        "dump_key": dump_key,
        "dump_bytes": dump_bytes,
        "sha256": sha256,
        # S3's checksum of the object, over parts of `part_bytes` (see stream.composite_sha256).
        "part_bytes": part_bytes,
        "s3_checksum_sha256": s3_checksum_sha256,
        "compression": compression,
        "server_version": server_version,
        "server_version_num": server_version_num,
        "pg_dump_version": pg_dump_version,
        "snapshot": snapshot,
        "tables": tables,
        "sequences": sequences,
        "extensions": extensions,
        "large_objects": large_objects,
        "table_data_bytes": table_data_bytes,
        "restore_point": restore_point,
        "verification": None,
    }


def read_manifest(client, bucket: str, key: str) -> dict[str, Any]:
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    manifest = json.loads(body)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"s3://{bucket}/{key} is not a {MANIFEST_FORMAT} manifest")
    return manifest


def write_manifest(
    client, bucket: str, key: str, manifest: dict[str, Any], extra_args: dict[str, str]
) -> None:
    client.put_object(
        Bucket=bucket,
        Key=key,
        Body=json.dumps(manifest, indent=2).encode(),
        ContentType="application/json",
        **extra_args,
    )


def is_verified(manifest: dict[str, Any]) -> bool:
    verification = manifest.get("verification")
    return isinstance(verification, dict) and verification.get("ok") is True


def _dump_key_of(manifest_key: str) -> str:
    return manifest_key[: -len(MANIFEST_SUFFIX)] + DUMP_SUFFIX


def _backup_from(key: str, prefix: str, manifest: dict[str, Any]) -> Backup:
    partition = _MANIFEST_KEY.fullmatch(key[len(prefix) :])["partition"]
    return Backup(
        dump_key=_dump_key_of(key),
        manifest_key=key,
        partition=partition,
        created_at=datetime.fromisoformat(manifest["created_at"]),
        manifest=manifest,
        verified=is_verified(manifest),
    )


def load_backup(client, bucket: str, prefix: str, manifest_key: str) -> Backup:
    """The backup whose manifest is at `manifest_key` (a key this project wrote under `prefix`)."""
    if not manifest_key.startswith(prefix) or not _MANIFEST_KEY.fullmatch(manifest_key[len(prefix) :]):
        raise ValueError(f"{manifest_key!r} is not a backup manifest key under {prefix!r}")
    return _backup_from(manifest_key, prefix, read_manifest(client, bucket, manifest_key))


def list_backups(client, bucket: str, prefix: str, database: str | None = None) -> list[Backup]:
    """Every backup this project wrote under `prefix` (of one database if given), oldest first."""
    from botocore.exceptions import ClientError

    listing_prefix = prefix + (f"{database}/" if database else "")
    backups = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=listing_prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if not _MANIFEST_KEY.fullmatch(key[len(prefix) :]):
                continue
            try:
                manifest = read_manifest(client, bucket, key)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") == "NoSuchKey":
                    continue  # deleted between the listing and the read
                raise
            except ValueError:
                continue  # same shape of key, but not our manifest: not ours to list
            if manifest.get("dump_key") == _dump_key_of(key):
                backups.append(_backup_from(key, prefix, manifest))
    return sorted(backups, key=lambda backup: (backup.created_at, backup.dump_key))


def latest_backup(
    client,
    bucket: str,
    prefix: str,
    *,
    verified_only: bool = True,
    partition: str | None = None,
    database: str | None = None,
) -> Backup | None:
    """The newest backup (verified by default), optionally of one partition and/or database."""
    candidates = [
        backup
        for backup in list_backups(client, bucket, prefix, database)
        if (backup.verified or not verified_only) and (partition is None or backup.partition == partition)
    ]
    return candidates[-1] if candidates else None


def record_verification(
    client, bucket: str, backup: Backup, *, ok: bool, detail: str, extra_args: dict[str, str]
) -> dict[str, Any]:
    """Store the outcome of a full read of the archive in the manifest; returns the updated manifest."""
    manifest = read_manifest(client, bucket, backup.manifest_key)
    manifest["verification"] = {"verified_at": datetime.now(UTC).isoformat(), "ok": ok, "detail": detail}
    write_manifest(client, bucket, backup.manifest_key, manifest, extra_args)
    return manifest


def delete_backup(client, bucket: str, backup: Backup) -> None:
    """Manifest first: once it is gone the backup is no longer listed, even if deleting the dump fails."""
    client.delete_object(Bucket=bucket, Key=backup.manifest_key)
    client.delete_object(Bucket=bucket, Key=backup.dump_key)


def orphan_age(*, timeout_seconds: int, stall_seconds: int) -> timedelta:
    """How old a dump without a manifest, or an unfinished upload, must be before it is removed: older than
    a backup run can last (its timeout, HOTPOT_BACKUP_TIMEOUT_SECONDS) plus the stall bound its step may take
    to notice it was stopped (HOTPOT_BACKUP_STALL_SECONDS)."""
    return timedelta(seconds=timeout_seconds + stall_seconds)


@dataclass
class Orphans:
    """What `remove_orphans` removed: dumps left without a manifest, and unfinished multipart uploads."""

    dumps: list[str] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)

    def notes(self, bucket: str) -> list[str]:
        """One line per removal, for the log."""
        return [f"deleted s3://{bucket}/{key}: a dump without a manifest" for key in self.dumps] + [
            f"aborted the unfinished upload of s3://{bucket}/{key}" for key in self.uploads
        ]


def remove_orphans(
    client, bucket: str, prefix: str, database: str, *, older_than: timedelta, now: datetime
) -> Orphans:
    """Delete what a killed backup of `database` left behind, once older than `older_than` (longer than a
    backup can last, so no running backup loses its dump or its upload).

    A dump counts only if its key has the backup shape, it has no manifest beside it, and its object
    metadata names this database (every dump this project uploads carries it). Returns what was removed.
    """
    cutoff = now - older_than
    listing_prefix = f"{prefix}{database}/"
    objects: dict[str, datetime] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=listing_prefix):
        for item in page.get("Contents", []):
            objects[item["Key"]] = item["LastModified"]
    removed = Orphans()
    for key, modified in sorted(objects.items()):
        match = _DUMP_KEY.fullmatch(key[len(prefix) :])
        if not match or match["database"] != database or modified >= cutoff:
            continue
        if key[: -len(DUMP_SUFFIX)] + MANIFEST_SUFFIX in objects:
            continue
        metadata = client.head_object(Bucket=bucket, Key=key).get("Metadata", {})
        if metadata.get("database") != database or metadata.get("partition") != match["partition"]:
            continue  # not written by a backup of this project
        client.delete_object(Bucket=bucket, Key=key)
        removed.dumps.append(key)
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=listing_prefix):
        for upload in page.get("Uploads", []):
            key = upload["Key"]
            match = _DUMP_KEY.fullmatch(key[len(prefix) :])
            if not match or match["database"] != database or upload["Initiated"] >= cutoff:
                continue
            if _last_part_stored(client, bucket, key, upload["UploadId"], upload["Initiated"]) >= cutoff:
                continue  # a long backup still sending parts
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
            removed.uploads.append(key)
    return removed


def _last_part_stored(client, bucket: str, key: str, upload_id: str, initiated: datetime) -> datetime:
    """When the upload last stored a part (its start if none): a running backup stores one every few
    seconds, however long it has been running."""
    last = initiated
    for page in client.get_paginator("list_parts").paginate(Bucket=bucket, Key=key, UploadId=upload_id):
        for part in page.get("Parts", []):
            last = max(last, part["LastModified"])
    return last
