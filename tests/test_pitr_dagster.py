"""The pitr assets through Dagster: physical_backup with its metadata and the wal_archive check, retention,
pitr_drill's RTO and RPO; against real PostgreSQL, barman-cloud and moto."""

from __future__ import annotations

import dagster as dg
import pytest
from support.pitr import BUCKET, archive_everything, logical_backup

from hotpot_devstack import seed_sample
from hotpot_orchestration.pitr import build_defs
from hotpot_orchestration.pitr.assets import PitrResource, build_pitr_assets
from hotpot_orchestration.pitr.scratch import DEFAULT_ROOT
from hotpot_orchestration.platform.resources import BackupStorageResource, PostgresResource
from hotpot_orchestration.platform.units import format_bytes
from hotpot_orchestration.restores import restore_database_job
from hotpot_orchestration.settings import load_settings

pytestmark = pytest.mark.slow


@pytest.fixture
def resources(archiving_postgres, s3, monkeypatch):
    server = archiving_postgres
    for name, value in s3.env().items():  # the AWS chain of the code location's process
        monkeypatch.setenv(name, value)
    seed_sample(server, "app")
    return {
        "postgres": PostgresResource(url=server.url_for("app"), pg_bin_dir=str(server.bin_dir)),
        "backup_storage": BackupStorageResource(
            bucket=BUCKET, prefix=f"{server.wal_archive.prefix}database/", endpoint_url=s3.endpoint_url
        ),
        "pitr": PitrResource(
            bucket=BUCKET,
            prefix=server.wal_archive.prefix,
            server_name=server.wal_archive.server_name,
            endpoint_url=s3.endpoint_url,
        ),
    }


def test_physical_backup_check_retention_and_pitr_drill(archiving_postgres, resources):
    physical, retention, wal_archive, drill = build_pitr_assets(load_settings({}))
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [physical, retention, wal_archive], partition_key="2026-03-01", resources=resources, instance=instance
    )
    assert result.success
    (backup,) = result.asset_materializations_for_node("physical_backup")
    metadata = {key: value.value for key, value in backup.metadata.items()}
    assert metadata["stored_bytes"] > 0 and metadata["duration_seconds"] > 0
    assert metadata["stored_size"] == format_bytes(metadata["stored_bytes"])
    assert metadata["duration"].endswith(" s")
    assert metadata["begin_wal"] <= metadata["end_wal"] and "/" in metadata["end_lsn"]
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "wal_archive" and check.passed, check.description
    (kept,) = result.asset_materializations_for_node("physical_backup_retention")
    assert kept.metadata["policy"].value == "RECOVERY WINDOW OF 30 DAYS"
    assert kept.metadata["kept"].value == [metadata["backup_id"]] and kept.metadata["deleted"].value == []

    logical_backup(archiving_postgres, "app")
    archive_everything(archiving_postgres)
    drilled = dg.materialize([drill], resources=resources, instance=instance)
    (materialization,) = drilled.asset_materializations_for_node("pitr_drill")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    assert metadata["base_backup_id"] == backup.metadata["backup_id"].value
    assert metadata["tables_checked"] > 0 and metadata["rows_checked"] > 0
    assert metadata["rto_seconds"] > 0 and metadata["rpo_seconds"] == 0


def test_definitions_schedule_backups_checks_and_drills_by_default():
    defs = build_defs(load_settings({}))
    schedules = {schedule.name: schedule for schedule in defs.schedules}
    assert set(schedules) == {"physical_backup_schedule", "pitr_drill_schedule", "wal_archive_check_schedule"}
    for schedule in schedules.values():
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedules["wal_archive_check_schedule"].cron_schedule == "*/5 * * * *"


def restore(resources, **config):
    return restore_database_job.execute_in_process(
        run_config={"ops": {"restore_database": {"config": config}}},
        resources={key: resources[key] for key in ("postgres", "backup_storage", "pitr")},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def failure_of(result) -> str:
    (failure,) = [event for event in result.all_events if event.event_type_value == "STEP_FAILURE"]
    return failure.event_specific_data.error.message


def ledger(server, dbname: str) -> int:
    with server.connect(dbname) as conn:
        return conn.execute("SELECT count(*) FROM ledger").fetchone()[0]


def test_restore_database_job_restores_a_moment_and_a_restore_point_from_the_wal_archive(
    archiving_postgres, resources
):
    server = archiving_postgres
    physical, *_ = build_pitr_assets(load_settings({}))
    assert dg.materialize([physical], partition_key="2026-03-01", resources=resources).success
    with server.connect("app") as conn:  # autocommit: each statement commits on its own
        conn.execute("CREATE TABLE ledger (n int)")
        conn.execute("INSERT INTO ledger SELECT generate_series(1, 100)")
        moment = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        conn.execute("INSERT INTO ledger SELECT generate_series(101, 150)")
    point = logical_backup(server, "app").manifest["restore_point"]["name"]
    with server.connect("app") as conn:
        conn.execute("INSERT INTO ledger SELECT generate_series(151, 175)")
    archive_everything(server)
    leftovers_before = sorted(DEFAULT_ROOT.iterdir()) if DEFAULT_ROOT.exists() else []

    as_of = restore(resources, target_database="app_as_of", target_time=moment.isoformat())
    assert as_of.success, failure_of(as_of)
    assert ledger(server, "app_as_of") == 100  # the commit after the moment is not there
    (output,) = [e for e in as_of.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = {key: value.value for key, value in output.event_specific_data.metadata.items()}
    assert metadata["passed"] and metadata["tables_verified"] >= 2 and metadata["difference_count"] == 0
    assert moment.isoformat(timespec="seconds")[:19] in metadata["recovered"]

    at_point = restore(resources, target_database="app_at_point", restore_point=point)
    assert at_point.success, failure_of(at_point)
    assert ledger(server, "app_at_point") == 150  # the nightly backup's instant, not the later commit
    with server.connect("app_at_point") as conn:
        (comment,) = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = 'app_at_point'"
        ).fetchone()
    assert f"restore point {point!r}" in comment and "base backup" in comment

    refusals = [
        ({"target_time": "2999-01-01T00:00:00Z"}, "is in the future"),
        ({"target_time": moment.replace(tzinfo=None).isoformat()}, "needs its UTC offset"),
        ({"target_time": "yesterday"}, "is not an ISO 8601 time"),
        ({"restore_point": "no-such-point"}, f"(the newest: {point})"),
        ({"restore_point": point, "partition": "2026-03-01"}, "name the backup to restore (both given)"),
        ({"target_time": moment.isoformat(), "target_database": "app"}, "HOTPOT_DATABASE_URL points at"),
    ]
    for config, expected in refusals:
        refused = restore(resources, **{"target_database": "app_refused", **config})
        assert not refused.success and expected in failure_of(refused), (config, failure_of(refused))
    with server.connect() as conn:
        names = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
    assert "app_refused" not in names and not any(name.startswith("hotpot_") for name in names), names
    assert (sorted(DEFAULT_ROOT.iterdir()) if DEFAULT_ROOT.exists() else []) == leftovers_before
