"""postgres_backup, its checks, backup_retention and the nightly job, run through Dagster against real
PostgreSQL and S3 (moto's server and SeaweedFS), configured from the environment as in production."""

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
import yaml
from botocore.exceptions import ClientError
from dagster._core.storage.dagster_run import DagsterRun
from dagster._utils.tags import TagConcurrencyLimitsCounter
from support.backups import FOREIGN_KEYS, put_foreign_keys
from support.waiting import wait_until

from hotpot_devstack import S3Server
from hotpot_devstack.backups import write_backup_record
from hotpot_devstack.s3 import FaultyS3Proxy
from hotpot_orchestration.backups import build_defs
from hotpot_orchestration.backups.assets import BACKUP_ATTEMPTS, backup_partitions
from hotpot_orchestration.backups.catalog import backup_keys, list_backups, load_backup, read_manifest
from hotpot_orchestration.backups.checks import FRESH, VALID
from hotpot_orchestration.backups.schedules import BACKUP_DATABASE_TAG
from hotpot_orchestration.backups.stream import same_s3_checksum
from hotpot_orchestration.definitions import build_resources
from hotpot_orchestration.platform.pg import PgTarget
from hotpot_orchestration.platform.resources import BackupStorageResource
from hotpot_orchestration.platform.units import format_bytes, format_duration
from hotpot_orchestration.restores.procedure import RestoreOptions, restore_backup
from hotpot_orchestration.settings import load_settings

pytestmark = pytest.mark.slow

PREFIX = "database/"
ROOT = Path(__file__).resolve().parents[1]
INSTANCE_FILES = {"local": ROOT / "dagster.yaml", "production": ROOT / "deploy" / "dagster.yaml"}
NO_RETRY_TAG = "dagster/retry_on_asset_or_op_failure"


@pytest.fixture
def bucket(s3_server):
    name = f"backups-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(name)
    return name


def environment(monkeypatch, postgres, s3_server, bucket, dbname, **extra):
    """The variables a deployment sets; resources read the secrets from here through EnvVar."""
    env = {
        "HOTPOT_DATABASE_URL": postgres.url_for(dbname),
        "HOTPOT_PG_BIN_DIR": str(postgres.bin_dir),
        "HOTPOT_BACKUP_BUCKET": bucket,
        "HOTPOT_BACKUP_PREFIX": PREFIX,
        **s3_server.env(),
        **extra,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


# The code location's policy, with waits of a tenth of a second instead of a minute.
QUICK_RETRY = dg.RetryPolicy(max_retries=BACKUP_ATTEMPTS - 1, delay=0.1, backoff=dg.Backoff.EXPONENTIAL)


def code_location(**overrides) -> dg.Definitions:
    """The backups concern with the code location's own resources (a few S3 attempts, to fail fast) and its
    retry policy with short waits."""
    settings = load_settings()
    resources = build_resources(settings)
    storage = resources["backup_storage"]
    resources["backup_storage"] = BackupStorageResource(
        bucket=storage.bucket,
        prefix=storage.prefix,
        endpoint_url=storage.endpoint_url,
        region=storage.region,
        max_attempts=overrides.get("max_attempts", storage.max_attempts),
    )
    return dg.Definitions.merge(build_defs(settings, QUICK_RETRY), dg.Definitions(resources=resources))


def latest_partition() -> str:
    return backup_partitions(load_settings()).get_last_partition_key()


def run_nightly(partition: str | None = None, **overrides):
    defs = code_location(**overrides)
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def("nightly_backup_job").execute_in_process(
        partition_key=partition or latest_partition(), instance=instance, raise_on_error=False
    )
    return result, instance


def run_selection(selection: dg.AssetSelection):
    """Run part of the concern (as the UI does when one asset or check is launched alone)."""
    job = dg.define_asset_job("selected", selection=selection)
    defs = dg.Definitions.merge(code_location(), dg.Definitions(jobs=[job]))
    return defs.resolve_job_def("selected").execute_in_process(instance=dg.DagsterInstance.ephemeral())


def with_causes(error) -> str:
    """An error's message and its causes' (after the last retry, Dagster's own error wraps ours)."""
    messages = []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    return "\n".join(messages)


def failure_message(result) -> str:
    [failure] = [event for event in result.all_events if event.event_type == dg.DagsterEventType.STEP_FAILURE]
    return with_causes(failure.step_failure_data.error)


def retries(result) -> list[str]:
    """The error of each failed attempt of a step that its RetryPolicy retried."""
    return [
        with_causes(event.event_specific_data.error)
        for event in result.all_events
        if event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY
    ]


def everything_recorded(result, instance) -> str:
    """Every event of the run (messages, metadata, errors) as stored by the instance."""
    return "\n".join(dg.serialize_value(entry) for entry in instance.all_logs(result.run_id))


def test_nightly_job_backs_up_verifies_and_prunes(monkeypatch, postgres, s3_server, bucket, sample_database):
    environment(monkeypatch, postgres, s3_server, bucket, sample_database, HOTPOT_BACKUP_COMPRESSION="gzip:6")
    result, instance = run_nightly()
    assert result.success

    [materialization] = [
        m
        for m in result.asset_materializations_for_node("postgres_backup")
        if m.partition == latest_partition()
    ]
    meta = {key: value.value for key, value in materialization.metadata.items()}
    client = s3_server.client()
    manifest = read_manifest(client, bucket, meta["manifest_key"])
    head = client.head_object(Bucket=bucket, Key=meta["dump_key"], ChecksumMode="ENABLED")
    assert meta["s3_uri"] == f"s3://{bucket}/{manifest['dump_key']}"
    assert meta["sha256"] == manifest["sha256"]
    assert same_s3_checksum(head["ChecksumSHA256"], manifest["s3_checksum_sha256"])
    assert meta["dump_bytes"] == manifest["dump_bytes"] == head["ContentLength"]
    assert meta["tables"] == len(manifest["tables"]) > 0
    assert meta["rows"] == sum(table["rows"] for table in manifest["tables"]) > 0
    with postgres.connect(sample_database) as conn:
        assert (
            conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            == meta["database_bytes"]
        )
        assert conn.execute("SELECT count(*) FROM sales.orders").fetchone()[0] == next(
            t["rows"] for t in manifest["tables"] if (t["schema"], t["name"]) == ("sales", "orders")
        )
        # What the dump holds: the dumped tables' heap and TOAST, no indexes (autovacuum may since have
        # added a visibility map, hence approx).
        table_data_bytes = conn.execute(
            "SELECT sum(pg_table_size(format('%%I.%%I', t->>'schema', t->>'name')::regclass))::bigint"
            " FROM jsonb_array_elements(%s::jsonb) t",
            [json.dumps(manifest["tables"])],
        ).fetchone()[0]
    assert meta["table_data_bytes"] == manifest["table_data_bytes"]
    assert meta["table_data_bytes"] == pytest.approx(table_data_bytes, rel=0.25)
    assert 0 < meta["table_data_bytes"] < meta["database_bytes"]
    assert meta["compression_ratio"] == pytest.approx(meta["table_data_bytes"] / meta["dump_bytes"], rel=1e-3)
    assert 1 < meta["compression_ratio"] < 50
    assert meta["compression_ratio_of"] == "table data (heap + TOAST, no indexes) per dump byte"
    # Readable companions of the raw numbers.
    assert meta["dump_size"] == format_bytes(meta["dump_bytes"])
    assert meta["database_size"] == format_bytes(meta["database_bytes"])
    assert meta["table_data_size"] == format_bytes(meta["table_data_bytes"])
    assert meta["dump_size"].endswith(("B", "KiB", "MiB", "GiB"))
    assert meta["duration_seconds"] > 0
    assert meta["duration"] in {format_duration(meta["duration_seconds"] + d) for d in (-0.001, 0, 0.001)}
    print(
        f"compression_ratio {meta['compression_ratio']} ({meta['table_data_size']} of table data, dump "
        f"{meta['dump_size']}); the whole database ({meta['database_size']}) per dump byte: "
        f"{meta['database_bytes'] / meta['dump_bytes']:.3f}; duration {meta['duration']}"
    )
    assert meta["mb_per_second"] == pytest.approx(
        meta["dump_bytes"] / 1e6 / meta["duration_seconds"], rel=1e-2
    )
    assert meta["compression"] == manifest["compression"] == head["Metadata"]["compression"] == "gzip:6"
    assert manifest["partition"] == materialization.partition
    assert manifest["dump_key"].startswith(
        f"{PREFIX}{sample_database}/{latest_partition()}/{sample_database}-"
    )

    checks = {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}
    assert checks[VALID].passed and checks[FRESH].passed
    assert manifest["verification"]["ok"] is True  # written by the check, after the materialization
    assert "as in the manifest" in manifest["verification"]["detail"]
    [retention] = result.asset_materializations_for_node("backup_retention")
    assert retention.metadata["deleted"].value == 0 and retention.metadata["kept_verified"].value == 1
    assert "uploaded" in everything_recorded(result, instance)  # progress in the run log

    # And a drill restores what the night stored, with the manifest's counts.
    backup = load_backup(client, bucket, PREFIX, meta["manifest_key"])
    report = restore_backup(
        client, bucket, backup, PgTarget.from_url(postgres.url), postgres.bin_dir, RestoreOptions(jobs=2)
    )
    assert report.passed, report.differences
    assert report.rows == meta["rows"]


def test_a_long_past_partition_is_refused(monkeypatch, postgres, s3_server, bucket, sample_database):
    environment(monkeypatch, postgres, s3_server, bucket, sample_database)
    old = (datetime.now(UTC) - timedelta(days=10)).date().isoformat()
    result, instance = run_nightly(old)
    assert not result.success
    message = failure_message(result)
    assert f"Refusing to back up partition {old}" in message and "latest partition" in message
    assert s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert instance.get_run_by_id(result.run_id).tags[NO_RETRY_TAG] == "false"


def test_a_wrong_password_is_named_and_never_recorded(
    monkeypatch, postgres, s3_server, bucket, sample_database, capfd
):
    wrong = f"Wr0ng-{uuid.uuid4().hex}"
    environment(
        monkeypatch,
        postgres,
        s3_server,
        bucket,
        sample_database,
        HOTPOT_DATABASE_URL=postgres.url_for(sample_database).replace(f":{postgres.password}@", f":{wrong}@"),
    )
    result, instance = run_nightly()
    assert not result.success
    assert "HOTPOT_DATABASE_URL's password was refused" in failure_message(result)
    # Not retried: neither by the step's RetryPolicy, nor by the instance's run retries.
    assert retries(result) == []
    assert instance.get_run_by_id(result.run_id).tags[NO_RETRY_TAG] == "false"
    captured = capfd.readouterr()
    for text in (everything_recorded(result, instance), captured.out, captured.err):
        assert wrong not in text
    assert list_backups(s3_server.client(), bucket, PREFIX) == []


def test_s3_down_fails_the_run_saying_so(monkeypatch, postgres, fresh_s3, sample_database):
    fresh_s3.create_bucket("backups-down")
    environment(monkeypatch, postgres, fresh_s3, "backups-down", sample_database)
    fresh_s3.stop()
    result, _ = run_nightly(max_attempts=2)
    assert not result.success
    message = failure_message(result)
    assert "S3 at http://127.0.0.1:" in message and "is unreachable" in message
    # Transient: the step's RetryPolicy tried it BACKUP_ATTEMPTS times in all.
    assert len(retries(result)) == BACKUP_ATTEMPTS - 1


def test_refused_aws_keys_are_named(monkeypatch, postgres, sample_database):
    # moto checks credentials against its (empty) IAM store when told to.
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "0")
    with S3Server() as strict_s3:
        environment(monkeypatch, postgres, strict_s3, "backups-strict", sample_database)
        result, _ = run_nightly(max_attempts=2)
    assert not result.success
    message = failure_message(result)
    assert f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY refused by S3 at {strict_s3.endpoint_url}" in message
    assert strict_s3.secret_key not in message


def test_retention_on_40_nights_with_the_newest_10_failed(monkeypatch, postgres, s3_server, bucket):
    environment(
        monkeypatch,
        postgres,
        s3_server,
        bucket,
        "hotpot",
        HOTPOT_BACKUP_RETENTION_DAYS="5",
        HOTPOT_BACKUP_MIN_KEEP="7",
    )
    client = s3_server.client()
    put_foreign_keys(client, bucket)
    now = datetime.now(UTC).replace(microsecond=0)
    for age in range(40):
        write_backup_record(
            client, bucket, PREFIX, "hotpot", now - timedelta(days=age, hours=1), ok=age >= 10
        )
    other_database = write_backup_record(
        client, bucket, PREFIX, "analytics", now - timedelta(days=90), ok=True
    )

    result = run_selection(dg.AssetSelection.assets("backup_retention"))
    assert result.success
    remaining = list_backups(client, bucket, PREFIX, "hotpot")
    verified = [backup for backup in remaining if backup.verified]
    assert len(verified) == 7  # the guard: every verified backup is past the 5-day window
    assert len(remaining) == 7 + 5  # and the failed ones still inside the window
    meta = result.asset_materializations_for_node("backup_retention")[0].metadata
    assert meta["deleted"].value == 40 - 12 and meta["kept_past_window"].value == 7
    assert len(meta["deleted_keys"].value) == 28
    keys = {item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert set(FOREIGN_KEYS) <= keys
    assert set(other_database) <= keys


def test_freshness_check_fails_when_the_latest_verified_backup_is_older_than_26_hours(
    monkeypatch, postgres, s3_server, bucket
):
    environment(monkeypatch, postgres, s3_server, bucket, "hotpot")
    client = s3_server.client()
    now = datetime.now(UTC)
    write_backup_record(client, bucket, PREFIX, "hotpot", now - timedelta(hours=27), ok=True)
    write_backup_record(client, bucket, PREFIX, "hotpot", now - timedelta(hours=1), ok=False)
    result = run_selection(dg.AssetSelection.checks(dg.AssetCheckKey(dg.AssetKey("postgres_backup"), FRESH)))
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.check_name == FRESH and not evaluation.passed
    assert "27.0 h old" in evaluation.description


def test_schedule_runs_at_two_for_the_day_that_ended(monkeypatch):
    monkeypatch.setenv("HOTPOT_TIMEZONE", "Asia/Shanghai")
    schedule = code_location().resolve_schedule_def("nightly_backup_schedule")
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.execution_timezone == "Asia/Shanghai"
    tick = datetime(2026, 3, 1, 2, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
    [request] = schedule.evaluate_tick(dg.build_schedule_context(scheduled_execution_time=tick)).run_requests
    assert request.partition_key == "2026-02-28"
    assert request.job_name == "nightly_backup_job"


def test_a_part_corrupted_on_the_way_to_seaweedfs_is_retried_by_the_steps_policy(
    monkeypatch, postgres, seaweedfs, sample_database
):
    bucket = f"backups-{uuid.uuid4().hex[:12]}"
    seaweedfs.create_bucket(bucket)
    with FaultyS3Proxy(seaweedfs, "corrupt") as corrupting:
        environment(monkeypatch, postgres, corrupting, bucket, sample_database)
        result, _ = run_nightly()
    assert result.success
    [refused] = retries(result)
    assert "BadDigest" in refused
    client = seaweedfs.client()
    [stored] = list_backups(client, bucket, PREFIX, sample_database)
    assert stored.verified  # the archive check read the retried attempt's dump back in full
    # The failed attempt left nothing: one dump and its manifest, no upload.
    keys = sorted(item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == sorted([stored.dump_key, stored.manifest_key])
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_backups_of_one_database_queue_behind_each_other(monkeypatch, postgres, s3_server, bucket):
    environment(monkeypatch, postgres, s3_server, bucket, "hotpot")
    tags = code_location().resolve_job_def("nightly_backup_job").tags
    assert tags[BACKUP_DATABASE_TAG] == "hotpot"
    assert tags["dagster/max_runtime"] == str(load_settings().backup_timeout_seconds)
    # Declared on the job, not added to a run while it fails: the step's RetryPolicy retries what may pass,
    # the instance's run retries never replay a failed step.
    assert tags[NO_RETRY_TAG] == "false"
    manual = DagsterRun(job_name="nightly_backup_job", run_id="b", tags=tags)  # launched by hand
    other_database = DagsterRun(
        job_name="nightly_backup_job", run_id="c", tags={**tags, BACKUP_DATABASE_TAG: "x"}
    )
    for name, path in INSTANCE_FILES.items():
        limits = yaml.safe_load(path.read_text())["run_coordinator"]["config"]["tag_concurrency_limits"]
        # Dagster's own run queue counter, fed the instance file's limits, as the daemon dequeues runs.
        counter = TagConcurrencyLimitsCounter(limits, [])
        counter.update_counters_with_launched_item(
            DagsterRun(job_name="nightly_backup_job", run_id="a", tags=tags)
        )
        assert counter.is_blocked(manual), f"{name} instance ({path}) lets two backups of one database run"
        assert not counter.is_blocked(other_database), f"{name} instance blocks another database's backup"


def test_s3_attempts_are_what_max_attempts_says():
    requests = []

    class Unavailable(BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        storage = BackupStorageResource(
            bucket="b-503", endpoint_url=f"http://127.0.0.1:{server.server_port}", max_attempts=3
        )
        client = storage.client()
        with pytest.raises(ClientError):
            client.list_objects_v2(Bucket="b-503")
    finally:
        server.shutdown()
        server.server_close()
    assert len(requests) == 3


def test_retention_removes_what_a_killed_backup_left_once_older_than_a_run_can_last(
    monkeypatch, postgres, s3_server, bucket
):
    # A run lasts at most 1 s here, and a stall is noticed within 1 s: older than 2 s is an orphan.
    environment(
        monkeypatch,
        postgres,
        s3_server,
        bucket,
        "hotpot",
        HOTPOT_BACKUP_TIMEOUT_SECONDS="1",
        HOTPOT_BACKUP_STALL_SECONDS="1",
    )
    client = s3_server.client()
    put_foreign_keys(client, bucket)
    now = datetime.now(UTC)
    good = write_backup_record(client, bucket, PREFIX, "hotpot", now - timedelta(hours=1), ok=True)
    orphan, _ = backup_keys(PREFIX, "hotpot", now.date().isoformat(), now)
    client.put_object(
        Bucket=bucket,
        Key=orphan,
        Body=b"PGDMP",
        Metadata={"database": "hotpot", "partition": now.date().isoformat()},
    )
    modified = client.head_object(Bucket=bucket, Key=orphan)["LastModified"]
    wait_until(lambda: datetime.now(UTC) - modified > timedelta(seconds=3), 10, "the orphan to age")

    result = run_selection(dg.AssetSelection.assets("backup_retention"))
    assert result.success
    meta = result.asset_materializations_for_node("backup_retention")[0].metadata
    assert meta["orphan_dumps_deleted"].value == [orphan]
    assert meta["orphan_uploads_aborted"].value == []
    keys = {item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert orphan not in keys and set(good) <= keys and set(FOREIGN_KEYS) <= keys
