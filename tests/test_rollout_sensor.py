"""release_failure_sensor and worker liveness, on a temporary Dagster instance with an in-memory router.

The sensor with real nginx and a killed run worker is in test_rollout_e2e.py.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid

import dagster as dg
import pytest

from hotpot_orchestration.definitions import defs
from hotpot_orchestration.release.rollout.liveness import worker_dead, worker_key, worker_record
from hotpot_orchestration.release.rollout.releases import RELEASE_JOBS, RELEASE_TAGS, ROLLBACK_JOB
from hotpot_orchestration.release.rollout.resources import TrafficRouterResource
from hotpot_orchestration.release.rollout.routers import RouteState
from hotpot_orchestration.release.rollout.sensor import release_failure_sensor


class MemoryRouter:
    def __init__(self):
        self.current = RouteState("blue", 0)
        self.writes = 0

    def state(self) -> RouteState:
        return self.current

    def set_weight(self, canary_weight: int) -> RouteState:
        self.writes += 1
        self.current = RouteState(self.current.live, canary_weight)
        return self.current


ROUTER = MemoryRouter()


class MemoryRouterResource(TrafficRouterResource):
    def router(self):
        return ROUTER


@pytest.fixture
def instance(tmp_path):
    ROUTER.__init__()
    with dg.instance_for_test(temp_dir=str(tmp_path)) as test_instance:
        yield test_instance


def add_run(instance, status: dg.DagsterRunStatus, job_name: str = "canary_release_job", record=None) -> str:
    run_id = str(uuid.uuid4())
    instance.add_run(dg.DagsterRun(job_name=job_name, run_id=run_id, status=status, tags=RELEASE_TAGS))
    if record is not None:
        instance.run_storage.set_cursor_values({worker_key(run_id): record})
    return run_id


def tick(instance, cursor=None):
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"traffic_router": MemoryRouterResource()}
    ) as context:
        result = release_failure_sensor(context)
        return result, context.cursor


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_nothing_to_do_without_bad_runs(instance):
    add_run(instance, dg.DagsterRunStatus.SUCCESS)
    result, _ = tick(instance)
    assert "no release run failed" in result.skip_message
    assert ROUTER.writes == 0


def test_a_failed_release_returns_stable_to_100_percent_in_the_same_tick(instance):
    ROUTER.current = RouteState("blue", 60)
    run_id = add_run(instance, dg.DagsterRunStatus.FAILURE)
    result, cursor = tick(instance)
    assert ROUTER.current == RouteState("blue", 0)
    assert run_id in result.skip_message and "back to 100 %" in result.skip_message
    # Handled once: a later release at 40 % is not touched by the same old failure.
    ROUTER.current = RouteState("blue", 40)
    result, _ = tick(instance, cursor)
    assert ROUTER.current.canary_weight == 40


def test_a_canceled_release_counts_too(instance):
    ROUTER.current = RouteState("green", 20)
    add_run(instance, dg.DagsterRunStatus.CANCELED, job_name="blue_green_release_job")
    tick(instance)
    assert ROUTER.current == RouteState("green", 0)


def test_a_run_whose_worker_process_is_gone_is_failed_and_rolled_back(instance):
    ROUTER.current = RouteState("blue", 40)
    run_id = add_run(instance, dg.DagsterRunStatus.STARTED, record=worker_record(pid=dead_pid()))
    result, _ = tick(instance)
    assert ROUTER.current.canary_weight == 0
    run = instance.get_run_by_id(run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE  # frees the release queue's slot
    assert "gone" in result.skip_message or run_id in result.skip_message


def test_a_live_release_is_left_to_judge_its_own_traffic(instance):
    ROUTER.current = RouteState("blue", 40)
    add_run(instance, dg.DagsterRunStatus.FAILURE)
    add_run(instance, dg.DagsterRunStatus.STARTED, record=worker_record())  # this process: alive
    result, _ = tick(instance)
    assert ROUTER.current.canary_weight == 40
    assert "is running" in result.skip_message


def test_worker_liveness_from_pid_and_heartbeat():
    now = time.time()
    assert worker_dead(worker_record(), now) is None
    assert "gone" in worker_dead(worker_record(pid=dead_pid()), now)
    reused = json.loads(worker_record())
    reused["worker"] = reused["worker"].rsplit(":", 1)[0] + ":1"  # same pid, another start time
    assert "replaced" in worker_dead(json.dumps(reused), now)
    remote = {"worker": f"not-{socket.gethostname()}:1:1", "heartbeat": now - 30}
    assert worker_dead(json.dumps(remote), now) is None
    remote["heartbeat"] = now - 300
    assert "no heartbeat for 300s" in worker_dead(json.dumps(remote), now)
    assert worker_dead(None, now) is None


def test_release_jobs_share_the_queue_slot_and_rollback_does_not():
    for name in RELEASE_JOBS:
        job = defs.resolve_job_def(name)
        assert job.tags["hotpot/release"] and job.tags["dagster/max_retries"] == "0"
    rollback = defs.resolve_job_def(ROLLBACK_JOB)
    assert "hotpot/release" not in rollback.tags


def test_the_code_location_has_one_asset_per_plan_step_between_api_image_and_production_release():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    steps = [f"canary_weight_{weight}" for weight in (20, 40, 60, 80)]
    assert set(steps) | {"production_release", "release_approval"} <= keys
    chain = ["api_image", *steps, "production_release"]
    for upstream, downstream in zip(chain, chain[1:], strict=False):
        assert dg.AssetKey(upstream) in graph.get(dg.AssetKey(downstream)).parent_keys
    job = defs.resolve_job_def("canary_release_job")
    assert {node.name for node in job.nodes} == {*steps, "production_release"}


def test_a_step_materialized_outside_canary_release_job_refuses_to_move_traffic(instance):
    from hotpot_orchestration.platform.resources import BackupStorageResource
    from hotpot_orchestration.release.image.resource import RegistryResource, ReleaseImageResource
    from hotpot_orchestration.release.rollout.canary import canary_assets
    from hotpot_orchestration.release.rollout.plan import load_plan
    from hotpot_orchestration.release.rollout.resources import CanaryPrometheusResource

    ROUTER.current = RouteState("blue", 20)
    step_40 = canary_assets(load_plan(), "http://127.0.0.1:3000")[1]
    result = dg.materialize(
        [step_40],
        instance=instance,
        raise_on_error=False,
        resources={
            "traffic_router": MemoryRouterResource(),
            "canary_prometheus": CanaryPrometheusResource(),
            "release_image": ReleaseImageResource(
                tag="v2", digest="sha256:" + "2" * 64, repository="r", registry="h"
            ),
            "registry": RegistryResource(),
            "backup_storage": BackupStorageResource(bucket="backups"),
        },
    )
    assert not result.success
    failure = next(event for event in result.all_events if event.is_step_failure)
    assert "only in canary_release_job" in failure.step_failure_data.error.message
    assert ROUTER.current == RouteState("blue", 20) and ROUTER.writes == 0
