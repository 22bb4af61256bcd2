"""Restore rules that need no services: refusals, pg_restore's messages judged, TOC entries, scratch names."""

import time
from collections import Counter
from types import SimpleNamespace

import pytest

from hotpot_orchestration.restores import guard, pgtools, scratch
from hotpot_orchestration.settings import SettingsError, load_settings

EMPTY = guard.TargetState(exists=True, contents={"relations": 0, "functions": 0})
FULL = guard.TargetState(exists=True, contents={"relations": 12, "functions": 1})
ABSENT = guard.TargetState(exists=False, contents={})
PROD = "thehotpotspot"
DRILLS = "drills"
BUSY = guard.TargetState(
    exists=True,
    contents={"relations": 0},
    sessions=("pid 4242 (user app, application 'psql', state idle, query started 2026-01-05T03:00:00)",),
)


def request(target: str, **kwargs) -> guard.RestoreRequest:
    return guard.RestoreRequest(target_database=target, partition="2026-01-05", **kwargs)


@pytest.mark.parametrize(
    ("req", "state", "expected"),
    [
        (request("copy"), FULL, "is not empty (12 relations, 1 functions); to drop it and put the backup"),
        (request("copy"), FULL, "pass replace: true and confirm: 'copy'"),
        (request("copy", replace=True), FULL, "pass confirm: 'copy' (got nothing)"),
        (request("copy", replace=True, confirm="Copy"), FULL, "pass confirm: 'copy' (got 'Copy')"),
        (request(PROD), ABSENT, "HOTPOT_DATABASE_URL points at; restore_database_job touches it only"),
        (request(PROD), ABSENT, "pass confirm: 'thehotpotspot'"),
        (request(PROD), FULL, "pass replace: true and confirm: 'thehotpotspot'"),
        (request(PROD, replace=True), FULL, "pass replace: true and confirm: 'thehotpotspot'"),
        (request(PROD, confirm=PROD), FULL, "pass replace: true and confirm: 'thehotpotspot'"),
        (request("template1"), FULL, "one of the server's own databases, which the server and its tools"),
        (request("hotpot_drill_20260105_040000_0a1b2c3d"), ABSENT, "is a scratch database, not a restore"),
        (request("copy"), BUSY, "has 1 connected session(s), which restoring into it would end: pid 4242"),
        (request("copy"), BUSY, "application 'psql', state idle, query started 2026-01-05T03:00:00"),
        (request("copy", replace=True), BUSY, "Close them, or pass confirm: 'copy' to end them"),
    ],
)
def test_refusals_say_what_to_pass(req, state, expected):
    reason = guard.refusal(req, state, protected_database=PROD, drill_database=DRILLS)
    assert reason is not None and expected in reason


@pytest.mark.parametrize("name", ["postgres", "template0", "template1", DRILLS])
@pytest.mark.parametrize("state", [ABSENT, EMPTY, FULL])
def test_the_servers_own_databases_are_refused_even_when_confirmed(name, state):
    """restore_database_job with target_database: postgres once dropped the maintenance database."""
    confirmed = request(name, replace=True, confirm=name)
    reason = guard.refusal(confirmed, state, protected_database=PROD, drill_database=DRILLS)
    assert reason is not None and "never a restore target, confirmed or not" in reason
    drill = "HOTPOT_DRILL_DATABASE_URL's database" if name == DRILLS else "one of the server's own databases"
    assert f"{name!r} is {drill}" in reason


def test_the_drill_database_is_a_target_when_it_is_the_protected_one():
    """Without HOTPOT_DRILL_DATABASE_URL, drills use HOTPOT_DATABASE_URL: that database stays restorable."""
    confirmed = request(PROD, replace=True, confirm=PROD)
    assert guard.refusal(confirmed, FULL, protected_database=PROD, drill_database=PROD) is None


@pytest.mark.parametrize(
    ("req", "state"),
    [
        (request("copy"), ABSENT),
        (request("copy"), EMPTY),
        (request("copy", replace=True, confirm="copy"), FULL),
        (request(PROD, confirm=PROD), ABSENT),
        (request(PROD, replace=True, confirm=PROD), FULL),
        (request("copy", confirm="copy"), BUSY),
    ],
)
def test_allowed_restores(req, state):
    assert guard.refusal(req, state, protected_database=PROD, drill_database=DRILLS) is None


@pytest.mark.parametrize(
    ("partition", "key", "given"), [(None, None, "neither"), ("2026-01-05", "database/x.dump", "both")]
)
def test_the_backup_must_be_named_once(partition, key, given):
    reason = guard.choice_refusal(guard.RestoreRequest("copy", partition=partition, backup_key=key))
    assert (
        f"({given} given)" in reason and "pass partition: 'YYYY-MM-DD'" in reason and "backup_key" in reason
    )


SET_ERROR = (
    "pg_restore: error: could not execute query: "
    'ERROR:  unrecognized configuration parameter "transaction_timeout"\n'
    "Command was: SET transaction_timeout = 0;\n"
)
TABLE_ERROR = (
    'pg_restore: error: could not execute query: ERROR:  relation "categories" already exists\n'
    "Command was: CREATE TABLE menu.categories (\n    id integer NOT NULL\n);\n\n\n"
)


def test_an_unknown_setting_is_tolerated_only_on_an_older_server():
    stderr = SET_ERROR * 3 + "pg_restore: warning: errors ignored on restore: 2\n"
    errors, tolerated, ignored = pgtools.judge_stderr(stderr, server_major=15, restore_major=18)
    assert errors == [] and ignored == 2
    assert tolerated == [
        "pg_restore 18 set transaction_timeout, which the PostgreSQL 15 server does not have "
        "(harmless: the setting only exists on newer servers)"
    ]
    errors, tolerated, _ = pgtools.judge_stderr(stderr, server_major=18, restore_major=18)
    assert len(errors) == 3 and tolerated == []


def test_every_other_error_fails_with_its_command():
    stderr = SET_ERROR + TABLE_ERROR + "pg_restore: warning: errors ignored on restore: 2\n"
    errors, tolerated, ignored = pgtools.judge_stderr(stderr, server_major=15, restore_major=18)
    assert errors == [
        'pg_restore error: could not execute query: ERROR:  relation "categories" already exists '
        "Command was: CREATE TABLE menu.categories ( id integer NOT NULL );"
    ]
    assert len(tolerated) == 1 and ignored == 2


LISTING = """;
; Archive created at 2026-11-26 14:43:07 UTC
;     dbname: thehotpotspot
;
6; 2615 16385 SCHEMA - menu postgres
233; 1259 16509 TABLE public We ird postgres
2664; 0 0 ACL sales TABLE orders postgres
2651; 0 16509 TABLE DATA public We ird postgres
2486; 2606 16516 CONSTRAINT public We ird We ird_pkey app_owner
2652; 2613 16500 BLOB METADATA - 16500 postgres
2653; 0 0 BLOBS - 16500 postgres
2487; 2606 16421 FK CONSTRAINT menu menu_items menu_items_category_id_fkey postgres
"""


def test_toc_entries_drop_ids_owners_and_data():
    entries = pgtools._toc_entries(LISTING, exclude=pgtools.DATA_ENTRIES + pgtools.PRIVILEGE_ENTRIES)
    assert entries == Counter(
        {
            "SCHEMA - menu": 1,
            "TABLE public We ird": 1,
            "CONSTRAINT public We ird We ird_pkey": 1,
            "FK CONSTRAINT menu menu_items menu_items_category_id_fkey": 1,
        }
    )
    assert "ACL sales TABLE orders" in pgtools._toc_entries(LISTING, exclude=pgtools.DATA_ENTRIES)


def test_schema_differences_name_both_directions():
    archived = Counter({"TABLE sales orders": 1, "INDEX sales orders_placed_at_idx": 1})
    restored = Counter({"TABLE sales orders": 1, "TABLE public stray": 1})
    assert pgtools.schema_differences(archived, restored) == [
        "schema: INDEX sales orders_placed_at_idx is in the backup but not in the restored database",
        "schema: TABLE public stray is in the restored database but not in the backup",
    ]


def test_roles_are_read_from_owner_grant_and_default_privilege_statements():
    script = """
ALTER TABLE sales.orders OWNER TO app_owner;
GRANT SELECT ON TABLE sales.orders TO "Report Reader";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE migrator IN SCHEMA sales GRANT SELECT ON TABLES TO app_reader;
CREATE FUNCTION f() RETURNS text AS $$ SELECT 'ALTER TABLE x OWNER TO nobody' $$ LANGUAGE sql;
"""
    assert pgtools.roles_in_script(script) == {"app_owner", "Report Reader", "migrator"}


def test_major_of_reads_release_and_prerelease_versions():
    assert [pgtools.major_of(v) for v in ("18.6", "9.6.24", "18beta1", "15")] == [18, 9, 18, 15]


def test_scratch_names_cannot_collide_and_are_recognised():
    names = {scratch.scratch_name("drill") for _ in range(200)}
    assert len(names) == 200
    for name in names:
        assert scratch.is_scratch_name(name) and len(name) < 63 and name == name.lower()
    assert scratch.scratch_name("restore").startswith("hotpot_restore_")
    assert not scratch.is_scratch_name("thehotpotspot")


def test_maintenance_target_avoids_the_database_being_replaced():
    from hotpot_orchestration.platform.pg import PgTarget

    server = PgTarget.from_url("postgresql://u@h:5432/thehotpotspot")
    assert scratch.maintenance_target(server).dbname == "thehotpotspot"
    assert scratch.maintenance_target(server, avoid=("thehotpotspot",)).dbname == "postgres"
    assert scratch.maintenance_target(server, avoid=("thehotpotspot", "postgres")).dbname == "template1"


def test_drill_schedule_follows_its_setting_and_the_time_zone():
    from hotpot_orchestration.definitions import build_definitions

    settings = load_settings(
        {"HOTPOT_RESTORE_DRILL_CRON": "30 5 * * 1-5", "HOTPOT_TIMEZONE": "Europe/Moscow"}
    )
    schedule = build_definitions(settings).get_repository_def().get_schedule_def("restore_drill_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 5 * * 1-5", "Europe/Moscow")
    assert load_settings({}).restore_drill_cron == "0 4 * * *"
    with pytest.raises(
        SettingsError, match="HOTPOT_RESTORE_DRILL_CRON='daily' is not valid: expected a five-field"
    ):
        load_settings({"HOTPOT_RESTORE_DRILL_CRON": "daily"})


def test_restore_drill_recent_fails_without_a_passing_drill_in_eight_days(monkeypatch):
    import dagster as dg

    from hotpot_orchestration import restores
    from hotpot_orchestration.platform.resources import BackupStorageResource, PostgresResource

    instance = dg.DagsterInstance.ephemeral()
    unused = PostgresResource(url="postgresql://nobody@127.0.0.1:9/none")
    resources = {
        "postgres": unused,
        "drill_postgres": unused,
        "backup_storage": BackupStorageResource(bucket="none"),
    }

    def evaluate() -> dg.AssetCheckEvaluation:
        result = dg.materialize(
            [restores.restore_drill, restores.restore_drill_recent],
            selection=dg.AssetSelection.checks(dg.AssetCheckKey(restores.DRILL_ASSET, restores.DRILL_RECENT)),
            instance=instance,
            resources=resources,
        )
        (evaluation,) = result.get_asset_check_evaluations()
        return evaluation

    never = evaluate()
    assert not never.passed and never.metadata["last_passing_drill"].value == "never"
    instance.report_runless_asset_event(dg.AssetMaterialization(restores.DRILL_ASSET))
    assert evaluate().passed
    now = time.time()
    monkeypatch.setattr(restores, "time", SimpleNamespace(time=lambda: now + 8.5 * 86400))
    stale = evaluate()
    assert not stale.passed and stale.metadata["age_days"].value == pytest.approx(8.5, abs=0.01)
