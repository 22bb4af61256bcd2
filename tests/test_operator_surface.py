"""The operator's surface end to end: dagster-webserver and dagster-daemon with the project's own
dagster.yaml and workspace.yaml on a private DAGSTER_HOME, against the devstack, driven through the GraphQL
API the UI uses."""

from __future__ import annotations

import time

import pytest

from hotpot_orchestration.devstack.dagster_services import DagsterServices

pytestmark = pytest.mark.slow

LOCATION = "hotpot_orchestration"
REPOSITORY = "__repository__"
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
        "selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "jobName": job},
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]},
    }
    result = dagster_ui.graphql(LAUNCH, {"params": params})["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def wait_for_run(dagster_ui: DagsterServices, run_id: str, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = dagster_ui.graphql(RUN_STATUS, {"id": run_id})["runOrError"]["status"]
        if status in FINISHED:
            return status
        time.sleep(1)
    daemon_log = dagster_ui.log("daemon")[-3000:]
    pytest.fail(f"run {run_id} did not finish in {timeout}s; daemon log:\n{daemon_log}")


def latest_backup_partition() -> str:
    from hotpot_orchestration.definitions import defs

    return defs.get_assets_def("postgres_backup").partitions_def.get_last_partition_key()


def test_nightly_backup_launched_from_the_api_succeeds_with_history_and_metadata(dagster_ui):
    partition = latest_backup_partition()
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
