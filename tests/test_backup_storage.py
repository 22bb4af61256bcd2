"""The S3 side of backups against real S3 APIs (moto's server and SeaweedFS): multipart streaming, stalls,
lifecycle, catalog, orphans."""

import base64
import hashlib
import io
import os
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from support.backups import FOREIGN_KEYS, put_foreign_keys

from hotpot_devstack.backups import write_backup_record
from hotpot_devstack.s3 import FaultyS3Proxy
from hotpot_orchestration.backups.catalog import (
    Orphans,
    backup_keys,
    latest_backup,
    list_backups,
    load_backup,
    record_verification,
    remove_orphans,
)
from hotpot_orchestration.backups.stream import (
    MIN_PART_BYTES,
    MultipartUpload,
    UploadStalled,
    abort_rule_id,
    ensure_abort_incomplete_uploads,
    same_s3_checksum,
)

SSE = {"ServerSideEncryption": "AES256"}


@pytest.fixture
def bucket(s3_server):
    name = f"backups-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(name)
    return name


class FailingStream(io.RawIOBase):
    """Yields `good` bytes, then fails like a producer that died mid-stream."""

    def __init__(self, good: int):
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.left <= 0:
            raise OSError("the producer died")
        n = min(len(buffer), self.left, 1 << 20)
        buffer[:n] = b"x" * n
        self.left -= n
        return n


def _leftovers(client, bucket):
    objects = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return objects, uploads


def test_stream_becomes_one_encrypted_object_with_its_sha256(s3_server, bucket):
    client = s3_server.client()
    data = bytes(range(256)) * (MIN_PART_BYTES * 2 // 256) + b"tail"  # two full parts and a short one
    progress = []
    with MultipartUpload(
        client,
        bucket,
        "k.dump",
        part_size=MIN_PART_BYTES,
        extra_args=SSE,
        metadata={"database": "hotpot"},
        on_progress=progress.append,
        progress_interval=0,
    ) as upload:
        upload.consume(io.BytesIO(data))
        assert _leftovers(client, bucket)[0] == []  # nothing visible before completion
        uploaded = upload.complete()
    assert uploaded.parts == 3 and uploaded.bytes == len(data)
    assert uploaded.sha256 == hashlib.sha256(data).hexdigest()
    parts = [
        hashlib.sha256(data[at : at + MIN_PART_BYTES]).digest() for at in range(0, len(data), MIN_PART_BYTES)
    ]
    s3_checksum = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
    assert uploaded.checksum_sha256 == f"{s3_checksum}-3"
    head = client.head_object(Bucket=bucket, Key="k.dump", ChecksumMode="ENABLED")
    assert head["Metadata"] == {"database": "hotpot"}
    assert same_s3_checksum(head["ChecksumSHA256"], uploaded.checksum_sha256)
    assert head["ServerSideEncryption"] == "AES256"
    assert client.get_object(Bucket=bucket, Key="k.dump")["Body"].read() == data
    assert progress[-1].bytes == len(data) and progress[-1].bytes_per_second > 0
    assert _leftovers(client, bucket)[1] == []


@pytest.mark.parametrize("good_bytes", [0, MIN_PART_BYTES + 123])
def test_a_failing_stream_leaves_no_object_and_no_upload(s3_server, bucket, good_bytes):
    client = s3_server.client()
    with pytest.raises(OSError, match="producer died"):  # noqa: SIM117 - the upload must see the error
        with MultipartUpload(client, bucket, "k.dump", part_size=MIN_PART_BYTES, extra_args=SSE) as upload:
            upload.consume(FailingStream(good_bytes))
    assert _leftovers(client, bucket) == ([], [])


def test_an_empty_stream_is_not_stored(s3_server, bucket):
    client = s3_server.client()
    with pytest.raises(RuntimeError, match="empty"):  # noqa: SIM117
        with MultipartUpload(client, bucket, "k.dump", part_size=MIN_PART_BYTES, extra_args=SSE) as upload:
            upload.consume(io.BytesIO(b""))
            upload.complete()
    assert _leftovers(client, bucket) == ([], [])


def test_lifecycle_rule_is_added_once_and_other_rules_are_kept(s3_server, bucket):
    client = s3_server.client()
    other = {
        "ID": "expire-logs",
        "Status": "Enabled",
        "Filter": {"Prefix": "logs/"},
        "Expiration": {"Days": 9},
    }
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [other]})
    assert ensure_abort_incomplete_uploads(client, bucket, "database/") is True
    assert ensure_abort_incomplete_uploads(client, bucket, "database/") is False
    rules = {rule["ID"]: rule for rule in client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    ours = abort_rule_id("database/")
    assert rules.keys() == {"expire-logs", ours}
    assert rules[ours]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert rules[ours]["Filter"] == {"Prefix": "database/"}


def test_two_backup_prefixes_in_one_bucket_keep_a_rule_each(s3_server, bucket):
    client = s3_server.client()
    assert ensure_abort_incomplete_uploads(client, bucket, "staging/") is True
    assert ensure_abort_incomplete_uploads(client, bucket, "production/") is True
    # Each prefix's next backup finds its own rule still there and changes nothing.
    assert ensure_abort_incomplete_uploads(client, bucket, "staging/") is False
    assert ensure_abort_incomplete_uploads(client, bucket, "production/") is False
    rules = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert sorted(rule["Filter"]["Prefix"] for rule in rules) == ["production/", "staging/"]
    assert len({rule["ID"] for rule in rules}) == 2


def test_an_existing_bucket_wide_abort_rule_is_enough(s3_server, bucket):
    client = s3_server.client()
    rule = {
        "ID": "ops",
        "Status": "Enabled",
        "Filter": {"Prefix": ""},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
    }
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [rule]})
    assert ensure_abort_incomplete_uploads(client, bucket, "database/") is False


def test_listing_returns_only_our_backups_oldest_first(s3_server, bucket):
    client = s3_server.client()
    put_foreign_keys(client, bucket)
    now = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
    newest_good = write_backup_record(client, bucket, "database/", "hotpot", now - timedelta(days=1), ok=True)
    write_backup_record(client, bucket, "database/", "hotpot", now, ok=False)
    write_backup_record(client, bucket, "database/", "hotpot", now - timedelta(days=2), ok=None)
    write_backup_record(client, bucket, "database/", "analytics", now, ok=True)

    backups = list_backups(client, bucket, "database/", "hotpot")
    assert [b.created_at for b in backups] == [now - timedelta(days=d) for d in (2, 1, 0)]
    assert [b.verified for b in backups] == [False, True, False]
    assert len(list_backups(client, bucket, "database/")) == 4

    latest = latest_backup(client, bucket, "database/", database="hotpot")
    assert (latest.dump_key, latest.manifest_key) == newest_good
    assert (
        latest_backup(client, bucket, "database/", verified_only=False, database="hotpot").created_at == now
    )
    assert latest_backup(client, bucket, "database/", partition="2026-02-27", database="hotpot") is None
    assert latest_backup(client, bucket, "database/", partition="2026-02-28").partition == "2026-02-28"


def test_verification_is_recorded_in_the_manifest(s3_server, bucket):
    client = s3_server.client()
    _, manifest_key = write_backup_record(
        client, bucket, "database/", "hotpot", datetime(2026, 3, 1, tzinfo=UTC)
    )
    backup = load_backup(client, bucket, "database/", manifest_key)
    assert not backup.verified
    record_verification(client, bucket, backup, ok=True, detail="read in full", extra_args=SSE)
    again = load_backup(client, bucket, "database/", manifest_key)
    assert again.verified and again.manifest["verification"]["detail"] == "read in full"
    assert client.head_object(Bucket=bucket, Key=manifest_key)["ServerSideEncryption"] == "AES256"


class EndlessStream(io.RawIOBase):
    """Bytes for as long as they are read, up to `limit` (a bound, never reached by a test that passes)."""

    def __init__(self, limit: int = 512 * 2**20):
        self.left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = b"y" * n
        self.left -= n
        return n


def test_s3_storing_no_part_stops_the_upload_after_the_stall_bound(s3_server, bucket):
    stalls = []
    with FaultyS3Proxy(s3_server, "stall") as stalling:
        client = stalling.client()
        started = time.monotonic()
        with pytest.raises(UploadStalled) as stalled:  # noqa: SIM117 - the upload must see the error
            with MultipartUpload(
                client,
                bucket,
                "k.dump",
                part_size=MIN_PART_BYTES,
                extra_args=SSE,
                stall_seconds=2,
                on_stall=lambda: stalls.append(time.monotonic()),
            ) as upload:
                upload.consume(EndlessStream())
        took = time.monotonic() - started
        assert took < 30, f"stalled for {took:.1f} s: botocore's attempts x its read timeout?"
        assert stalled.value.part == 1 and "part 1 of s3://" in str(stalled.value)
        assert len(stalls) == 1
        # The parts in flight when S3 stalled (at most 3 of 8 MiB in the 32 MiB budget), no more.
        assert stalling.parts_received <= upload.in_flight
    assert _leftovers(s3_server.client(), bucket) == ([], [])


def test_a_producer_that_stops_writing_is_a_stall_too(s3_server, bucket):
    read_end, write_end = os.pipe()
    os.write(write_end, b"z" * 32768)  # then nothing: the producer hangs without closing its output

    def stop_the_producer():
        os.close(write_end)  # what killing pg_dump does to its pipe

    with open(read_end, "rb", buffering=0) as stream, pytest.raises(UploadStalled) as stalled:  # noqa: SIM117
        with MultipartUpload(
            s3_server.client(),
            bucket,
            "k.dump",
            part_size=MIN_PART_BYTES,
            extra_args=SSE,
            stall_seconds=1,
            on_stall=stop_the_producer,
        ) as upload:
            upload.consume(stream)
    assert stalled.value.part is None and "the stream gave no bytes" in str(stalled.value)
    assert _leftovers(s3_server.client(), bucket) == ([], [])


def put_dump_without_manifest(client, bucket: str, db: str, created_at: datetime, **metadata) -> str:
    """An object where a backup of `db` would put its dump, with `metadata`."""
    dump_key, _ = backup_keys("database/", db, created_at.date().isoformat(), created_at)
    client.put_object(Bucket=bucket, Key=dump_key, Body=b"PGDMP", Metadata=metadata)
    return dump_key


def test_orphans_are_removed_only_when_ours_without_a_manifest_and_old_enough(s3_server, bucket):
    client = s3_server.client()
    put_foreign_keys(client, bucket)
    created = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
    good = write_backup_record(client, bucket, "database/", "hotpot", created, ok=True)
    orphan = put_dump_without_manifest(
        client, bucket, "hotpot", created, database="hotpot", partition="2026-03-01"
    )
    other_database = put_dump_without_manifest(
        client, bucket, "analytics", created, database="analytics", partition="2026-03-01"
    )
    not_ours = put_dump_without_manifest(client, bucket, "hotpot", created)  # no backup metadata
    upload_key, _ = backup_keys("database/", "hotpot", "2026-03-01", created)
    # Killed after its first part (moto reports no real start time for an upload, only its parts' times).
    killed = client.create_multipart_upload(Bucket=bucket, Key=upload_key)
    client.upload_part(
        Bucket=bucket, Key=upload_key, UploadId=killed["UploadId"], PartNumber=1, Body=b"x" * MIN_PART_BYTES
    )
    foreign_upload = client.create_multipart_upload(Bucket=bucket, Key="database/hotpot/notes.txt")

    now = datetime.now(UTC) + timedelta(seconds=2)  # S3's times have whole seconds
    kept = remove_orphans(client, bucket, "database/", "hotpot", older_than=timedelta(hours=1), now=now)
    assert kept == Orphans()
    removed = remove_orphans(client, bucket, "database/", "hotpot", older_than=timedelta(0), now=now)
    assert removed == Orphans(dumps=[orphan], uploads=[upload_key])

    keys = {item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert orphan not in keys
    assert {*good, other_database, not_ours, *FOREIGN_KEYS} <= keys
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [
        ("database/hotpot/notes.txt", foreign_upload["UploadId"])
    ]
