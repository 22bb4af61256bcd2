"""Restore drills and restore_database_job against real PostgreSQL, real pg_dump/pg_restore and an S3 API.

Backups are taken and verified by the backup code itself, so the drills read exactly what production writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
from psycopg import sql
from support.waiting import wait_until

from hotpot_devstack import Postgres, seed_sample
from hotpot_devstack.backups import take_verified_backup
from hotpot_orchestration.backups.catalog import Backup, latest_backup, write_manifest
from hotpot_orchestration.pitr.assets import PitrResource
from hotpot_orchestration.platform.pg import PgTarget
from hotpot_orchestration.platform.resources import BackupStorageResource, PostgresResource
from hotpot_orchestration.platform.units import format_bytes, format_duration
from hotpot_orchestration.restores import (
    DRILL_PASSED,
    DRILL_RECENT,
    pgtools,
    procedure,
    restore_database_job,
    restore_drill,
    restore_drill_recent,
)
from hotpot_orchestration.restores.errors import RestoreSetupError
from hotpot_orchestration.restores.scratch import PREFIXES

pytestmark = pytest.mark.timeout(180)

PREFIX = "database/"
DRILL_KEY = dg.AssetKey("restore_drill")
# Things a plain sample lacks: quoted identifiers, a third schema, a large object, a materialized view,
# a sequence that was never called.
EXTRAS = """
CREATE SCHEMA "Kitchen Ops";
CREATE TABLE "Kitchen Ops"."Fridge ""Temps"" Log" (id bigserial PRIMARY KEY, "reading °C" numeric NOT NULL);
INSERT INTO "Kitchen Ops"."Fridge ""Temps"" Log" ("reading °C")
  SELECT 2 + g / 100.0 FROM generate_series(1, 500) g;
CREATE SEQUENCE "Kitchen Ops".unused_seq;
CREATE MATERIALIZED VIEW sales.items_per_order AS SELECT order_id, count(*) AS items FROM sales.order_items
  GROUP BY order_id;
SELECT lo_from_bytea(0, 'menu photo');
"""


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch, s3):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)


@pytest.fixture
def bucket(s3) -> str:
    name = f"drills-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(name)
    return name


@pytest.fixture
def source(postgres, sample_database) -> str:
    """The sample database with EXTRAS: what gets backed up."""
    with postgres.connect(sample_database) as conn:
        conn.execute(EXTRAS)
    return sample_database


def resources(postgres, s3, bucket: str, dbname: str) -> dict:
    bin_dir = str(postgres.bin_dir)
    return {
        "postgres": PostgresResource(url=postgres.url_for(dbname), pg_bin_dir=bin_dir),
        "drill_postgres": PostgresResource(url=postgres.url, pg_bin_dir=bin_dir),
        "backup_storage": BackupStorageResource(
            bucket=bucket, prefix=PREFIX, endpoint_url=s3.endpoint_url, region=s3.region
        ),
        # restore_database_job's point-in-time mode reads the WAL archive; logical restores never do.
        "pitr": PitrResource(bucket=bucket, endpoint_url=s3.endpoint_url),
    }


def drill(postgres, s3, bucket: str, backup: Backup, server: PgTarget | None = None, **options):
    return procedure.restore_backup(
        s3.client(),
        bucket,
        backup,
        server or PgTarget.from_url(postgres.url),
        postgres.bin_dir,
        procedure.RestoreOptions(jobs=2, **options),
    )


def scratch_databases(postgres) -> list[str]:
    with postgres.connect() as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE ANY (%s)",
            [[prefix + "%" for prefix in PREFIXES.values()]],
        ).fetchall()
    return [name for (name,) in rows]


def rewrite_manifest(s3, bucket: str, backup: Backup, change) -> None:
    manifest = json.loads(json.dumps(backup.manifest))
    change(manifest)
    write_manifest(s3.client(), bucket, backup.manifest_key, manifest, {})


def check_evaluations(result) -> dict[str, object]:
    return {
        event.event_specific_data.asset_check_key.name: event.event_specific_data
        for event in result.all_events
        if event.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def test_drill_round_trips_a_backup_with_exact_counts(postgres, s3, bucket, source):
    backup = take_verified_backup(postgres, s3, bucket, source, PREFIX)
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [restore_drill, restore_drill_recent],
        instance=instance,
        resources=resources(postgres, s3, bucket, source),
    )
    assert result.success
    (materialization,) = result.asset_materializations_for_node("restore_drill")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    tables = backup.manifest["tables"]
    assert len(tables) == 6 and ("Kitchen Ops", 'Fridge "Temps" Log') in {
        (t["schema"], t["name"]) for t in tables
    }
    assert metadata["tables_verified"] == len(tables)
    assert metadata["rows_verified"] == sum(table["rows"] for table in tables) > 1000
    assert metadata["difference_count"] == 0 and metadata["differences"] == "none"
    assert metadata["rto_seconds"] == pytest.approx(
        metadata["download_seconds"] + metadata["restore_seconds"] + metadata["verify_seconds"], abs=0.05
    )
    assert 0 <= metadata["rpo_hours"] < 1
    assert metadata["dump_bytes"] == backup.manifest["dump_bytes"]
    assert metadata["dump_size"] == format_bytes(metadata["dump_bytes"])
    readable = {
        "rto_seconds": "rto",
        "download_seconds": "download_duration",
        "restore_seconds": "restore_duration",
        "verify_seconds": "verify_duration",
    }
    for raw, text in readable.items():
        # The raw figure is rounded to hundredths, the text is of the unrounded one.
        shown = {format_duration(max(metadata[raw] + d, 0)) for d in (-0.005, 0, 0.005)}
        assert metadata[text] in shown, (raw, metadata[raw], metadata[text])
    assert metadata["backup"] == f"s3://{bucket}/{backup.dump_key}"
    assert metadata["scratch_database"].startswith("hotpot_drill_")
    checks = check_evaluations(result)
    assert checks[DRILL_PASSED].passed and checks[DRILL_RECENT].passed
    assert scratch_databases(postgres) == []


def test_flipped_byte_fails_the_drill_before_pg_restore_runs(postgres, s3, bucket, source, monkeypatch):
    backup = take_verified_backup(postgres, s3, bucket, source, PREFIX)
    client = s3.client()
    dump = bytearray(client.get_object(Bucket=bucket, Key=backup.dump_key)["Body"].read())
    dump[len(dump) // 2] ^= 0x01
    client.put_object(Bucket=bucket, Key=backup.dump_key, Body=bytes(dump))

    def must_not_run(*args, **kwargs):
        raise AssertionError("pg_restore ran on a dump whose checksum does not match")

    monkeypatch.setattr(pgtools, "run_pg_restore", must_not_run)
    report = drill(postgres, s3, bucket, backup)
    assert not report.passed
    (difference,) = report.differences
    assert difference.startswith(f"checksum: s3://{bucket}/{backup.dump_key}: SHA-256 ")
    assert f"does not match the manifest's {backup.manifest['sha256']}; pg_restore was not run" in difference
    assert report.scratch_database is None and scratch_databases(postgres) == []


def test_a_row_missing_against_the_manifest_fails_the_drill_naming_the_table(postgres, s3, bucket, source):
    backup = take_verified_backup(postgres, s3, bucket, source, PREFIX)

    def expect_one_more_order(manifest):
        (orders,) = [t for t in manifest["tables"] if (t["schema"], t["name"]) == ("sales", "orders")]
        orders["rows"] += 1

    rewrite_manifest(s3, bucket, backup, expect_one_more_order)
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [restore_drill],
        instance=instance,
        resources=resources(postgres, s3, bucket, source),
        raise_on_error=False,
    )
    assert not result.success
    evaluation = check_evaluations(result)[DRILL_PASSED]
    assert not evaluation.passed
    expected = "table sales.orders: 120 rows restored, the manifest says 121"
    assert evaluation.metadata["differences"].value == f"- {expected}"
    assert evaluation.metadata["difference_count"].value == 1
    (failure,) = [event for event in result.all_events if event.event_type_value == "STEP_FAILURE"]
    assert expected in failure.event_specific_data.error.message
    # A failing drill is not a materialization: the newest one stays the newest passing drill.
    assert instance.get_latest_materialization_event(DRILL_KEY) is None
    assert scratch_databases(postgres) == []


def test_a_dump_with_a_truncated_table_fails_verification(postgres, s3, bucket, source):
    """The dump matches its checksum but lost a table's rows (the manifest still counts them)."""
    backup = take_verified_backup(postgres, s3, bucket, source, PREFIX)
    with postgres.connect(source) as conn:
        conn.execute("TRUNCATE sales.order_items")
    dump = subprocess.run(
        [str(postgres.bin_dir / "pg_dump"), "--format=custom", postgres.url_for(source)],
        capture_output=True,
        check=True,
    ).stdout
    s3.client().put_object(Bucket=bucket, Key=backup.dump_key, Body=dump)
    rewrite_manifest(
        s3,
        bucket,
        backup,
        lambda manifest: manifest.update(sha256=hashlib.sha256(dump).hexdigest(), dump_bytes=len(dump)),
    )
    backup = latest_backup(s3.client(), bucket, PREFIX, database=source)
    report = drill(postgres, s3, bucket, backup)
    assert report.differences == ["table sales.order_items: 0 rows restored, the manifest says 360"]
    assert report.tables == len(backup.manifest["tables"]) - 1


KILLABLE_DRILL = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import boto3
    from hotpot_orchestration.backups.catalog import latest_backup
    from hotpot_orchestration.platform.pg import PgTarget
    from hotpot_orchestration.restores import procedure

    args = json.loads(sys.argv[1])
    client = boto3.client("s3", endpoint_url=args["endpoint"], region_name="us-east-1")
    backup = latest_backup(client, args["bucket"], "database/", database=args["database"])
    procedure.restore_backup(
        client, args["bucket"], backup, PgTarget.from_url(args["server"]), Path(args["bin_dir"]),
        procedure.RestoreOptions(jobs=2, work_dir=args["work_dir"]),
    )
    """
)


def _restoring_into(postgres) -> list[tuple[str, int]]:
    with postgres.connect() as conn:
        return conn.execute(
            "SELECT datname, pid FROM pg_stat_activity WHERE application_name = 'pg_restore'"
            " AND datname LIKE 'hotpot\\_drill\\_%'"
        ).fetchall()


@pytest.fixture(scope="module")
def big_backup(postgres, s3, tmp_path_factory):
    """A verified backup large enough that pg_restore runs for a second or more, and a drill's arguments."""
    dbname, bucket = f"big_{uuid.uuid4().hex[:8]}", f"drills-big-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(bucket)
    postgres.create_database(dbname)
    with postgres.connect(dbname) as conn:
        conn.execute(
            "CREATE TABLE tickets AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 500000) g;"
            "ALTER TABLE tickets ADD PRIMARY KEY (id); CREATE INDEX ON tickets (note);"
        )
    backup = take_verified_backup(postgres, s3, bucket, dbname, PREFIX)
    args = {"endpoint": s3.endpoint_url, "bucket": bucket, "database": dbname, "server": postgres.url}
    work_dir = str(tmp_path_factory.mktemp("drill-work"))
    yield backup, {**args, "bin_dir": str(postgres.bin_dir), "work_dir": work_dir}
    postgres.drop_database(dbname)


def signal_drill_mid_restore(postgres, args: dict, signum: int) -> None:
    drill_process = subprocess.Popen([sys.executable, "-c", KILLABLE_DRILL, json.dumps(args)])
    try:

        def restoring() -> bool:
            assert drill_process.poll() is None, "the drill ended before pg_restore was seen running"
            return bool(_restoring_into(postgres))

        wait_until(restoring, 60, "pg_restore never started", interval=0.02)
        drill_process.send_signal(signum)
        drill_process.wait(30)
    finally:
        if drill_process.poll() is None:
            drill_process.kill()
    # pg_restore ends with the drill instead of writing on into its scratch database.
    wait_until(lambda: not _restoring_into(postgres), 10, "pg_restore outlived the drill that started it")


@pytest.mark.slow
def test_a_drill_killed_mid_restore_leaves_a_scratch_database_the_next_drill_removes(
    postgres, s3, big_backup
):
    backup, args = big_backup
    signal_drill_mid_restore(postgres, args, signal.SIGKILL)
    (leftover,) = scratch_databases(postgres)
    # The downloaded dump is left behind too; older than the grace a starting run gives a fresh one, it goes.
    (work_dir,) = Path(args["work_dir"]).iterdir()
    two_minutes_ago = time.time() - 120
    os.utime(work_dir, (two_minutes_ago, two_minutes_ago))
    report = drill(postgres, s3, args["bucket"], backup, work_dir=args["work_dir"])
    assert report.cleaned_up == [leftover]
    assert report.passed, report.differences
    assert scratch_databases(postgres) == []
    assert list(Path(args["work_dir"]).iterdir()) == []


@pytest.mark.slow
def test_a_drill_interrupted_mid_restore_drops_its_own_scratch_database(postgres, big_backup):
    """What a terminated Dagster run does: the interrupt unwinds the drill, which drops what it created."""
    signal_drill_mid_restore(postgres, big_backup[1], signal.SIGINT)
    assert scratch_databases(postgres) == []
    assert list(Path(big_backup[1]["work_dir"]).iterdir()) == []


def test_a_live_drills_scratch_database_is_never_cleaned_up(postgres):
    from hotpot_orchestration.restores.scratch import ScratchDatabase, drop_abandoned

    server = PgTarget.from_url(postgres.url)
    with ScratchDatabase(server, "drill") as live:
        assert drop_abandoned(server) == []
        assert live.name in scratch_databases(postgres)
        # Same name prefix but no marker comment: not ours, never dropped.
        stranger = "hotpot_drill_19990101_000000_deadbeef"
        postgres.create_database(stranger)
        try:
            assert drop_abandoned(server) == []
        finally:
            postgres.drop_database(stranger)
    assert scratch_databases(postgres) == []


def test_missing_roles_are_handled_without_owners_and_named_with_them(postgres, s3, bucket):
    owner, reader = f"drill_owner_{uuid.uuid4().hex[:6]}", f"Drill Reader {uuid.uuid4().hex[:6]}"
    dbname = f"owned_{uuid.uuid4().hex[:8]}"
    with postgres.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(owner)))
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(reader)))
    seed_sample(postgres, dbname)
    with postgres.connect(dbname) as conn:
        conn.execute(sql.SQL("ALTER TABLE sales.orders OWNER TO {}").format(sql.Identifier(owner)))
        conn.execute(sql.SQL("GRANT SELECT ON menu.menu_items TO {}").format(sql.Identifier(reader)))
    backup = take_verified_backup(postgres, s3, bucket, dbname, PREFIX)
    # The drill server does not know them.
    postgres.drop_database(dbname)
    with postgres.connect() as conn:
        for role in (owner, reader):
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))

    report = drill(postgres, s3, bucket, backup)
    assert report.passed, report.differences

    with pytest.raises(RestoreSetupError) as refused:
        drill(postgres, s3, bucket, backup, keep_owners_and_privileges=True)
    message = str(refused.value)
    assert f"roles that do not exist on 127.0.0.1:{postgres.port}: {reader}, {owner}" in message
    assert "Create them first, or restore without keep_owners_and_privileges" in message
    assert scratch_databases(postgres) == []


def _older_bin_dir(newer_major: int) -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda path: int(path.parent.name))
    older = [
        path for path in candidates if int(path.parent.name) < newer_major and (path / "postgres").exists()
    ]
    return older[-1] if older else None


@pytest.fixture(scope="module")
def older_postgres(postgres):
    bin_dir = _older_bin_dir(postgres.version)
    if bin_dir is None:
        pytest.skip(f"no PostgreSQL older than {postgres.version} under /usr/lib/postgresql")
    with Postgres(bin_dir=bin_dir) as server:
        yield server


@pytest.mark.slow
def test_a_newer_dump_restores_into_an_older_server(postgres, older_postgres, s3, bucket, source):
    backup = take_verified_backup(postgres, s3, bucket, source, PREFIX)
    report = drill(postgres, s3, bucket, backup, server=PgTarget.from_url(older_postgres.url))
    assert report.passed, report.differences
    assert report.tables == len(backup.manifest["tables"])
    assert any(
        f"runs PostgreSQL {older_postgres.version}: objects that need a newer server" in w
        for w in report.warnings
    )
    assert any("set transaction_timeout, which the PostgreSQL" in w for w in report.warnings)


@pytest.mark.slow
def test_every_difference_is_listed_when_the_server_lacks_an_extension(
    postgres, older_postgres, s3, bucket, source
):
    with postgres.connect(source) as conn:
        conn.execute(
            "CREATE EXTENSION vector; CREATE TABLE menu.dish_embeddings (id int PRIMARY KEY, v vector(3))"
        )
        conn.execute("INSERT INTO menu.dish_embeddings VALUES (1, '[1,2,3]'), (2, '[4,5,6]')")
    with older_postgres.connect() as conn:
        available = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone()
    if available:
        pytest.skip(f"PostgreSQL {older_postgres.version} here has the vector extension")
    backup = take_verified_backup(postgres, s3, bucket, source, PREFIX)
    report = drill(postgres, s3, bucket, backup, server=PgTarget.from_url(older_postgres.url))
    assert not report.passed
    listed = "\n".join(report.differences)
    assert 'pg_restore error: could not execute query: ERROR:  extension "vector" is not available' in listed
    assert "table menu.dish_embeddings: missing from the restored database" in listed
    assert "extension vector: missing from the restored database" in listed
    assert "schema: EXTENSION - vector is in the backup but not in the restored database" in listed
    assert "schema: TABLE menu dish_embeddings is in the backup but not in the restored database" in listed
    # Everything else came back and was checked.
    assert report.tables == len(backup.manifest["tables"]) - 1
    assert scratch_databases(older_postgres) == []


@pytest.mark.slow
def test_restore_job_puts_a_newer_dump_into_an_older_server(postgres, older_postgres, s3, bucket, source):
    backup = take_verified_backup(postgres, s3, bucket, source, PREFIX)
    result = restore_database_job.execute_in_process(
        run_config={
            "ops": {
                "restore_database": {"config": {"target_database": "restored", "backup_key": backup.dump_key}}
            }
        },
        resources={
            "postgres": PostgresResource(url=older_postgres.url, pg_bin_dir=str(postgres.bin_dir)),
            **{key: resources(postgres, s3, bucket, source)[key] for key in ("backup_storage", "pitr")},
        },
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert result.success, failure_message(result)
    assert count(older_postgres, "restored", "sales.order_items") == 360
    older_postgres.drop_database("restored")


@pytest.mark.slow
def test_an_older_pg_restore_is_refused_with_the_binaries_to_use(postgres, older_postgres):
    with pytest.raises(RestoreSetupError) as refused:
        pgtools.check_pg_restore_can_read(older_postgres.bin_dir, "18.6")
    assert f"is version {older_postgres.version} and cannot read it" in str(refused.value)
    assert "set HOTPOT_PG_BIN_DIR to the bin directory of PostgreSQL 18 or newer" in str(refused.value)


def restore_job(postgres, s3, bucket, protected: str, instance=None, **config):
    return restore_database_job.execute_in_process(
        run_config={"ops": {"restore_database": {"config": config}}},
        resources={
            key: value
            for key, value in resources(postgres, s3, bucket, protected).items()
            if key != "drill_postgres"
        },
        instance=instance or dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def failure_message(result) -> str:
    (failure,) = [event for event in result.all_events if event.event_type_value == "STEP_FAILURE"]
    return failure.event_specific_data.error.message


def count(postgres, dbname: str, table: str) -> int:
    with postgres.connect(dbname) as conn:
        return conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*table.split(".")))
        ).fetchone()[0]


def test_restore_job_refusals_say_what_to_pass_and_touch_nothing(postgres, s3, bucket, source):
    backup = take_verified_backup(postgres, s3, bucket, source, PREFIX)
    target = f"busy_{uuid.uuid4().hex[:8]}"
    seed_sample(postgres, target)
    with postgres.connect(target) as conn:
        conn.execute("CREATE TABLE precious (id int); INSERT INTO precious VALUES (1)")
    try:
        cases = [
            ({"target_database": target, "partition": backup.partition}, "pass replace: true and confirm: "),
            (
                {
                    "target_database": target,
                    "partition": backup.partition,
                    "replace": True,
                    "confirm": "oops",
                },
                f"pass confirm: '{target}' (got 'oops')",
            ),
            (
                {"target_database": source, "backup_key": backup.dump_key, "replace": True},
                f"'{source}' is the database HOTPOT_DATABASE_URL points at",
            ),
            ({"target_database": target}, "name the backup to restore (neither given)"),
        ]
        for config, expected in cases:
            result = restore_job(postgres, s3, bucket, protected=source, **config)
            assert not result.success
            assert expected in failure_message(result), config
        assert count(postgres, target, "public.precious") == 1
        assert scratch_databases(postgres) == []
    finally:
        postgres.drop_database(target)


def test_restore_job_replaces_a_confirmed_target_with_the_verified_backup(postgres, s3, bucket, source):
    backup = take_verified_backup(postgres, s3, bucket, source, PREFIX)
    target = f"replaced_{uuid.uuid4().hex[:8]}"
    postgres.create_database(target)
    with postgres.connect(target) as conn:
        conn.execute("CREATE TABLE precious (id int)")
    try:
        result = restore_job(
            postgres,
            s3,
            bucket,
            protected=source,
            target_database=target,
            backup_key=backup.dump_key,
            replace=True,
            confirm=target,
        )
        assert result.success, failure_message(result)
        for table in backup.manifest["tables"]:
            assert count(postgres, target, f"{table['schema']}.{table['name']}") == table["rows"]
        with postgres.connect(target) as conn:
            assert conn.execute("SELECT to_regclass('public.precious')").fetchone() == (None,)
            (comment,) = conn.execute(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database"
                " WHERE datname = current_database()"
            ).fetchone()
        assert f"from s3://{bucket}/{backup.dump_key} by restore_database_job" in comment
        assert scratch_databases(postgres) == []

        # A new database needs no confirmation.
        fresh = f"fresh_{uuid.uuid4().hex[:8]}"
        result = restore_job(
            postgres, s3, bucket, protected=source, target_database=fresh, partition=backup.partition
        )
        assert result.success, failure_message(result)
        assert count(postgres, fresh, "sales.orders") == 120
        postgres.drop_database(fresh)
    finally:
        postgres.drop_database(target)


def test_restore_job_restores_over_the_live_database_when_told_twice(postgres, s3, bucket, source):
    """The seed's restore-database.sh case: the backup goes back into HOTPOT_DATABASE_URL's database."""
    backup = take_verified_backup(postgres, s3, bucket, source, PREFIX)
    with postgres.connect(source) as conn:
        conn.execute("DELETE FROM sales.order_items; DELETE FROM sales.orders")
    result = restore_job(
        postgres,
        s3,
        bucket,
        protected=source,
        target_database=source,
        partition=backup.partition,
        replace=True,
        confirm=source,
    )
    assert result.success, failure_message(result)
    assert count(postgres, source, "sales.orders") == 120
    assert count(postgres, source, "sales.order_items") == 360


def database_oid(postgres, name: str) -> int | None:
    with postgres.connect() as conn:
        row = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", [name]).fetchone()
    return row[0] if row else None


def test_restore_job_never_touches_the_servers_own_databases(postgres, s3, bucket, source, monkeypatch):
    """target_database: postgres once dropped the maintenance (and drill) database WITH (FORCE)."""
    backup = take_verified_backup(postgres, s3, bucket, source, PREFIX)
    drills = f"drills_{uuid.uuid4().hex[:8]}"
    postgres.create_database(drills)
    monkeypatch.setenv("HOTPOT_DRILL_DATABASE_URL", postgres.url_for(drills))
    try:
        before = {name: database_oid(postgres, name) for name in ("postgres", "template1", drills)}
        for name in before:
            result = restore_job(
                postgres,
                s3,
                bucket,
                protected=source,
                target_database=name,
                backup_key=backup.dump_key,
                replace=True,
                confirm=name,
            )
            assert not result.success
            assert "never a restore target, confirmed or not" in failure_message(result), name
        assert {name: database_oid(postgres, name) for name in before} == before
        assert scratch_databases(postgres) == []
    finally:
        postgres.drop_database(drills)


def open_session(postgres, dbname: str, application: str):
    conn = postgres.connect(dbname)
    conn.execute("SELECT set_config('application_name', %s, false)", [application])
    return conn


def test_restore_into_an_empty_database_with_a_session_needs_its_name_confirmed(postgres, s3, bucket, source):
    """The session was once terminated without any confirmation."""
    backup = take_verified_backup(postgres, s3, bucket, source, PREFIX)
    target = f"watched_{uuid.uuid4().hex[:8]}"
    postgres.create_database(target)
    session = open_session(postgres, target, "report-viewer")
    try:
        pid = session.info.backend_pid
        refused = restore_job(
            postgres, s3, bucket, protected=source, target_database=target, backup_key=backup.dump_key
        )
        assert not refused.success
        message = failure_message(refused)
        assert f"database '{target}' has 1 connected session(s)" in message
        assert f"pid {pid} (user postgres, application 'report-viewer', state idle, query started " in message
        assert f"pass confirm: '{target}' to end them" in message
        assert session.execute("SELECT 1").fetchone() == (1,)  # still connected
        assert scratch_databases(postgres) == []

        confirmed = restore_job(
            postgres,
            s3,
            bucket,
            protected=source,
            target_database=target,
            backup_key=backup.dump_key,
            confirm=target,
        )
        assert confirmed.success, failure_message(confirmed)
        assert count(postgres, target, "sales.orders") == 120
        with postgres.connect() as conn:
            assert conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone() is None
    finally:
        session.close()
        postgres.drop_database(target)


def hold_database_lock(postgres, dbname: str, application: str):
    """A session on the maintenance database holding a lock on `dbname` in an open transaction, as
    COMMENT ON DATABASE takes one: a DROP or RENAME of `dbname` waits for it."""
    conn = open_session(postgres, "postgres", application)
    conn.autocommit = False
    conn.execute(sql.SQL("COMMENT ON DATABASE {} IS 'held'").format(sql.Identifier(dbname)))
    return conn


def test_a_locked_target_fails_the_restore_naming_the_lock_holder(postgres, s3, bucket, source):
    backup = take_verified_backup(postgres, s3, bucket, source, PREFIX)
    target = f"locked_{uuid.uuid4().hex[:8]}"
    postgres.create_database(target)
    holder = hold_database_lock(postgres, target, "forgotten-migration")
    try:
        result = restore_job(
            postgres,
            s3,
            bucket,
            protected=source,
            target_database=target,
            backup_key=backup.dump_key,
            confirm=target,
            lock_timeout_seconds=2,
        )
        assert not result.success
        message = failure_message(result)
        pid = holder.info.backend_pid
        assert f"waited 2 s for a lock on database '{target}', held by pid {pid} (user postgres, " in message
        assert "application 'forgotten-migration', state idle in transaction, query started 2" in message
        assert database_oid(postgres, target) is not None
        assert scratch_databases(postgres) == []
    finally:
        holder.close()
        postgres.drop_database(target)


def test_a_drills_scratch_database_locked_at_the_end_is_named_and_left_for_the_next_run(postgres):
    from hotpot_orchestration.restores.scratch import ScratchDatabase, drop_abandoned

    server = PgTarget.from_url(postgres.url)
    logged: list[str] = []
    with ScratchDatabase(server, "drill", log=logged.append, lock_timeout_seconds=1) as scratch:
        holder = hold_database_lock(postgres, scratch.name, "stuck-report")
    try:
        (message,) = logged
        assert f"could not drop scratch database {scratch.name}" in message
        pid = holder.info.backend_pid
        assert f"waited 1 s for a lock on database '{scratch.name}', held by pid {pid} " in message
        assert "application 'stuck-report', state idle in transaction" in message
        assert scratch.name in scratch_databases(postgres)
        # Still locked: the next run's cleanup names the holder and goes on.
        cleanup_log: list[str] = []
        assert drop_abandoned(server, log=cleanup_log.append, lock_timeout_seconds=1) == []
        assert "application 'stuck-report'" in cleanup_log[0]
    finally:
        holder.close()
    assert drop_abandoned(server) == [scratch.name]


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(bytes) -> a directory on a tmpfs of that size, unmounted after the test."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        path = tmp_path / f"disk{len(mounted)}"
        path.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {result.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], check=True)


def fill(directory: Path, leave_free: int) -> None:
    """Fill `directory`'s filesystem until about `leave_free` bytes are free."""
    free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
    (directory / "filler").write_bytes(b"\0" * max(free - leave_free, 0))


def test_a_drill_into_a_nearly_full_disk_is_refused_naming_directory_and_sizes(
    postgres, s3, bucket, source, small_disk
):
    backup = take_verified_backup(postgres, s3, bucket, source, PREFIX)
    needed = backup.manifest["dump_bytes"]
    disk = small_disk(needed + 1024 * 1024)
    fill(disk, needed // 2)
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    assert free < needed
    result = dg.materialize(
        [restore_drill],
        instance=dg.DagsterInstance.ephemeral(),
        resources=resources(postgres, s3, bucket, source),
        run_config={"ops": {"restore_drill": {"config": {"work_dir": str(disk)}}}},
        raise_on_error=False,
    )
    assert not result.success
    message = failure_message(result)
    assert f"the download directory {disk}/hotpot-restore-" in message
    assert f"has {free:,} bytes free and the dump needs {needed:,} bytes" in message
    assert sorted(path.name for path in disk.iterdir()) == ["filler"]
    assert scratch_databases(postgres) == []


def test_a_full_disk_mid_download_names_the_file_and_size_and_removes_it(
    postgres, s3, bucket, source, small_disk
):
    from hotpot_orchestration.restores.download import download_verified
    from hotpot_orchestration.restores.errors import NotEnoughSpace

    backup = take_verified_backup(postgres, s3, bucket, source, PREFIX)
    needed = backup.manifest["dump_bytes"]
    disk = small_disk(needed // 2 // 4096 * 4096 or 4096)
    dest = disk / "backup.dump"
    with pytest.raises(NotEnoughSpace) as full:
        download_verified(
            s3.client(), bucket, backup.dump_key, dest, sha256=backup.manifest["sha256"], size=needed
        )
    message = str(full.value)
    assert f"no space left writing {dest} after " in message
    assert f" of {needed:,} bytes of s3://{bucket}/{backup.dump_key}" in message
    assert "the partial file was removed" in message and f"the dump needs {needed:,} bytes" in message
    assert list(disk.iterdir()) == []
