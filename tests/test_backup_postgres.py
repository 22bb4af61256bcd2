"""Backups of a real PostgreSQL with the real pg_dump / pg_restore into a real S3 API (moto's server)."""

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from support.waiting import wait_until

from hotpot_devstack import Postgres, free_port
from hotpot_devstack.s3 import FaultyS3Proxy
from hotpot_orchestration.backups.backup import GZIP, ZSTD, PgDump, take_backup
from hotpot_orchestration.backups.catalog import list_backups, load_backup
from hotpot_orchestration.backups.errors import BackupError, TransientBackupError
from hotpot_orchestration.backups.snapshot import ExportedSnapshot
from hotpot_orchestration.backups.stream import same_s3_checksum
from hotpot_orchestration.backups.verify import verify_backup
from hotpot_orchestration.platform.pg import PgTarget, PgToolError

pytestmark = pytest.mark.slow

PREFIX = "database/"
SSE = {"ServerSideEncryption": "AES256"}
PG15 = Path("/usr/lib/postgresql/15/bin")

RICH_SCHEMA = """
CREATE SCHEMA menu;
CREATE SCHEMA "Odd Schema";
CREATE TABLE menu.items (id serial PRIMARY KEY, name text NOT NULL, price_cents int NOT NULL);
INSERT INTO menu.items (name, price_cents)
    SELECT 'dish ' || g, 500 + g FROM generate_series(1, 250) g;
CREATE TABLE "Odd Schema"."Order Items" (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "Item.Name" text,
    "qty ""x"" col" int,
    note text
);
INSERT INTO "Odd Schema"."Order Items" ("Item.Name", "qty ""x"" col", note)
    VALUES ('broth', 2, E'multi\\nline'), ('tofu', 1, E'tab\\there'), ('lamb', 3, NULL), ('It''s', 1, '\\\\');
CREATE SEQUENCE "Odd Schema"."Ticket.Seq" START 1000;
SELECT nextval('"Odd Schema"."Ticket.Seq"') FROM generate_series(1, 5);
CREATE SEQUENCE menu.never_used;
CREATE TABLE menu.empty_table ();
CREATE TABLE menu.visits (day date, guests int) PARTITION BY RANGE (day);
CREATE TABLE menu.visits_2026 PARTITION OF menu.visits FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO menu.visits SELECT date '2026-01-01' + g, g % 40 FROM generate_series(0, 99) g;
CREATE TABLE menu.base (id int);
CREATE TABLE menu.child () INHERITS (menu.base);
INSERT INTO menu.base VALUES (1), (2);
INSERT INTO menu.child VALUES (3);
CREATE UNLOGGED TABLE menu.cache (k text, v text);
INSERT INTO menu.cache VALUES ('a', 'b');
CREATE MATERIALIZED VIEW menu.cheap AS SELECT * FROM menu.items WHERE price_cents < 600;
SELECT lo_from_bytea(0, convert_to('receipt #1 for table 7', 'UTF8'));
SELECT lo_from_bytea(0, decode(repeat('00ff', 100000), 'hex'));
SELECT lo_create(0);
"""


@pytest.fixture
def bucket(s3_server):
    name = f"backups-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(name)
    return name


@pytest.fixture
def database(postgres):
    """A new, empty database; dropped afterwards."""
    name = f"backup_{uuid.uuid4().hex[:10]}"
    postgres.create_database(name)
    yield name
    postgres.drop_database(name)


# About 40 MB of dump: several 8 MiB parts, so the dump is surely still streaming after the first one.
BIG_TABLE = (
    "CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g * 31)::text) AS payload "
    "FROM generate_series(1, 800000) g"
)


def assert_nothing_stored(client, bucket: str) -> None:
    """Neither an object nor an upload with parts is left in the bucket."""
    assert client.list_objects_v2(Bucket=bucket).get("Contents", []) == []
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def run_sql(postgres, dbname: str, script: str) -> None:
    with postgres.connect(dbname) as conn:
        conn.execute(script)


def backup(
    postgres,
    s3_server,
    bucket,
    dbname,
    *,
    bin_dir=None,
    url=None,
    compression=None,
    stall_seconds=300,
    orphans_older_than=timedelta(hours=1),
):
    logs = []
    result = take_backup(
        target=PgTarget.from_url(url or postgres.url_for(dbname)),
        url_variable="HOTPOT_DATABASE_URL",
        bin_dir=bin_dir or postgres.bin_dir,
        connect_s3=s3_server.client,
        endpoint=s3_server.endpoint_url,
        bucket=bucket,
        prefix=PREFIX,
        partition="2026-03-01",
        encryption=SSE,
        log=logs.append,
        compression=compression,
        stall_seconds=stall_seconds,
        orphans_older_than=orphans_older_than,
    )
    return result, logs


def backup_failing_while(interfere, postgres, s3_server, bucket, dbname) -> BackupError:
    """The error of a backup of `dbname` taken while `interfere()` runs on a thread of its own."""
    meddler = threading.Thread(target=interfere)
    meddler.start()
    try:
        with pytest.raises(BackupError) as failure:
            backup(postgres, s3_server, bucket, dbname)
    finally:
        meddler.join()
    return failure.value


def fingerprint(postgres, dbname: str) -> dict:
    """Every table's rows, sequence's state and large object's bytes, comparable across databases."""
    out = {}
    with postgres.connect(dbname) as conn:
        tables = conn.execute(
            "SELECT format('%I.%I', n.nspname, c.relname)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname NOT LIKE 'pg_toast%'"
        ).fetchall()
        for (table,) in tables:
            out[table] = conn.execute(
                f"SELECT array_agg(t::text ORDER BY t::text) FROM ONLY {table} t"
            ).fetchone()
        sequences = conn.execute(
            "SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        for (sequence,) in sequences:
            out[sequence] = conn.execute(f"SELECT last_value, is_called FROM {sequence}").fetchone()
        out["large objects"] = conn.execute(
            "SELECT array_agg(lo_get(oid) ORDER BY oid) FROM pg_largeobject_metadata"
        ).fetchone()
    return out


def test_round_trip_of_schemas_quoted_names_sequences_and_large_objects(
    postgres, s3_server, bucket, database, tmp_path
):
    run_sql(postgres, database, RICH_SCHEMA)
    result, logs = backup(postgres, s3_server, bucket, database)
    manifest = result.manifest
    client = s3_server.client()

    tables = {(t["schema"], t["name"]): t["rows"] for t in manifest["tables"]}
    assert tables == {
        ("menu", "items"): 250,
        ("Odd Schema", "Order Items"): 4,
        ("menu", "empty_table"): 0,
        ("menu", "visits_2026"): 100,
        ("menu", "base"): 2,
        ("menu", "child"): 1,
        ("menu", "cache"): 1,
    }
    sequences = {(s["schema"], s["name"]): (s["last_value"], s["is_called"]) for s in manifest["sequences"]}
    assert sequences[("Odd Schema", "Ticket.Seq")] == (1004, True)
    assert sequences[("menu", "never_used")] == (1, False)
    assert manifest["large_objects"] == 3
    assert manifest["server_version_num"] // 10000 == postgres.version
    assert manifest["compression"] == PgDump.in_dir(postgres.bin_dir).compression
    assert {"name": "plpgsql", "version": "1.0"} in manifest["extensions"]
    head = client.head_object(Bucket=bucket, Key=manifest["dump_key"], ChecksumMode="ENABLED")
    assert same_s3_checksum(head["ChecksumSHA256"], manifest["s3_checksum_sha256"])
    assert head["ContentLength"] == manifest["dump_bytes"]
    assert head["ServerSideEncryption"] == "AES256"
    assert any("lifecycle rule" in line for line in logs)

    stored = load_backup(client, bucket, PREFIX, result.manifest_key)
    verdict = verify_backup(client, bucket, stored, bin_dir=postgres.bin_dir, endpoint=s3_server.endpoint_url)
    assert verdict.ok, verdict.detail
    assert verdict.rows == sum(tables.values())

    archive = tmp_path / "backup.dump"
    client.download_file(bucket, manifest["dump_key"], str(archive))
    restored = f"{database}_restored"
    postgres.create_database(restored)
    try:
        subprocess.run(
            [str(postgres.bin_dir / "pg_restore"), "--exit-on-error", "--dbname", restored, str(archive)],
            env=PgTarget.from_url(postgres.url_for(restored)).env(),
            check=True,
            capture_output=True,
        )
        assert fingerprint(postgres, restored) == fingerprint(postgres, database)
    finally:
        postgres.drop_database(restored)


def test_manifest_counts_come_from_the_dumps_snapshot_while_rows_keep_arriving(
    postgres, s3_server, bucket, database
):
    run_sql(postgres, database, "CREATE TABLE orders (id bigserial PRIMARY KEY, note text);")
    run_sql(
        postgres, database, "INSERT INTO orders (note) SELECT md5(g::text) FROM generate_series(1, 200000) g"
    )
    stop, arriving = threading.Event(), threading.Event()

    def keep_ordering():
        with postgres.connect(database) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO orders (note) SELECT 'late' FROM generate_series(1, 50)")
                arriving.set()

    writer = threading.Thread(target=keep_ordering)
    writer.start()
    try:
        assert arriving.wait(30), "no order was inserted beside the backup"
        result, _ = backup(postgres, s3_server, bucket, database)
    finally:
        stop.set()
        writer.join()
    counted = result.manifest["tables"][0]["rows"]
    with postgres.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] > counted > 200000
    client = s3_server.client()
    stored = load_backup(client, bucket, PREFIX, result.manifest_key)
    verdict = verify_backup(client, bucket, stored, bin_dir=postgres.bin_dir, endpoint=s3_server.endpoint_url)
    assert verdict.ok, verdict.detail  # the archive holds exactly the counted rows


def test_extension_configuration_tables_are_counted_with_the_extensions_filter(
    postgres, s3_server, bucket, database
):
    # What pg_extension_config_dump() does inside an extension script, done by hand on a real extension.
    run_sql(
        postgres,
        database,
        """
        CREATE EXTENSION hstore;
        CREATE TABLE public.hstore_settings (id int, value text);
        INSERT INTO public.hstore_settings SELECT g, 'v' FROM generate_series(1, 10) g;
        ALTER EXTENSION hstore ADD TABLE public.hstore_settings;
        UPDATE pg_extension SET extconfig = ARRAY['public.hstore_settings'::regclass::oid],
            extcondition = ARRAY['WHERE id > 7'] WHERE extname = 'hstore';
        CREATE TABLE public.plain (id int);
        """,
    )
    result, _ = backup(postgres, s3_server, bucket, database)
    tables = {(t["schema"], t["name"]): t["rows"] for t in result.manifest["tables"]}
    assert tables == {("public", "hstore_settings"): 3, ("public", "plain"): 0}
    client = s3_server.client()
    stored = load_backup(client, bucket, PREFIX, result.manifest_key)
    verdict = verify_backup(client, bucket, stored, bin_dir=postgres.bin_dir, endpoint=s3_server.endpoint_url)
    assert verdict.ok, verdict.detail


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        ("truncated", "SHA-256 of the object is"),
        ("flipped byte", "SHA-256 of the object is"),
        # The same bytes rewritten by a plain upload: S3 no longer keeps their SHA-256.
        ("checksum dropped", "no SHA-256 checksum"),
    ],
)
def test_a_damaged_archive_fails_verification(postgres, s3_server, bucket, database, damage, named):
    run_sql(postgres, database, RICH_SCHEMA)
    result, _ = backup(postgres, s3_server, bucket, database)
    client = s3_server.client()
    key = result.manifest["dump_key"]
    head = client.head_object(Bucket=bucket, Key=key)
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    if damage == "truncated":
        data = data[:-200]  # the table of contents, at the start, is intact: pg_restore --list passes
    elif damage == "flipped byte":
        data[-300] ^= 0xFF  # inside the last compressed data block
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data), Metadata=head["Metadata"])
    listed = subprocess.run(
        [str(postgres.bin_dir / "pg_restore"), "--list"], input=bytes(data), capture_output=True
    )
    if damage == "truncated":
        assert listed.returncode == 0

    stored = load_backup(client, bucket, PREFIX, result.manifest_key)
    # pg_restore spins forever on some damaged blocks: the watchdog must stop it.
    verdict = verify_backup(
        client, bucket, stored, bin_dir=postgres.bin_dir, endpoint=s3_server.endpoint_url, stall_seconds=2
    )
    assert not verdict.ok
    assert named in verdict.detail


def test_killing_the_dump_mid_stream_leaves_no_object_and_no_upload(postgres, s3_server, bucket, database):
    run_sql(postgres, database, BIG_TABLE)
    client = s3_server.client()
    terminated = []

    with FaultyS3Proxy(s3_server, "none") as watching:

        def terminate_after_first_part():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not watching.parts_stored:
                time.sleep(0.01)
            with postgres.connect() as conn:
                terminated.extend(
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND application_name = 'pg_dump'",
                        (database,),
                    ).fetchall()
                )

        message = str(backup_failing_while(terminate_after_first_part, postgres, watching, bucket, database))
    assert watching.parts_stored >= 1
    assert terminated == [(True,)]
    assert "pg_dump exited with code 1" in message and "nothing was stored" in message
    assert "terminat" in message  # pg_dump's own reason, from its stderr
    assert postgres.password not in message
    assert_nothing_stored(client, bucket)


def test_row_counts_failing_after_the_object_appeared_leave_nothing_behind(
    postgres, s3_server, bucket, database
):
    """The counts run while S3 assembles the object; if they fail, the complete object is deleted again.

    The test takes an exclusive lock on the table while pg_dump copies it out. The lock is granted when
    pg_dump exits, so the count of that table waits on it; the test then terminates the counting backend.
    """
    run_sql(postgres, database, BIG_TABLE)
    client = s3_server.client()
    terminated = []

    def copying_big(admin) -> bool:
        return bool(
            admin.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = %s AND query LIKE 'COPY public.big %%'",
                (database,),
            ).fetchall()
        )

    def block_then_kill_the_count():
        deadline = time.monotonic() + 60
        with postgres.connect(database) as locker, postgres.connect() as admin:
            while time.monotonic() < deadline and not copying_big(admin):
                time.sleep(0.01)
            locker.execute("BEGIN")
            locker.execute("LOCK TABLE big IN ACCESS EXCLUSIVE MODE")  # granted once pg_dump exits
            while time.monotonic() < deadline and not terminated:
                terminated.extend(
                    admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
                        " AND wait_event_type = 'Lock' AND query LIKE 'SELECT count(*)%%'",
                        (database,),
                    ).fetchall()
                )
                time.sleep(0.02)
            locker.execute("ROLLBACK")

    failure = backup_failing_while(block_then_kill_the_count, postgres, s3_server, bucket, database)
    assert terminated == [(True,)]
    assert "reading the snapshot" in str(failure)
    assert_nothing_stored(client, bucket)


def test_zstd_is_chosen_exactly_when_this_pg_dump_can_write_it(postgres, database, tmp_path):
    dumped = subprocess.run(
        [
            str(postgres.bin_dir / "pg_dump"),
            "--format=custom",
            f"--compress={ZSTD}",
            "--file",
            str(tmp_path / "d"),
        ],
        env=PgTarget.from_url(postgres.url_for(database)).env(),
        capture_output=True,
    )
    expected = ZSTD if dumped.returncode == 0 else GZIP
    assert PgDump.in_dir(postgres.bin_dir).compression == expected
    # Asked for by name: the level the project uses; asked for where pg_dump cannot: refused, saying why.
    assert PgDump.in_dir(postgres.bin_dir, "gzip").compression == GZIP
    if dumped.returncode == 0:
        assert PgDump.in_dir(postgres.bin_dir, "zstd:9").compression == "zstd:9"
    else:
        with pytest.raises(PgToolError, match="cannot write zstd: set HOTPOT_PG_BIN_DIR"):
            PgDump.in_dir(postgres.bin_dir, "zstd:9")


def test_the_configured_compression_is_used_and_recorded(postgres, s3_server, bucket, database):
    run_sql(
        postgres,
        database,
        "CREATE TABLE t AS SELECT g, md5(g::text) || repeat(' hotpot', g % 7) AS v"
        " FROM generate_series(1, 20000) g",
    )
    sizes = {}
    for compression in ("gzip:1", "gzip:9"):
        result, _ = backup(postgres, s3_server, bucket, database, compression=compression)
        head = s3_server.client().head_object(Bucket=bucket, Key=result.manifest["dump_key"])
        assert result.manifest["compression"] == head["Metadata"]["compression"] == compression
        sizes[compression] = result.dump_bytes
    assert sizes["gzip:9"] < sizes["gzip:1"]  # the level reached pg_dump


@pytest.mark.skipif(not (PG15 / "pg_dump").exists(), reason="no PostgreSQL 15 client installed")
def test_a_pg_dump_older_than_the_server_is_refused_before_dumping(postgres, s3_server, bucket, database):
    with pytest.raises(BackupError) as refused:
        backup(postgres, s3_server, bucket, database, bin_dir=PG15)
    message = str(refused.value)
    assert "pg_dump 15." in message and f"PostgreSQL {postgres.version}." in message
    assert "HOTPOT_PG_BIN_DIR" in message
    client = s3_server.client()
    assert_nothing_stored(client, bucket)


@pytest.fixture(scope="module")
def postgres15():
    """A PostgreSQL 15 server of the system's packages (postgresql-15), for its own pg_dump 15 to back up."""
    if not (PG15 / "postgres").exists():
        pytest.skip("no PostgreSQL 15 server installed (scripts/bootstrap.sh installs postgresql-15)")
    with Postgres(bin_dir=PG15) as server:
        yield server


def test_postgresql_15s_own_pg_dump_backs_up_a_postgresql_15_server(postgres15, s3_server, bucket):
    """pg_dump 15 takes `--compress=LEVEL` (gzip only), not `gzip:1`: spelled the way this version accepts."""
    database = f"backup15_{uuid.uuid4().hex[:8]}"
    postgres15.create_database(database)
    run_sql(postgres15, database, RICH_SCHEMA)
    result, logs = backup(postgres15, s3_server, bucket, database, bin_dir=PG15)
    manifest = result.manifest
    assert manifest["pg_dump_version"].startswith("15.") and manifest["server_version"].startswith("15.")
    assert manifest["compression"] == GZIP
    assert any("with pg_dump 15." in line and "--compress=1 " in line for line in logs)
    client = s3_server.client()
    stored = load_backup(client, bucket, PREFIX, result.manifest_key)
    verdict = verify_backup(client, bucket, stored, bin_dir=PG15, endpoint=s3_server.endpoint_url)
    assert verdict.ok, verdict.detail
    assert verdict.rows == sum(table["rows"] for table in manifest["tables"]) > 0
    # zstd cannot be asked of it: refused before dumping, naming what to change.
    with pytest.raises(BackupError, match="cannot write zstd: set HOTPOT_PG_BIN_DIR"):
        backup(postgres15, s3_server, bucket, database, bin_dir=PG15, compression="zstd")


def test_a_wrong_password_fails_at_once_naming_the_variable(postgres, s3_server, bucket, database):
    wrong = f"not-the-password-{uuid.uuid4().hex[:8]}"
    url = postgres.url_for(database).replace(f":{postgres.password}@", f":{wrong}@")
    started = time.monotonic()
    with pytest.raises(BackupError) as refused:
        backup(postgres, s3_server, bucket, database, url=url)
    # Refused credentials are not retried: five attempts would wait 1 + 2 + 4 + 8 s between them.
    took = time.monotonic() - started
    assert took < 10, f"refused after {took:.1f} s: retried?"
    assert "HOTPOT_DATABASE_URL's password was refused" in str(refused.value)
    assert wrong not in str(refused.value)
    assert list_backups(s3_server.client(), bucket, PREFIX) == []


def test_an_unreachable_server_is_retried_then_reported():
    target = PgTarget(host="127.0.0.1", port=free_port(), user="backup", password="x", dbname="hotpot")
    started = time.monotonic()
    with pytest.raises(TransientBackupError) as unreachable:  # noqa: SIM117 - entering is what fails
        with ExportedSnapshot(target, url_variable="HOTPOT_DATABASE_URL", connect_attempts=2):
            pass
    assert time.monotonic() - started >= 1  # one backoff wait between the two attempts
    assert f"cannot reach postgresql://backup@127.0.0.1:{target.port}/hotpot" in str(unreachable.value)


def test_two_backups_of_one_partition_started_together_each_get_their_own_key(
    postgres, s3_server, bucket, database
):
    """A scheduled and a manual run in the same second: both stored, each manifest beside its own dump."""
    run_sql(postgres, database, "CREATE TABLE t AS SELECT g FROM generate_series(1, 50000) g")
    start = threading.Barrier(2)
    results, errors = [], []

    def one_backup():
        start.wait(timeout=30)
        # A transient S3 failure gets a second attempt, as the step's RetryPolicy gives it: moto's server
        # sometimes answers 500 to one of two multipart uploads completed at the same moment.
        for attempt in (1, 2):
            try:
                results.append(backup(postgres, s3_server, bucket, database)[0])
                return
            except TransientBackupError as error:
                if attempt == 2:
                    errors.append(error)
            except BaseException as error:
                errors.append(error)
                return

    threads = [threading.Thread(target=one_backup) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and len(results) == 2
    assert results[0].manifest["dump_key"] != results[1].manifest["dump_key"]
    client = s3_server.client()
    listed = list_backups(client, bucket, PREFIX, database)
    assert len(listed) == 2
    for stored in listed:
        data = client.get_object(Bucket=bucket, Key=stored.dump_key)["Body"].read()
        assert hashlib.sha256(data).hexdigest() == stored.manifest["sha256"]
        assert stored.manifest["dump_key"] == stored.dump_key


# Run in a child process that SIGKILLs itself at one point of a backup, as an OOM kill or a lost node would.
KILLED_CHILD = """
import os, signal, sys
from datetime import timedelta
from pathlib import Path
import boto3
from hotpot_orchestration.backups.backup import take_backup
from hotpot_orchestration.platform.pg import PgTarget

url, bin_dir, endpoint, bucket, prefix, operation, part = sys.argv[1:]
client = boto3.client("s3", endpoint_url=endpoint)

def kill(params, **kwargs):
    if operation == "PutObject" or params.get("PartNumber") == int(part):
        os.kill(os.getpid(), signal.SIGKILL)

client.meta.events.register(f"before-parameter-build.s3.{operation}", kill)
take_backup(
    target=PgTarget.from_url(url), url_variable="HOTPOT_DATABASE_URL", bin_dir=Path(bin_dir),
    connect_s3=lambda: client, endpoint=endpoint, bucket=bucket, prefix=prefix, partition="2026-03-01",
    encryption={}, log=print, stall_seconds=300, orphans_older_than=timedelta(hours=1),
)
"""


@pytest.mark.parametrize(
    ("moment", "operation"),
    [("after the dump object completed, before the manifest", "PutObject"), ("mid-upload", "UploadPart")],
)
def test_what_a_killed_backup_leaves_is_removed_by_the_next_one_once_old_enough(
    postgres, s3_server, bucket, database, moment, operation
):
    run_sql(postgres, database, BIG_TABLE)
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED_CHILD,
            postgres.url_for(database),
            str(postgres.bin_dir),
            s3_server.endpoint_url,
            bucket,
            PREFIX,
            operation,
            # Part 4 is sent only once part 1 is stored (3 parts in flight at most).
            "4",
        ],
        env={**os.environ, **s3_server.env()},
        capture_output=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    client = s3_server.client()
    objects = [item["Key"] for item in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    uploads = [upload["Key"] for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    if operation == "PutObject":
        assert len(objects) == 1 and objects[0].endswith(".dump") and uploads == []
    else:
        assert objects == [] and len(uploads) == 1
    left = (objects + uploads)[0]

    # Younger than a backup can last: it may be a running backup's, so it stays.
    young, _ = backup(postgres, s3_server, bucket, database, orphans_older_than=timedelta(hours=1))
    assert young.orphans.dumps == young.orphans.uploads == []
    still = [item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"]]
    still += [upload["Key"] for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    assert left in still

    later, logs = backup(postgres, s3_server, bucket, database, orphans_older_than=timedelta(0))
    if operation == "PutObject":
        assert later.orphans.dumps == [left] and later.orphans.uploads == []
        assert any(f"deleted s3://{bucket}/{left}: a dump without a manifest" in line for line in logs)
    else:
        assert later.orphans.uploads == [left] and later.orphans.dumps == []
        assert any(f"aborted the unfinished upload of s3://{bucket}/{left}" in line for line in logs)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    # What is left is exactly the two good backups, each a dump with its manifest.
    remaining = sorted(item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"])
    backups = list_backups(client, bucket, PREFIX, database)
    assert remaining == sorted([b.dump_key for b in backups] + [b.manifest_key for b in backups])
    assert len(backups) == 2


def backend_sessions(postgres, database: str) -> list[tuple[str, str]]:
    with postgres.connect() as conn:
        return conn.execute(
            "SELECT application_name, state FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()


def test_s3_stalling_every_part_fails_the_backup_within_the_bound_and_releases_everything(
    postgres, s3_server, bucket, database
):
    run_sql(postgres, database, BIG_TABLE)
    with FaultyS3Proxy(s3_server, "stall") as stalling:
        started = time.monotonic()
        with pytest.raises(TransientBackupError) as stalled:
            backup(postgres, stalling, bucket, database, stall_seconds=3)
        seconds = time.monotonic() - started
        message = str(stalled.value)
        assert f"S3 at {stalling.endpoint_url}" in message
        assert "part 1 of" in message and "HOTPOT_BACKUP_STALL_SECONDS=3" in message
        # Bounded by the stall setting, not by botocore's attempts x its 120 s read timeout.
        assert seconds < 60, f"failed after {seconds:.1f} s"
        # The parts in flight when S3 stalled, and not one more: none after the stall, no retries of them.
        assert stalling.parts_received <= 3
        # pg_dump was killed and the snapshot's transaction ended: nothing holds the database.
        wait_until(
            lambda: backend_sessions(postgres, database) == [],
            10,
            lambda: f"sessions still on the database: {backend_sessions(postgres, database)}",
        )
        parts_then = stalling.parts_received
    assert stalling.parts_received == parts_then
    assert_nothing_stored(s3_server.client(), bucket)


def test_a_part_corrupted_in_transit_is_refused_by_seaweedfs_and_the_next_attempt_stores_it(
    postgres, seaweedfs, database
):
    bucket = f"backups-{uuid.uuid4().hex[:12]}"
    seaweedfs.create_bucket(bucket)
    run_sql(postgres, database, BIG_TABLE)
    with FaultyS3Proxy(seaweedfs, "corrupt") as corrupting:
        with pytest.raises(TransientBackupError) as refused:
            backup(postgres, corrupting, bucket, database)
        assert "BadDigest" in str(refused.value)
        assert corrupting.parts_corrupted == 1
        assert_nothing_stored(seaweedfs.client(), bucket)
        # Transient: the same backup again (as the step's RetryPolicy does) is stored whole.
        result, _ = backup(postgres, corrupting, bucket, database)
    client = seaweedfs.client()
    stored = load_backup(client, bucket, PREFIX, result.manifest_key)
    verdict = verify_backup(client, bucket, stored, bin_dir=postgres.bin_dir, endpoint=seaweedfs.endpoint_url)
    assert verdict.ok, verdict.detail
