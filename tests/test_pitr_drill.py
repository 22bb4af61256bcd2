"""The point-in-time drill end to end: a real archiving PostgreSQL, real barman-cloud, real S3 (moto)."""

from __future__ import annotations

import shutil

import pytest
from support.pitr import (
    archive_everything,
    archiving_server,
    barman_of,
    env_of,
    logical_backup,
    scratch_root,
    wait_archived_through,
)

from hotpot_devstack import seed_sample
from hotpot_orchestration.pitr.archive import segment_of
from hotpot_orchestration.pitr.drill import run_drill
from hotpot_orchestration.pitr.physical import take_base_backup
from hotpot_orchestration.pitr.recover import RecoveryError, complete_wal, lsn_value
from hotpot_orchestration.platform.pg import PgTarget

pytestmark = pytest.mark.slow
SEGMENT = 16 * 1024 * 1024


@pytest.fixture
def source(archiving_postgres, s3):
    """An archiving server with the sample database, its first base backup taken."""
    server = archiving_postgres
    seed_sample(server, "app")
    take_base_backup(
        barman_of(server), PgTarget.from_url(server.url), s3.client(), label="test", env=s3.env()
    )
    yield server


@pytest.fixture
def root():
    path = scratch_root()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def drill(server, root):
    return run_drill(
        barman=barman_of(server),
        client=server.wal_archive.s3.client(),
        backup_bucket=server.wal_archive.bucket,
        backup_prefix=f"{server.wal_archive.prefix}database/",
        source=PgTarget.from_url(server.url_for("app")),
        bin_dir=server.bin_dir,
        env=env_of(server),
        log=lambda _: None,
        root=root,
    )


def test_drill_recovers_the_logical_backups_restore_point_exactly_then_the_latest_commit(source, root):
    with source.connect("app") as conn:
        conn.execute("CREATE TABLE after_base (n int)")
        conn.execute("INSERT INTO after_base SELECT generate_series(1, 500)")
    backup = logical_backup(source, "app")
    with source.connect("app") as conn:  # after the restore point: in "latest", not at the restore point
        conn.execute("INSERT INTO after_base SELECT generate_series(501, 800)")
        conn.execute("CREATE TABLE after_logical (n int)")
        conn.execute("INSERT INTO after_logical VALUES (1)")
    archive_everything(source)
    with source.connect() as conn:
        newest = conn.execute("SELECT timestamp FROM pg_last_committed_xact()").fetchone()[0]

    result = drill(source, root)

    manifest = backup.manifest
    assert result.restore_point == manifest["restore_point"]["name"]
    assert result.tables == len(manifest["tables"]) and result.rows == backup.rows
    assert {"schema": "public", "name": "after_base", "rows": 500} in manifest["tables"]
    assert result.recovered_last_commit == newest  # everything archived: nothing lost
    assert result.rpo_seconds == 0
    assert list(root.iterdir()) == []  # the scratch server's directory is gone


def test_a_missing_wal_segment_fails_the_drill_naming_it(source, root):
    logical_backup(source, "app")
    with source.connect("app") as conn:
        conn.execute("CREATE TABLE more (n int)")
        conn.execute("INSERT INTO more SELECT generate_series(1, 1000)")
    archive_everything(source)
    archive_everything(source)
    barman = barman_of(source)
    client = source.wal_archive.s3.client()
    wal_keys = sorted(
        item["Key"]
        for item in client.list_objects_v2(Bucket=barman.bucket, Prefix=barman.server_prefix + "wals/")[
            "Contents"
        ]
        if ".backup" not in item["Key"] and ".history" not in item["Key"]
    )
    missing = wal_keys[-2]  # one in the middle of what recovery needs
    client.delete_object(Bucket=barman.bucket, Key=missing)
    segment = missing.rsplit("/", 1)[1].split(".")[0]

    with pytest.raises(RecoveryError, match=f"WAL segment {segment} is missing"):
        drill(source, root)


def test_a_corrupted_base_backup_file_fails_the_drill(source, root):
    logical_backup(source, "app")
    archive_everything(source)
    barman = barman_of(source)
    client = source.wal_archive.s3.client()
    data_key = next(
        item["Key"]
        for item in client.list_objects_v2(Bucket=barman.bucket, Prefix=barman.server_prefix + "base/")[
            "Contents"
        ]
        if item["Key"].endswith("data.tar.snappy")
    )
    body = bytearray(client.get_object(Bucket=barman.bucket, Key=data_key)["Body"].read())
    for offset in range(len(body) // 3, len(body) // 3 + 64):
        body[offset] ^= 0xFF
    client.put_object(Bucket=barman.bucket, Key=data_key, Body=bytes(body), ServerSideEncryption="AES256")

    with pytest.raises(RecoveryError, match="restoring base backup .* failed"):
        drill(source, root)
    assert list(root.iterdir()) == []


def test_the_nightly_restore_point_reaches_the_archive_at_once_and_one_not_archived_is_named(s3):
    # archive_timeout never fires within the test: only the backup's own WAL switch archives its point.
    with archiving_server(s3, timeout_seconds=3600) as server:
        seed_sample(server, "app")
        barman, client = barman_of(server), s3.client()
        take_base_backup(barman, PgTarget.from_url(server.url), client, label="test", env=s3.env())
        point = logical_backup(server, "app").manifest["restore_point"]
        wait_archived_through(server, point["lsn"])
        (base,) = barman.list_backups(s3.env())
        complete_wal(client, barman, base, restore_point=(point["name"], point["lsn"]))

        with server.connect() as conn:
            now = lsn_value(conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])
        ahead = now + 4 * SEGMENT
        ahead_text = f"{ahead >> 32:X}/{ahead & 0xFFFFFFFF:X}"
        with pytest.raises(
            RecoveryError,
            match=f"restore point 'ahead' at {ahead_text} is in WAL segment "
            f"{segment_of(ahead, '00000001', SEGMENT)}, which is not in s3://.* yet",
        ):
            complete_wal(client, barman, base, restore_point=("ahead", ahead_text))


def test_with_no_commit_archived_after_the_restore_point_the_rpo_counts_from_the_last_before_it(source, root):
    with source.connect("app") as conn:
        conn.execute("CREATE TABLE before_point (n int)")
        committed = conn.execute("SELECT timestamp FROM pg_last_committed_xact()").fetchone()[0]
    with source.connect() as conn:
        # The recovered server's restartpoint lands here, after the commit: what it replays on restarting
        # holds no commit at all.
        conn.execute("CHECKPOINT")
    point = logical_backup(source, "app").manifest["restore_point"]
    wait_archived_through(source, point["lsn"])  # the backup's own switch: nothing archived after it

    result = drill(source, root)

    assert result.recovered_last_commit is not None and result.recovered_last_commit >= committed
    assert result.rpo_seconds is not None
