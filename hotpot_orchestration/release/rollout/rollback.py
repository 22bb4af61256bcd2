"""rollback_job, and how it asks a release in progress to stop: a request in the instance's key-value store
that every release step checks before each traffic change and every second while it measures."""

import time

import dagster as dg

from hotpot_orchestration.release.rollout.releases import RELEASE_JOBS, ROLLBACK_JOB, ROLLBACK_TAGS
from hotpot_orchestration.release.rollout.resources import TrafficRouterResource

# How long rollback_job waits for a release run to notice its request and stop on its own (a step polls
# every second; a deploy to the idle colour, which moves no traffic, may hold it longer) before terminating
# it.
ROLLBACK_GRACE_SECONDS = 60.0


def rollback_key(run_id: str) -> str:
    """Where rollback_job asks release run `run_id` to stop (the instance's key-value store)."""
    return f"hotpot/release-rollback/{run_id}"


def rollback_requested(context) -> str | None:
    """Who asked this release run to roll back, if anyone has."""
    key = rollback_key(context.run.run_id)
    by = context.instance.run_storage.get_cursor_values({key}).get(key)
    return f"rolled back by {ROLLBACK_JOB} run {by[:8]}" if by else None


def _active_release_runs(instance: dg.DagsterInstance) -> list[str]:
    return [
        record.dagster_run.run_id
        for job_name in RELEASE_JOBS
        for record in instance.get_run_records(
            filters=dg.RunsFilter(
                job_name=job_name, statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
            )
        )
    ]


def _stopped_within_grace(instance: dg.DagsterInstance, run_id: str, deadline: float) -> bool:
    while not instance.get_run_by_id(run_id).is_finished and time.monotonic() < deadline:
        time.sleep(0.5)
    return instance.get_run_by_id(run_id).is_finished


@dg.op(
    description="Sends stable (the live colour) all the traffic and asks running releases to stop: each "
    "ends its step, saying it was rolled back, before moving traffic again; one that has not stopped "
    f"within {ROLLBACK_GRACE_SECONDS:g}s is terminated."
)
def return_stable_to_full_traffic(
    context: dg.OpExecutionContext, traffic_router: TrafficRouterResource
) -> None:
    instance = context.instance
    active = _active_release_runs(instance)
    if active:
        # The request first: a release checks it before every traffic change, so none moves traffic again
        # after the weight below.
        instance.run_storage.set_cursor_values(
            {rollback_key(run_id): context.run.run_id for run_id in active}
        )
    router = traffic_router.router()
    state = router.set_weight(0)
    context.log.info(f"Stable ({state.live}) serves all traffic")
    deadline = time.monotonic() + ROLLBACK_GRACE_SECONDS
    for run_id in active:
        context.log.info(f"Waiting for release run {run_id} to stop")
        if not _stopped_within_grace(instance, run_id, deadline):
            context.log.warning(
                f"Release run {run_id} did not stop within {ROLLBACK_GRACE_SECONDS:g}s: terminating it"
            )
            instance.run_coordinator.cancel_run(run_id)
            # Its last act may have been a traffic change.
            state = router.set_weight(0)
    context.add_output_metadata(
        {"live_color": state.live, "canary_weight": state.canary_weight, "stopped_runs": ", ".join(active)}
    )


@dg.job(
    name=ROLLBACK_JOB,
    tags=ROLLBACK_TAGS,
    executor_def=dg.in_process_executor,
    description="Puts stable at 100 % at any time, stopping a release in progress. Runs beside a stuck "
    "release instead of queueing behind it (no hotpot/release tag).",
)
def rollback_job():
    return_stable_to_full_traffic()
