"""The release gate's backup: HOTPOT_DATABASE_URL's database's, not any backup in the bucket. Real S3 (moto)
holding backup records as postgres_backup writes them, and the devstack registry holding the image."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from support.release import pushed_release_image

from hotpot_devstack.backups import write_backup_record
from hotpot_orchestration.backups.checks import MAX_AGE
from hotpot_orchestration.definitions import build_resources
from hotpot_orchestration.platform.resources import BackupStorageResource
from hotpot_orchestration.release.image.resource import RegistryResource
from hotpot_orchestration.release.rollout.checklist import check_gates
from hotpot_orchestration.release.rollout.gates import backup_gate
from hotpot_orchestration.settings import load_settings

PREFIX = "database/"


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch, s3):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)


def test_another_databases_backup_does_not_open_the_gate(s3, registry):
    """latest_backup(...) was once asked without the database: a fresh backup of any database passed."""
    bucket = f"gate-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    image = pushed_release_image(registry)
    gate_resources = (
        image,
        RegistryResource(registry=registry.host),
        BackupStorageResource(
            bucket=bucket,
            prefix=PREFIX,
            endpoint_url=s3.endpoint_url,
            region=s3.region,
            database="thehotpotspot",
        ),
        "http://127.0.0.1:3000",  # the UI a refusal links to
    )
    now = datetime.now(UTC)
    client = s3.client()
    other_key, _ = write_backup_record(client, bucket, PREFIX, "analytics", now - timedelta(hours=1), ok=True)

    with dg.build_op_context() as context, pytest.raises(dg.Failure) as blocked:
        check_gates(context, *gate_resources)
    message = blocked.value.description
    assert "gate 'backup fresh and verified': no verified backup of database 'thehotpotspot'" in message
    assert other_key not in message
    assert "gate 'image digest in the registry'" not in message  # that one passed

    stale_key, _ = write_backup_record(
        client, bucket, PREFIX, "thehotpotspot", now - timedelta(hours=27), ok=True
    )
    with dg.build_op_context() as context, pytest.raises(dg.Failure) as stale:
        check_gates(context, *gate_resources)
    assert f"latest verified backup of 'thehotpotspot', {stale_key}, is 27.0 h old" in stale.value.description
    assert "the limit is 26 h" in stale.value.description

    write_backup_record(client, bucket, PREFIX, "thehotpotspot", now - timedelta(hours=2), ok=True)
    with dg.build_op_context() as context:
        check_gates(context, *gate_resources)  # passes: no exception


def test_the_gates_database_is_hotpot_database_urls_and_unset_blocks_the_release():
    url = "postgresql://app:s3cret@db.internal:5433/thehotpotspot"
    storage = build_resources(load_settings({"HOTPOT_DATABASE_URL": url}))["backup_storage"]
    assert storage.database == "thehotpotspot"
    assert "s3cret" not in repr(storage)  # the name only: a release needs no database credentials
    unset = build_resources(load_settings({}))["backup_storage"]
    result = backup_gate(lambda: None, datetime.now(UTC), database=unset.database, max_age=MAX_AGE)
    assert not result.passed and "HOTPOT_DATABASE_URL is not set" in result.detail
