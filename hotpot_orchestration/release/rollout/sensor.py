"""release_failure_sensor: whatever way a release run ends badly, stable serves all the traffic by the end of
the tick that sees it.

Each tick looks at the release jobs' runs:
- runs that FAILED or were CANCELED since the last tick (a step's own rollback may not have happened: the
  router could have been unreachable at that moment, or the process died while rolling back);
- runs still STARTED whose worker is dead (`liveness`): killed processes never report failure, and Dagster's
  run monitoring cannot see a local worker die. The sensor marks them failed, which also frees the release
  queue's slot for the next release.
If any turned up and no other release run is alive, the router is set back to weight 0 in the tick itself
(not by launching a run, which would queue and start seconds later). A live newer release is left alone: its
own analysis governs its traffic.
"""

from datetime import UTC, datetime

import dagster as dg

from hotpot_orchestration.release.rollout.liveness import worker_dead, worker_key
from hotpot_orchestration.release.rollout.releases import RELEASE_JOBS
from hotpot_orchestration.release.rollout.resources import TrafficRouterResource

ACTIVE = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
ENDED_BADLY = [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


def _records(instance, statuses, updated_after: datetime | None = None) -> list:
    return [
        record
        for job_name in RELEASE_JOBS
        for record in instance.get_run_records(
            filters=dg.RunsFilter(job_name=job_name, statuses=statuses, updated_after=updated_after)
        )
    ]


@dg.sensor(
    name="release_failure_sensor",
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Returns stable to 100 % of the traffic when a release run fails, is canceled or dies "
    "(its process killed): within the tick that sees it.",
)
def release_failure_sensor(context: dg.SensorEvaluationContext, traffic_router: TrafficRouterResource):
    instance = context.instance
    since = datetime.fromisoformat(context.cursor) if context.cursor else None
    checked_at = datetime.now(UTC)

    active = _records(instance, ACTIVE)
    heartbeats = instance.run_storage.get_cursor_values({worker_key(r.dagster_run.run_id) for r in active})
    died, alive = [], []
    for record in active:
        reason = worker_dead(heartbeats.get(worker_key(record.dagster_run.run_id)))
        (died if reason else alive).append((record.dagster_run, reason))
    for run, reason in died:
        instance.report_run_failed(run, f"release_failure_sensor: {reason}")
    ended = _records(instance, ENDED_BADLY, since)

    context.update_cursor(checked_at.isoformat())
    bad_runs = [run.run_id for run, _ in died] + [record.dagster_run.run_id for record in ended]
    if not bad_runs:
        return dg.SkipReason("no release run failed, was canceled or died")
    if alive:
        return dg.SkipReason(
            f"release run(s) {', '.join(bad_runs)} ended badly, but {alive[0][0].run_id} is running and "
            "judges its own traffic"
        )
    router = traffic_router.router()
    if router.state().canary_weight == 0:
        return dg.SkipReason(f"release run(s) {', '.join(bad_runs)} ended badly; stable already has 100 %")
    state = router.set_weight(0)
    context.log.warning(f"Stable ({state.live}) back to 100 % after release run(s) {', '.join(bad_runs)}")
    return dg.SkipReason(f"stable ({state.live}) back to 100 % after release run(s) {', '.join(bad_runs)}")
