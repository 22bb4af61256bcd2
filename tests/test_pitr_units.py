"""Point-in-time recovery's plain logic: command lines, WAL arithmetic, the wal_archive verdict, settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hotpot_orchestration.pitr.archive import (
    ArchivedWal,
    ArchiverStatus,
    archived_wal,
    first_gap,
    judge,
    next_segment,
)
from hotpot_orchestration.pitr.barman import BarmanCloud
from hotpot_orchestration.pitr.physical import BaseBackup
from hotpot_orchestration.pitr.recover import needed_wal
from hotpot_orchestration.platform.pg import PgTarget
from hotpot_orchestration.settings import SettingsError, load_settings

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SEGMENT = 16 * 1024 * 1024


def status(**changes) -> ArchiverStatus:
    fields = dict(
        archive_mode="on",
        last_archived_wal="00000001000000000000000A",
        last_archived_time=NOW - timedelta(seconds=30),
        failed_count=0,
        last_failed_wal=None,
        last_failed_time=None,
        current_wal="00000001000000000000000B",
    )
    return ArchiverStatus(**{**fields, **changes})


def test_command_lines_use_barman_clouds_layout_compressed_and_encrypted():
    barman = BarmanCloud(
        bucket="b", prefix="pitr/", server_name="hotpot-db", endpoint_url="http://127.0.0.1:9"
    )
    archive = barman.archive_command()
    assert archive.endswith("--gzip --encryption AES256 s3://b/pitr hotpot-db %p")
    assert "--endpoint-url http://127.0.0.1:9" in archive
    assert barman.restore_command().endswith("s3://b/pitr hotpot-db %f %p")
    backup = barman.backup_argv(PgTarget.from_url("postgresql://postgres@127.0.0.1:5432/app"), name="n")
    assert {"--snappy", "--encryption", "AES256", "--immediate-checkpoint"} <= set(backup)
    assert backup[backup.index("--max-archive-size") + 1] == "128MB"  # parts a restore unpacks side by side
    kms = BarmanCloud(bucket="b", prefix="pitr/", server_name="s", kms_key_id="alias/k").archive_command()
    assert "--encryption aws:kms --sse-kms-key-id alias/k" in kms
    delete = BarmanCloud(bucket="b", prefix="", server_name="s").delete_argv(30)
    assert delete[-4:] == ["--retention-policy", "RECOVERY WINDOW OF 30 DAYS", "s3://b", "s"]


def test_segment_arithmetic_crosses_log_boundaries():
    assert next_segment("0000000100000000000000FF", SEGMENT) == "000000010000000100000000"
    assert next_segment("000000020000000A00000001", SEGMENT) == "000000020000000A00000002"
    segments = {name: NOW for name in ("000000010000000000000002", "000000010000000000000004")}
    assert first_gap(ArchivedWal(segments), "000000010000000000000002", SEGMENT) == "000000010000000000000003"
    segments["000000010000000000000003"] = NOW
    assert first_gap(ArchivedWal(segments), "000000010000000000000002", SEGMENT) is None
    assert first_gap(ArchivedWal(segments), "000000010000000000000007", SEGMENT) == "000000010000000000000007"


def test_wal_archive_verdicts():
    fresh = ArchivedWal({"00000001000000000000000A": NOW - timedelta(seconds=30)})
    stale = ArchivedWal({"00000001000000000000000A": NOW - timedelta(minutes=10)})
    assert judge(status(), fresh, max_age_seconds=300, now=NOW).passed
    failing = status(failed_count=3, last_failed_wal="00000001000000000000000B", last_failed_time=NOW)
    verdict = judge(failing, fresh, max_age_seconds=300, now=NOW)
    assert (
        not verdict.passed and "archive_command is failing: 00000001000000000000000B" in verdict.description
    )
    # A failure followed by a success is history, not a failing archiver.
    recovered = status(failed_count=3, last_failed_time=NOW - timedelta(minutes=1))
    assert judge(recovered, fresh, max_age_seconds=300, now=NOW).passed
    verdict = judge(status(), stale, max_age_seconds=300, now=NOW)
    assert not verdict.passed and "600 s old (limit 300 s)" in verdict.description
    idle = status(current_wal="00000001000000000000000A")  # nothing written since the last archived one
    assert judge(idle, stale, max_age_seconds=300, now=NOW).passed
    assert not judge(status(archive_mode="off"), fresh, max_age_seconds=300, now=NOW).passed


def test_pitr_settings_defaults_and_bounds():
    settings = load_settings({})
    assert (settings.pitr_prefix, settings.barman_server_name) == ("pitr/", "hotpot-db")
    assert (settings.wal_archive_max_age_seconds, settings.pitr_recovery_window_days) == (300, 30)
    with pytest.raises(SettingsError) as error:
        load_settings(
            {
                "HOTPOT_WAL_ARCHIVE_MAX_AGE_SECONDS": "10",
                "HOTPOT_PITR_RECOVERY_WINDOW_DAYS": "1000000",
                "HOTPOT_BARMAN_SERVER_NAME": "no/slash",
            }
        )
    message = str(error.value)
    assert (
        "HOTPOT_WAL_ARCHIVE_MAX_AGE_SECONDS='10' is not valid: expected a whole number from 30 to 86400"
        in message
    )
    assert "HOTPOT_PITR_RECOVERY_WINDOW_DAYS='1000000' is not valid" in message
    assert "HOTPOT_BARMAN_SERVER_NAME='no/slash' is not valid" in message


def test_base_backup_metadata_shows_sizes_and_duration_beside_the_raw_numbers():
    info = {"cluster_size": 3 * 2**30 // 2, "begin_wal": "000000010000000000000002", "version": 180006}
    backup = BaseBackup("20260301T120000", "hotpot-2026-03-01", info, stored_bytes=52_428_800, seconds=252.3)
    metadata = backup.metadata
    assert (metadata["stored_bytes"], metadata["stored_size"]) == (52_428_800, "50.0 MiB")
    assert (metadata["cluster_bytes"], metadata["cluster_size"]) == (1_610_612_736, "1.5 GiB")
    assert (metadata["duration_seconds"], metadata["duration"]) == (252.3, "4 min 12 s")
    unsized = BaseBackup("id", "name", {}, stored_bytes=0, seconds=3.44).metadata
    assert (unsized["cluster_bytes"], unsized["cluster_size"], unsized["stored_size"]) == (None, None, "0 B")
    assert unsized["duration"] == "3.4 s"


class ListingClient:
    """S3's list_objects_v2 paginator over fixed keys (the listing is all archived_wal reads)."""

    def __init__(self, keys: list[str]):
        self.keys = keys

    def get_paginator(self, name: str):
        assert name == "list_objects_v2"
        return self

    def paginate(self, Bucket: str, Prefix: str):  # noqa: N803 (boto3's argument names)
        yield {"Contents": [{"Key": key, "LastModified": NOW} for key in self.keys if key.startswith(Prefix)]}


def test_the_archive_listing_holds_segments_and_timeline_history_files():
    barman = BarmanCloud(bucket="b", prefix="pitr/", server_name="db")
    wals = f"{barman.server_prefix}wals/"
    archived = archived_wal(
        ListingClient(
            [
                f"{wals}0000000100000000/000000010000000000000002.gz",
                f"{wals}0000000100000000/000000010000000000000002.00000028.backup.gz",
                f"{wals}00000002.history.gz",
                f"{wals}0000000200000000/000000020000000000000003.gz",
            ]
        ),
        barman,
    )
    assert set(archived.segments) == {"000000010000000000000002", "000000020000000000000003"}
    assert archived.history == {"00000002.history": f"{wals}00000002.history.gz"}
    # What a recovery from the first segment may ask for: its timeline from there on, and every history.
    assert needed_wal(archived, "000000010000000000000002") == {
        "000000010000000000000002": f"{wals}0000000100000000/000000010000000000000002.gz",
        "00000002.history": f"{wals}00000002.history.gz",
    }
