"""Schedules and sensors of the UI's instance turned on and off through the GraphQL API the UI uses, as an
operator does under Automation."""

from __future__ import annotations

from hotpot_devstack.dagster_services import DagsterServices

LOCATION = "hotpot_orchestration"
REPOSITORY = "__repository__"

_ID = {
    "schedule": "query($s: ScheduleSelector!) "
    "{ scheduleOrError(scheduleSelector: $s) { ... on Schedule { id } } }",
    "sensor": "query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor { id } } }",
}
_START = {
    "schedule": "mutation($s: ScheduleSelector!) { startSchedule(scheduleSelector: $s) { __typename "
    "... on ScheduleStateResult { scheduleState { status } } ... on PythonError { message } } }",
    "sensor": "mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) { __typename "
    "... on Sensor { sensorState { status } } ... on PythonError { message } } }",
}
_STOP = {
    "schedule": "mutation($id: String!) { stopRunningSchedule(id: $id) { __typename "
    "... on ScheduleStateResult { scheduleState { status } } ... on PythonError { message } } }",
    "sensor": "mutation($id: String!) { stopSensor(id: $id) { __typename "
    "... on StopSensorMutationResult { instigationState { status } } ... on PythonError { message } } }",
}


def selector(kind: str, name: str) -> dict:
    """The GraphQL selector of schedule or sensor `name` (`kind` "schedule" or "sensor")."""
    return {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, f"{kind}Name": name}


def start(services: DagsterServices, kind: str, name: str) -> None:
    result = next(iter(services.graphql(_START[kind], {"s": selector(kind, name)}).values()))
    state = result.get("scheduleState") or result.get("sensorState")
    assert state and state["status"] == "RUNNING", f"{kind} {name} did not start: {result}"


def stop(services: DagsterServices, kind: str, name: str) -> None:
    found = next(iter(services.graphql(_ID[kind], {"s": selector(kind, name)}).values()))
    result = next(iter(services.graphql(_STOP[kind], {"id": found["id"]}).values()))
    state = result.get("scheduleState") or result.get("instigationState")
    assert state and state["status"] == "STOPPED", f"{kind} {name} did not stop: {result}"
