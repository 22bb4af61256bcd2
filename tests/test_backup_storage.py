"""The S3 side of backups against a real S3 API (moto's server): multipart streaming, lifecycle, catalog."""

import base64
import hashlib
import io
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from support.backups import put_foreign_keys

from hotpot_devstack.backups import write_backup_record
from hotpot_orchestration.backups.catalog import (
    latest_backup,
    list_backups,
    load_backup,
    record_verification,
)
from hotpot_orchestration.backups.stream import (
    ABORT_RULE_ID,
    MIN_PART_BYTES,
    MultipartUpload,
    ensure_abort_incomplete_uploads,
    same_s3_checksum,
)

SSE = {"ServerSideEncryption": "AES256"}


@pytest.fixture
def bucket(s3):
    name = f"backups-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(name)
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


def test_stream_becomes_one_encrypted_object_with_its_sha256(s3, bucket):
    client = s3.client()
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
def test_a_failing_stream_leaves_no_object_and_no_upload(s3, bucket, good_bytes):
    client = s3.client()
    with pytest.raises(OSError, match="producer died"):  # noqa: SIM117 - the upload must see the error
        with MultipartUpload(client, bucket, "k.dump", part_size=MIN_PART_BYTES, extra_args=SSE) as upload:
            upload.consume(FailingStream(good_bytes))
    assert _leftovers(client, bucket) == ([], [])


def test_an_empty_stream_is_not_stored(s3, bucket):
    client = s3.client()
    with pytest.raises(RuntimeError, match="empty"):  # noqa: SIM117
        with MultipartUpload(client, bucket, "k.dump", part_size=MIN_PART_BYTES, extra_args=SSE) as upload:
            upload.consume(io.BytesIO(b""))
            upload.complete()
    assert _leftovers(client, bucket) == ([], [])


def test_lifecycle_rule_is_added_once_and_other_rules_are_kept(s3, bucket):
    client = s3.client()
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
    assert rules.keys() == {"expire-logs", ABORT_RULE_ID}
    assert rules[ABORT_RULE_ID]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert rules[ABORT_RULE_ID]["Filter"] == {"Prefix": "database/"}


def test_an_existing_bucket_wide_abort_rule_is_enough(s3, bucket):
    client = s3.client()
    rule = {
        "ID": "ops",
        "Status": "Enabled",
        "Filter": {"Prefix": ""},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
    }
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [rule]})
    assert ensure_abort_incomplete_uploads(client, bucket, "database/") is False


def test_listing_returns_only_our_backups_oldest_first(s3, bucket):
    client = s3.client()
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


def test_verification_is_recorded_in_the_manifest(s3, bucket):
    client = s3.client()
    _, manifest_key = write_backup_record(
        client, bucket, "database/", "hotpot", datetime(2026, 3, 1, tzinfo=UTC)
    )
    backup = load_backup(client, bucket, "database/", manifest_key)
    assert not backup.verified
    record_verification(client, bucket, backup, ok=True, detail="read in full", extra_args=SSE)
    again = load_backup(client, bucket, "database/", manifest_key)
    assert again.verified and again.manifest["verification"]["detail"] == "read in full"
    assert client.head_object(Bucket=bucket, Key=manifest_key)["ServerSideEncryption"] == "AES256"
