"""The pitr assets through Dagster: physical_backup with its metadata and the wal_archive check, retention,
pitr_drill's RTO and RPO; against real PostgreSQL, barman-cloud and moto."""

from __future__ import annotations

import dagster as dg
import pytest
from support.pitr import BUCKET, archive_everything, logical_backup

from hotpot_devstack import seed_sample
from hotpot_orchestration.pitr import build_defs
from hotpot_orchestration.pitr.assets import PitrResource, build_pitr_assets
from hotpot_orchestration.platform.resources import BackupStorageResource, PostgresResource
from hotpot_orchestration.platform.units import format_bytes
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
