"""The release gate on WAL archiving: refused while archiving fails, passed while it works, not looked at
without an archive. The rules on plain data first, then a real archiving PostgreSQL whose way to S3 is cut
(a forwarder that refuses connections, as in the pitr fault tests) while the orchestrator's way stays up,
through the release step's own gate function and the code location's wal_archive check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from support.deploy import production_settings
from support.pitr import BUCKET, SwitchableS3, archive_everything, archiving_server
from support.release import pushed_release_image
from support.waiting import wait_until

from hotpot_devstack.backups import write_backup_record
from hotpot_orchestration.definitions import build_definitions, build_resources
from hotpot_orchestration.operations.sensors import MetricsTextfileResource, pipeline_health_sensor
from hotpot_orchestration.pitr.archive import ArchivedWal, CheckReport, archiver_status
from hotpot_orchestration.pitr.barman import BarmanCloud
from hotpot_orchestration.platform.pg import PgTarget
from hotpot_orchestration.release.image.resource import RegistryResource
from hotpot_orchestration.release.rollout import wal_archive_watch
from hotpot_orchestration.release.rollout.checklist import check_gates
from hotpot_orchestration.release.rollout.gates import WalArchiveWatch, wal_archive_gate
from hotpot_orchestration.settings import load_settings

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
WATCH = WalArchiveWatch(BarmanCloud(bucket="backups", prefix="pitr/", server_name="hotpot-db"), 300)
LOCATION = "s3://backups/pitr/hotpot-db/wals/"
SEGMENT = "000000010000000A00000041"
FAILING = (
    "archive_command is failing: 000000010000000A00000042 failed at 2026-03-02 11:58:00 UTC (7 failures "
    "since the statistics were reset), after the last success 000000010000000A00000041"
)
GATE = "WAL archiving working"


def archive(age_seconds: float) -> ArchivedWal:
    return ArchivedWal({SEGMENT: NOW - timedelta(seconds=age_seconds)})


def report(passed: bool, seconds_ago: float, description: str = "") -> CheckReport:
    return CheckReport(passed, description, NOW - timedelta(seconds=seconds_ago), None)


def gate(archived: ArchivedWal, check: CheckReport | None, watch: WalArchiveWatch | None = WATCH):
    return wal_archive_gate(lambda: archived, lambda: check, NOW, watch=watch)


def test_without_an_archive_wal_is_not_looked_at_and_says_so():
    def unreachable():
        raise AssertionError("listed although no archive is configured")

    result = wal_archive_gate(unreachable, unreachable, NOW, watch=None)
    assert result.passed and result.name == GATE
    assert "not looked at" in result.detail


def test_the_wal_gate_watches_the_pitr_archive_unless_the_setting_turns_it_off():
    settings = load_settings({"HOTPOT_PITR_PREFIX": "wal/", "HOTPOT_BARMAN_SERVER_NAME": "db1"})
    watch = wal_archive_watch(settings)
    assert watch.location == "s3://thehotpotspot-backups/wal/db1/wals/"
    # deploy/k8s/config.yaml: off until the CloudNativePG cluster's archiving is confirmed.
    assert wal_archive_watch(production_settings()) is None
    assert wal_archive_watch(production_settings(HOTPOT_RELEASE_WAL_GATE="true")) is not None


def test_a_fresh_archive_passes_and_a_stale_one_is_refused_naming_what_was_seen():
    fresh = gate(archive(40), report(True, 100))
    assert fresh.passed, fresh.detail
    assert f"the newest WAL segment in {LOCATION} is {SEGMENT}, 40 s old" in fresh.detail

    stale = gate(archive(900), None)
    assert not stale.passed
    assert f"the newest WAL segment in {LOCATION} is {SEGMENT}, 900 s old (limit 300 s)" in stale.detail
    assert "the wal_archive check has not been evaluated yet" in stale.detail
    assert "launch wal_archive_check_job" in stale.detail  # what to do
    assert stale.subject.newest_wal == SEGMENT and stale.subject.age_seconds == 900

    empty = gate(ArchivedWal({}), None)
    assert not empty.passed and f"{LOCATION} holds no WAL segment" in empty.detail


def test_an_idle_server_passes_only_while_the_check_vouches_for_it():
    # The check passed 4 minutes ago with the segment already old: nothing was waiting to be archived.
    idle = gate(archive(3600), report(True, 240))
    assert idle.passed, idle.detail
    assert "no WAL waiting" in idle.detail
    # 20 minutes ago is too long: the archiver may have stopped since.
    stale = gate(archive(3600), report(True, 1200))
    assert not stale.passed
    assert "too long ago to vouch for an idle server" in stale.detail


def test_a_failing_check_refuses_until_a_segment_reaches_the_store_after_it():
    # The segment was stored 5 minutes before the failing evaluation (2 minutes ago): nothing since.
    failing = gate(archive(420), report(False, 120, FAILING))
    assert not failing.passed
    assert "WAL archiving is failing" in failing.detail
    assert FAILING in failing.detail  # the archiver's last failure, as pg_stat_archiver said it
    assert f"{SEGMENT}, 420 s old, none archived since" in failing.detail
    # Even a segment younger than the limit does not open the gate while the archiver fails after it.
    assert not gate(archive(130), report(False, 120, FAILING)).passed
    # A segment stored after the failing evaluation: archiving moved on.
    recovered = gate(archive(30), report(False, 120, FAILING))
    assert recovered.passed, recovered.detail
    assert "a segment was archived after it" in recovered.detail


def test_segments_stored_within_the_failing_evaluations_second_open_the_gate_by_name():
    # S3 keeps LastModified to the second: segments stored just after the evaluation, in its second, carry
    # a time before it. The names tell: the one that was failing, and one after it, are in the store now.
    evaluated = NOW - timedelta(seconds=0.6)
    seen = CheckReport(False, FAILING, evaluated, None, SEGMENT, "000000010000000A00000042")
    same_second = NOW - timedelta(seconds=1)
    for stored in ("000000010000000A00000042", "000000010000000A00000043"):
        result = gate(ArchivedWal({SEGMENT: same_second, stored: same_second}), seen)
        assert result.passed, (stored, result.detail)
    assert not gate(ArchivedWal({SEGMENT: same_second}), seen).passed


def test_an_archive_that_cannot_be_listed_refuses():
    def down() -> ArchivedWal:
        raise ConnectionError("Could not connect to the endpoint URL")

    result = wal_archive_gate(down, lambda: report(True, 10), NOW, watch=WATCH)
    assert not result.passed
    assert f"could not list the WAL archive {LOCATION}: ConnectionError" in result.detail


def _health(instance, textfile) -> dict[str, float]:
    resource = MetricsTextfileResource(path=str(textfile))
    context = dg.build_sensor_context(instance=instance, resources={"metrics_textfile": resource})
    pipeline_health_sensor(context)
    lines = [line.split() for line in textfile.read_text().splitlines() if line.startswith("hotpot_wal")]
    return {name: float(value) for name, value in lines}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_release_is_refused_while_the_servers_archive_command_fails(s3, registry, monkeypatch, tmp_path):
    with SwitchableS3(s3) as switch, archiving_server(switch) as server:
        # The code location's view: S3 directly (its own way there stays up), the server's URL.
        env = {
            "HOTPOT_DATABASE_URL": server.url,
            "HOTPOT_PG_BIN_DIR": str(server.bin_dir),
            "HOTPOT_BACKUP_BUCKET": BUCKET,
            "HOTPOT_BACKUP_PREFIX": f"{server.wal_archive.prefix}database/",
            "HOTPOT_PITR_PREFIX": server.wal_archive.prefix,
            "HOTPOT_BARMAN_SERVER_NAME": server.wal_archive.server_name,
            **s3.env(),
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = load_settings()
        defs = build_definitions(settings)
        storage = build_resources(settings)["backup_storage"]
        target = PgTarget.from_url(server.url)
        fresh = datetime.now(UTC) - timedelta(hours=1)
        write_backup_record(s3.client(), BUCKET, settings.backup_prefix, target.dbname, fresh, ok=True)
        image = pushed_release_image(registry)
        watch = wal_archive_watch(settings)
        location = f"s3://{BUCKET}/{server.wal_archive.prefix}{server.wal_archive.server_name}/wals/"
        assert watch.location == location

        def release_gates(instance) -> None:
            with dg.build_op_context(instance=instance) as context:
                check_gates(
                    context,
                    image,
                    RegistryResource(registry=registry.host),
                    storage,
                    "http://127.0.0.1:3000",
                    watch,
                )

        def run_check(instance) -> dg.AssetCheckEvaluation:
            result = defs.resolve_job_def("wal_archive_check_job").execute_in_process(instance=instance)
            (evaluation,) = result.get_asset_check_evaluations()
            return evaluation

        with dg.instance_for_test() as instance:
            archive_everything(server)
            healthy = run_check(instance)
            assert healthy.passed, healthy.description
            release_gates(instance)  # passes: no exception
            assert _health(instance, tmp_path / "healthy.prom")["hotpot_wal_archive_check_passed"] == 1

            # The server's way to S3 is cut: the archiver fails on the next segments it is given.
            switch.down()

            def archiver_failing():
                status = archiver_status(target)
                if status.failing:
                    return status
                with server.connect() as conn:  # a commit, and a finished segment to archive
                    conn.execute("SELECT pg_current_xact_id()")
                    conn.execute("SELECT pg_switch_wal()")
                return None

            status = wait_until(
                archiver_failing,
                240,
                lambda: f"archive_command to fail while S3 is unreachable: {archiver_status(target)}",
                interval=1,
            )
            failed = run_check(instance)
            assert not failed.passed and "archive_command is failing" in failed.description

            with pytest.raises(dg.Failure) as refused:
                release_gates(instance)
            message = refused.value.description
            assert f"gate '{GATE}': WAL archiving is failing" in message
            assert "the wal_archive check failed (" in message
            assert f"): archive_command is failing: {status.last_failed_wal} failed at" in message
            # The archiver's last success is the newest segment in the store.
            assert f"the newest WAL segment in {location} is {status.last_archived_wal}" in message
            assert "launch wal_archive_check_job" in message
            assert "gate 'backup fresh and verified'" not in message  # that one passed
            metadata = {key: value.value for key, value in refused.value.metadata.items()}
            assert metadata["wal_archive"] == location
            assert metadata["newest_archived_wal"] == status.last_archived_wal
            assert metadata["archiver_last_failed_wal"] == status.last_failed_wal
            assert metadata["wal_archive_age_seconds"] >= 0
            assert metadata["wal_archive_check_link"].endswith("/assets/physical_backup?view=checks")

            # What pipeline health exports from that evaluation, without any credentials.
            health = _health(instance, tmp_path / "failing.prom")
            assert health["hotpot_wal_archive_check_passed"] == 0
            assert health["hotpot_wal_archive_age_seconds"] >= 0
            evaluated_at = instance.event_log_storage.get_asset_check_execution_history(
                dg.AssetCheckKey(dg.AssetKey("physical_backup"), "wal_archive"), limit=1
            )[0].event.timestamp
            assert health["hotpot_wal_archive_check_timestamp_seconds"] == pytest.approx(evaluated_at)

            # S3 comes back: once the waiting segments are archived the gate opens, before the check
            # runs again (a segment stored after the failing evaluation shows archiving moved on).
            switch.up()
            archive_everything(server, timeout=240)
            release_gates(instance)
            assert run_check(instance).passed
            release_gates(instance)
