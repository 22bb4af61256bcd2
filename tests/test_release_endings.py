"""How a release stopped on purpose ends, without Dagster's executor: the controller acting on a rollback
request, the one line that says what happened, and pipeline health reading such a run as a release that did
not ship. The same endings with real nginx and Prometheus are in test_rollout_e2e.py."""

from __future__ import annotations

import uuid

import dagster as dg
import pytest
from support.canary import ANALYSIS, FakeClock, ScriptedPrometheus

from hotpot_orchestration.operations.sensors import read_health
from hotpot_orchestration.release.rollout.controller import POLL_SECONDS, StepResult, analyse, ending
from hotpot_orchestration.release.rollout.releases import OUTCOME_TAG, RELEASE_TAGS, ROLLED_BACK


def test_a_rollback_request_ends_the_step_at_the_next_poll():
    clock = FakeClock()
    asked_at = 13.0
    result = analyse(
        ScriptedPrometheus(),
        ANALYSIS,
        canary="green",
        stable="blue",
        duration=30,
        stop=lambda: "rolled back by rollback_job run 1a2b3c4d" if clock.now >= asked_at else None,
        clock=clock,
        sleep=clock.sleep,
    )
    assert result.outcome == "rolled back" and result.message == "rolled back by rollback_job run 1a2b3c4d"
    assert asked_at <= clock.now <= asked_at + POLL_SECONDS
    assert not result.passed


def test_the_ending_names_the_cause_and_where_the_traffic_is():
    asked = StepResult("rolled back", "rolled back by rollback_job run 1a2b3c4d")
    assert ending("step 2 (weight 40)", asked, "blue", 100) == (
        "step 2 (weight 40) rolled back by rollback_job run 1a2b3c4d: blue serves 100 %"
    )
    rejected = StepResult("rejected", "rejected by the operator: reject, p95")
    assert ending("step 1 (weight 20)", rejected, "green", 100) == (
        "step 1 (weight 20) rejected by the operator: reject, p95; rolled back: green serves 100 %"
    )


@pytest.mark.parametrize(
    ("tags", "state"),
    [({}, "succeeded"), ({OUTCOME_TAG: ROLLED_BACK}, "failed")],
    ids=["released", "rolled back"],
)
def test_pipeline_health_counts_a_rolled_back_release_as_not_released(tmp_path, tags, state):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        instance.add_run(
            dg.DagsterRun(
                job_name="canary_release_job",
                run_id=str(uuid.uuid4()),
                status=dg.DagsterRunStatus.SUCCESS,
                tags={**RELEASE_TAGS, **tags},
            )
        )
        assert read_health(instance).release_state == state
