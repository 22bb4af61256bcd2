"""Backup domain logic that needs no service: part sizes, key layout, script parsing, retention choice."""

import base64
import hashlib
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hotpot_orchestration.backups.backup import PgDump, expected_max_dump_bytes
from hotpot_orchestration.backups.catalog import Backup, backup_keys, new_manifest, orphan_age
from hotpot_orchestration.backups.errors import (
    CredentialsRefused,
    TransientBackupError,
    database_error,
    s3_error,
)
from hotpot_orchestration.backups.retention import plan_retention
from hotpot_orchestration.backups.stream import (
    MIN_PART_BYTES,
    S3_MAX_PARTS,
    MiB,
    PartHasher,
    composite_sha256,
    plan_part_size,
)
from hotpot_orchestration.backups.verify import ArchiveContents, compare, parse_restore_script
from hotpot_orchestration.platform.pg import PgTarget

TB = 10**12


@pytest.mark.parametrize("expected", [0, 1, 80 * 10**9, TB, 2**40, 3 * TB])
def test_part_size_fits_the_expected_size_in_s3s_part_limit(expected):
    size = plan_part_size(expected)
    assert size % MiB == 0 and size >= MIN_PART_BYTES
    assert size * S3_MAX_PARTS >= expected


def test_part_size_stays_small_for_small_databases_and_fits_a_terabyte():
    assert plan_part_size(expected_max_dump_bytes(10 * 2**30)) == MIN_PART_BYTES
    assert plan_part_size(TB) * S3_MAX_PARTS >= TB
    assert plan_part_size(TB) <= 100 * MiB


def test_key_layout_is_the_contract():
    created = datetime(2026, 3, 1, 2, 0, 7, tzinfo=UTC)
    dump, manifest = backup_keys("database/", "hotpot", "2026-02-28", created)
    assert re.fullmatch(r"database/hotpot/2026-02-28/hotpot-20260301T020007Z-[0-9a-f]{8}\.dump", dump)
    assert manifest == dump.removesuffix(".dump") + ".manifest.json"


def test_two_backups_in_the_same_second_never_share_a_key():
    created = datetime(2026, 3, 1, 2, 0, 7, tzinfo=UTC)
    keys = {backup_keys("database/", "hotpot", "2026-02-28", created) for _ in range(1000)}
    assert len(keys) == 1000


def test_orphans_wait_longer_than_a_backup_run_can_last():
    assert orphan_age(timeout_seconds=43200, stall_seconds=300) == timedelta(hours=12, minutes=5)


@pytest.mark.parametrize(
    ("version", "option"),
    [
        ("12.22", "--compress=1"),
        ("15.18", "--compress=1"),
        ("16.4", "--compress=gzip:1"),
        ("18.1", "--compress=gzip:1"),
    ],
)
def test_compression_is_spelled_the_way_each_pg_dump_accepts(version, option):
    assert PgDump(path=Path("pg_dump"), version=version, compression="gzip:1").compress_option == option


def test_manifest_fields_are_the_contract():
    manifest = new_manifest(
        database="hotpot",
        partition="2026-02-28",
        created_at=datetime(2026, 3, 1, 2, 0, 7, tzinfo=UTC),
        dump_key="k",
        dump_bytes=1,
        sha256="00",
        part_bytes=MIN_PART_BYTES,
        s3_checksum_sha256="AA==-1",
        compression="gzip:6",
        server_version="18.6",
        server_version_num=180006,
        pg_dump_version="18.6",
        snapshot="00000003-0000001B-1",
        tables=[],
        sequences=[],
        extensions=[],
        large_objects=0,
    )
    assert list(manifest) == [
        "format", "database", "partition", "created_at", "dump_key", "dump_bytes", "sha256", "part_bytes",
        "s3_checksum_sha256", "compression", "server_version", "server_version_num", "pg_dump_version",
        "snapshot", "tables", "sequences", "extensions", "large_objects", "table_data_bytes",
        "restore_point", "verification",
    ]  # fmt: skip
    assert manifest["format"] == "hotpot-backup-manifest/1"
    assert manifest["created_at"] == "2026-03-01T02:00:07+00:00"
    assert manifest["verification"] is None


def test_an_older_pg_dump_is_refused_with_both_versions():
    tool = PgDump(path=Path("/usr/lib/postgresql/15/bin/pg_dump"), version="15.18", compression="gzip:6")
    message = tool.refusal("18.6", 18)
    assert "15.18" in message and "18.6" in message and "HOTPOT_PG_BIN_DIR" in message
    assert PgDump(path=Path("pg_dump"), version="18.1", compression="zstd:3").refusal("17.4", 17) is None


TARGET = PgTarget(host="db.internal", port=5432, user="backup", password="s3cr3t-Pa55", dbname="hotpot")


@pytest.mark.parametrize(
    ("message", "kind", "words"),
    [
        (
            'connection failed: FATAL:  password authentication failed for user "backup"',
            CredentialsRefused,
            "HOTPOT_DATABASE_URL's password was refused",
        ),
        (
            'FATAL:  role "backup" does not exist',
            CredentialsRefused,
            "HOTPOT_DATABASE_URL's user does not exist",
        ),
        ("connection refused\n\tIs the server running on that host", TransientBackupError, "cannot reach"),
        ("FATAL:  the database system is starting up", TransientBackupError, "cannot reach"),
    ],
)
def test_database_errors_name_the_refused_setting_or_are_transient(message, kind, words):
    error = database_error(message, TARGET, "HOTPOT_DATABASE_URL")
    assert type(error) is kind
    assert words in str(error)
    assert "postgresql://backup@db.internal:5432/hotpot" in str(error)


def test_database_errors_never_repeat_the_password():
    error = database_error("could not connect to postgresql://backup:s3cr3t-Pa55@db/hotpot", TARGET, "X")
    assert "s3cr3t-Pa55" not in str(error)


SCRIPT = b'''\
--
-- Name: f(); Type: FUNCTION; Schema: public; Owner: postgres
--

CREATE FUNCTION public.f() RETURNS void AS $$
COPY public.decoy (a) FROM stdin;
$$ LANGUAGE sql;

--
-- Data for Name: Order Items; Type: TABLE DATA; Schema: Odd "Schema"; Owner: postgres
--

COPY "Odd ""Schema"""."Order Items" (id, "Note.") FROM stdin;
1\ta\\nb
2\t\\N
\\.


--
-- Data for Name: empty; Type: TABLE DATA; Schema: public; Owner: postgres
--

COPY public.empty  FROM stdin;
\\.


--
-- Name: My.Seq; Type: SEQUENCE SET; Schema: public; Owner: postgres
--

SELECT pg_catalog.setval('public."My.Seq"', 1, true);
SELECT pg_catalog.setval('"it''s"."s"', 7, false);

--
-- Data for Name: 16541..16542; Type: BLOBS; Schema: -; Owner: postgres
--

BEGIN;
SELECT pg_catalog.lo_open('16541', 131072);
SELECT pg_catalog.lowrite(0, '\\x68');
SELECT pg_catalog.lo_close(0);
SELECT pg_catalog.lo_open('16542', 131072);
SELECT pg_catalog.lo_close(0);
COMMIT;
'''


def test_restore_script_parsing_counts_rows_of_quoted_tables_only_in_data_entries():
    contents = parse_restore_script(SCRIPT.split(b"\n"))
    assert contents.tables == {('Odd "Schema"', "Order Items"): 2, ("public", "empty"): 0}
    assert contents.sequences == {("public", "My.Seq"), ("it's", "s")}
    assert contents.large_objects == {16541, 16542}


def _manifest(**changes):
    manifest = {
        "dump_bytes": 10,
        "sha256": "ab",
        "tables": [{"schema": "public", "name": "orders", "rows": 3}],
        "sequences": [{"schema": "public", "name": "orders_id_seq", "last_value": 3, "is_called": True}],
        "large_objects": 1,
    }
    return manifest | changes


def test_compare_accepts_a_matching_archive_and_names_each_difference():
    contents = ArchiveContents({("public", "orders"): 3}, {("public", "orders_id_seq")}, {16400})
    matching = {"sha256": "ab", "size": 10, "s3_checksum": "Yw==-2"}
    assert compare(_manifest(), contents, **matching, stored_s3_checksum="Yw==-2") == []
    assert compare(_manifest(), contents, **matching, stored_s3_checksum="Yw==") == []
    assert "bytes give Yw==-2" in compare(_manifest(), contents, **matching, stored_s3_checksum="Zg==-2")[0]
    short = ArchiveContents({("public", "orders"): 2, ("public", "extra"): 0}, set(), set())
    problems = compare(_manifest(), short, sha256="cd", size=9, s3_checksum="Yw==-2", stored_s3_checksum=None)
    text = "\n".join(problems)
    for words in (
        "9 bytes",
        "SHA-256",
        "no SHA-256 checksum",
        "public.extra",
        "2 rows",
        "orders_id_seq",
        "large objects",
    ):
        assert words in text


@pytest.mark.parametrize("chunk", [1, 7, 8, 1000])
def test_part_hasher_gives_s3s_checksum_whatever_the_chunk_size(chunk):
    data = bytes(range(256)) * 3 + b"tail"  # parts of 8 bytes, the last one short
    hasher = PartHasher(part_size=8)
    for start in range(0, len(data), chunk):
        hasher.update(data[start : start + chunk])
    parts = [hashlib.sha256(data[start : start + 8]).digest() for start in range(0, len(data), 8)]
    combined = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
    assert hasher.composite() == composite_sha256(parts) == f"{combined}-{len(parts)}"
    assert hasher.whole.hexdigest() == hashlib.sha256(data).hexdigest()


NOW = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)


def _backups(days: int, failed_newest: int) -> list[Backup]:
    """A backup a night for `days` nights, oldest first; the newest `failed_newest` failed verification."""
    backups = []
    for age in range(days - 1, -1, -1):
        created = NOW - timedelta(days=age)
        backups.append(
            Backup(
                dump_key=f"database/hotpot/{created:%Y-%m-%d}/hotpot-{created:%Y%m%dT%H%M%SZ}.dump",
                manifest_key="",
                partition=f"{created:%Y-%m-%d}",
                created_at=created,
                manifest={},
                verified=age >= failed_newest,
            )
        )
    return backups


def test_retention_deletes_past_the_window_when_enough_good_backups_remain():
    plan = plan_retention(_backups(40, failed_newest=10), now=NOW, retention_days=30, min_keep=7)
    assert len(plan.delete) == 9  # ages 31..39; age 30 is exactly on the cutoff
    assert all(NOW - backup.created_at > timedelta(days=30) for backup in plan.delete)
    assert plan.guarded == []


@pytest.mark.parametrize("retention_days", [1, 5, 10, 15])
def test_retention_never_leaves_fewer_than_min_keep_verified_backups(retention_days):
    backups = _backups(40, failed_newest=10)
    plan = plan_retention(backups, now=NOW, retention_days=retention_days, min_keep=7)
    kept_verified = [backup for backup in plan.keep if backup.verified]
    assert len(kept_verified) >= 7
    newest_verified = [backup for backup in backups if backup.verified][-7:]
    assert set(b.dump_key for b in newest_verified) <= set(b.dump_key for b in plan.keep)
    assert not set(b.dump_key for b in plan.delete) & set(b.dump_key for b in plan.keep)
    # Everything newer than the window is kept, failed or not.
    assert all(
        backup in plan.keep for backup in backups if NOW - backup.created_at < timedelta(days=retention_days)
    )


def test_retention_with_only_failed_backups_inside_the_window_keeps_the_last_good_ones():
    plan = plan_retention(_backups(40, failed_newest=10), now=NOW, retention_days=5, min_keep=7)
    assert [b.partition for b in plan.guarded] == [
        f"{NOW - timedelta(days=age):%Y-%m-%d}" for age in range(16, 9, -1)
    ]
    assert len(plan.keep) == 5 + 1 + 7  # ages 0..5 (inside the window) and the 7 guarded
    assert len(plan.delete) == 40 - len(plan.keep)


def test_retention_with_no_backups_deletes_nothing():
    plan = plan_retention([], now=NOW, retention_days=30, min_keep=7)
    assert plan.delete == plan.keep == plan.guarded == []


@pytest.mark.parametrize(
    ("code", "status", "transient"),
    [
        ("BadDigest", 400, True),  # a part damaged on the way: the next attempt sends it again
        ("SlowDown", 503, True),
        ("InternalError", 500, True),
        ("InvalidArgument", 400, False),
        ("AccessDenied", 403, False),
    ],
)
def test_s3_errors_that_may_pass_are_transient(code, status, transient):
    from botocore.exceptions import ClientError

    error = ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "UploadPart",
    )
    assert s3_error(error, "http://s3", "uploading").transient is transient
