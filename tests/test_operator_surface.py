"""The operator's surface end to end: dagster-webserver and dagster-daemon with the project's own
dagster.yaml and workspace.yaml on a private DAGSTER_HOME, against the devstack, driven through the GraphQL
API the UI uses."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator

import pytest
from support import automation
from support.waiting import wait_until

from hotpot_devstack.dagster_services import DagsterServices

pytestmark = pytest.mark.slow

FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
RUN_STATUS = (
    "query Run($id: ID!) { runOrError(runId: $id) { ... on Run { status jobName tags { key value } } } }"
)
RUN_HISTORY = """
query History($job: String!) {
  runsOrError(filter: {pipelineName: $job}) { ... on Runs { results { runId status jobName } } }
}"""
MATERIALIZATIONS = """
query Mats($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset {
      assetMaterializations(limit: 10) {
        runId partition
        metadataEntries {
          label
          ... on IntMetadataEntry { intValue }
          ... on FloatMetadataEntry { floatValue }
          ... on TextMetadataEntry { text }
          ... on UrlMetadataEntry { url }
        }
      }
    }
  }
}"""


def launch(dagster_ui: DagsterServices, job: str, tags: dict[str, str] | None = None) -> str:
    params = {
        "selector": {
            "repositoryLocationName": automation.LOCATION,
            "repositoryName": automation.REPOSITORY,
            "jobName": job,
        },
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]},
    }
    result = dagster_ui.graphql(LAUNCH, {"params": params})["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def wait_for(what, check, dagster_ui: DagsterServices, timeout: float = 180):
    """What `check` returns once it is truthy; after `timeout` fails with `what` (a string, or a callable
    saying what it saw) and the daemon's log."""

    def failure() -> str:
        said = what() if callable(what) else what
        return f"{said}; daemon log:\n{dagster_ui.log('daemon')[-3000:]}"

    return wait_until(check, timeout, failure, interval=1)


def wait_for_run(dagster_ui: DagsterServices, run_id: str, timeout: float = 240) -> str:
    def finished() -> str | None:
        status = dagster_ui.graphql(RUN_STATUS, {"id": run_id})["runOrError"]["status"]
        return status if status in FINISHED else None

    return wait_for(f"run {run_id} did not finish", finished, dagster_ui, timeout)


def backup_partitions():
    from hotpot_orchestration.definitions import defs

    return defs.get_assets_def("postgres_backup").partitions_def


@pytest.fixture(scope="module", autouse=True)
def refused_backup(dagster_ui: DagsterServices) -> tuple[str, str]:
    """(run id, partition) of a backup run that fails for certain: the partitions' first day is long past,
    and a backup of it is refused. Launched before the module's tests run, so that run_failure_alert_sensor
    (a tick every 30 s) alerts it while they do."""
    partition = backup_partitions().get_first_partition_key()
    return launch(dagster_ui, "nightly_backup_job", {"dagster/partition": partition}), partition


@pytest.fixture(scope="module", autouse=True)
def drill_schedule(dagster_ui: DagsterServices) -> Iterator[dict]:
    """restore_drill_schedule running while the module's tests run, and its selector: it ticks every minute
    here, so its tick comes while the tests before it run. Stopped afterwards, so that it does not launch a
    drill every minute of the rest of the session."""
    automation.start(dagster_ui, "schedule", "restore_drill_schedule")
    yield automation.selector("schedule", "restore_drill_schedule")
    automation.stop(dagster_ui, "schedule", "restore_drill_schedule")


def test_nightly_backup_launched_from_the_api_succeeds_with_history_and_metadata(dagster_ui):
    partition = backup_partitions().get_last_partition_key()
    run_id = launch(dagster_ui, "nightly_backup_job", {"dagster/partition": partition})
    assert wait_for_run(dagster_ui, run_id) == "SUCCESS"

    history = dagster_ui.graphql(RUN_HISTORY, {"job": "nightly_backup_job"})["runsOrError"]["results"]
    assert {"runId": run_id, "status": "SUCCESS", "jobName": "nightly_backup_job"} in history

    mats = dagster_ui.graphql(MATERIALIZATIONS, {"path": ["postgres_backup"]})["assetOrError"]
    ours = [m for m in mats["assetMaterializations"] if m["runId"] == run_id]
    assert len(ours) == 1 and ours[0]["partition"] == partition
    metadata = {entry["label"]: entry for entry in ours[0]["metadataEntries"]}
    assert metadata, "the backup's materialization carries metadata"
    text = " ".join(str(entry) for entry in metadata.values())
    assert "s3://thehotpotspot-backups/" in text


SCHEDULE_TICKS = """
query Ticks($selector: ScheduleSelector!) {
  scheduleOrError(scheduleSelector: $selector) {
    ... on Schedule { scheduleState { ticks(limit: 5) { status runIds timestamp } } }
  }
}"""
RUNS_WITH_TAGS = """
query Runs($job: String!) {
  runsOrError(filter: {pipelineName: $job}) { ... on Runs { results { runId status tags { key value } } } }
}"""


@pytest.fixture
def tag_sensor(dagster_ui: DagsterServices) -> Iterator[None]:
    """new_image_tag_sensor running (off by default locally), stopped again after the test."""
    automation.start(dagster_ui, "sensor", "new_image_tag_sensor")
    yield
    automation.stop(dagster_ui, "sensor", "new_image_tag_sensor")


def test_daemon_runs_the_tag_sensor_and_a_schedule_tick(dagster_ui, devstack, drill_schedule, tag_sensor):
    # A new build lands in the registry under a commit tag.
    tag = uuid.uuid4().hex[:12]
    digest = devstack.registry.push_test_image("thehotpotspot/api", tag, payload=tag.encode())

    def canary_run_for_digest():
        runs = dagster_ui.graphql(RUNS_WITH_TAGS, {"job": "canary_release_job"})["runsOrError"]["results"]
        return [run for run in runs if {"key": "hotpot/image-digest", "value": digest} in run["tags"]]

    runs = wait_for(
        "the daemon started no canary_release_job for the new tag", canary_run_for_digest, dagster_ui
    )
    assert len(runs) == 1
    assert {"key": "hotpot/image-tag", "value": tag} in runs[0]["tags"]

    # HOTPOT_RESTORE_DRILL_CRON is every minute in this stack: the daemon ticks the schedule and launches.
    def schedule_tick_with_run():
        ticks = dagster_ui.graphql(SCHEDULE_TICKS, {"selector": drill_schedule})["scheduleOrError"]
        state = ticks["scheduleState"]
        return [tick for tick in state["ticks"] if tick["status"] == "SUCCESS" and tick["runIds"]]

    ticks = wait_for("no schedule tick launched a run", schedule_tick_with_run, dagster_ui, timeout=150)
    assert ticks[0]["runIds"]


RUN_LINK = re.compile(r"/runs/([0-9a-f-]{36})")
FAILED_RUNS = """
{ runsOrError(filter: {statuses: [FAILURE]}) { ... on Runs { results { runId endTime } } } }"""
SENSOR_TICKS = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    ... on Sensor { sensorState { ticks(limit: 5) { status timestamp } } }
  }
}"""
TICK_DONE = {"SUCCESS", "SKIPPED", "FAILURE"}


def test_each_failed_run_alerts_the_webhook_exactly_once(dagster_ui, alert_inbox, refused_backup):
    run_id, partition = refused_backup
    assert wait_for_run(dagster_ui, run_id) == "FAILURE"

    def alerts() -> list[tuple[str, float]]:
        """(run id, arrival time) of every alert so far."""
        received = zip(alert_inbox.messages, alert_inbox.received_at, strict=False)
        return [(RUN_LINK.search(json.dumps(message)).group(1), at) for message, at in received]

    def alerted_run_ids() -> list[str]:
        return [run for run, _ in alerts()]

    def failed_runs() -> dict[str, float]:
        """Run id -> end time of every failed run."""
        runs = dagster_ui.graphql(FAILED_RUNS)["runsOrError"]["results"]
        return {run["runId"]: run["endTime"] for run in runs}

    # The runs failed by the time ours did (other runs go on failing while the daemon runs schedules and
    # sensors, the retry of ours among them).
    ended = failed_runs()
    assert run_id in ended
    failed = {run for run, end in ended.items() if end <= ended[run_id]}
    wait_for(
        lambda: f"failed runs {sorted(failed - set(alerted_run_ids()))} never reached the webhook",
        lambda: failed <= set(alerted_run_ids()),
        dagster_ui,
    )
    # One more tick of the sensor, begun after their alerts arrived and finished: nothing may be sent twice.
    all_alerted = max(at for run, at in alerts() if run in failed)

    def tick_after_the_alerts() -> bool:
        sensor = automation.selector("sensor", "run_failure_alert_sensor")
        state = dagster_ui.graphql(SENSOR_TICKS, {"selector": sensor})["sensorOrError"]["sensorState"]
        return any(tick["timestamp"] > all_alerted and tick["status"] in TICK_DONE for tick in state["ticks"])

    wait_for("run_failure_alert_sensor did not tick again", tick_after_the_alerts, dagster_ui, timeout=120)
    alerted = alerted_run_ids()
    assert len(alerted) == len(set(alerted)), f"a failed run was alerted more than once: {alerted}"
    assert failed <= set(alerted) <= set(failed_runs()), "alerts only for failed runs, one for each"
    [ours] = [m for m in alert_inbox.messages if run_id in json.dumps(m)]
    assert "nightly_backup_job" in ours["text"]
    assert f"Refusing to back up partition {partition}" in ours["text"], ours["text"]
