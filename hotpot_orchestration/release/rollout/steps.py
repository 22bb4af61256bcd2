"""What every release step shares, canary or blue-green: a heartbeat for release_failure_sensor, stable
back at 100 % whatever ends a step early, the one warning of a release stopped on purpose, the deploy to the
idle colour, and the metadata a step records.

Safety rules kept here:
- A release stopped on purpose (a failed, inconclusive or unapproved analysis, an operator's rejection,
  rollback_job) sends stable all the traffic and ends its step without materializing it, with one warning
  that says why and what traffic looks like now; the steps after it are skipped and the run is tagged
  `hotpot/release-outcome: rolled back`. Only errors fail a step (with their trace).
- Every release step runs under `stable_on_error`: whatever else ends it early (an error, the run being
  terminated) also sends stable all the traffic before the step ends.
- Steps run only inside their release job (so inside the release queue): `in_release_job`.
- Release runs record their worker and a heartbeat (see `liveness`) for release_failure_sensor.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from hotpot_orchestration.release.image.resource import ReleaseImageResource
from hotpot_orchestration.release.rollout.analysis import Measurement
from hotpot_orchestration.release.rollout.controller import StepResult, ending, wait_healthy
from hotpot_orchestration.release.rollout.liveness import HEARTBEAT_SECONDS, worker_key, worker_record
from hotpot_orchestration.release.rollout.plan import RolloutPlan
from hotpot_orchestration.release.rollout.releases import OUTCOME_TAG, ROLLED_BACK
from hotpot_orchestration.release.rollout.routers import Router, RouteState


def in_release_job(context, job_name: str) -> None:
    """Materializing a step from the asset graph would run outside the release queue (no hotpot/release
    tag) and beside a release in progress: only the release job `job_name` may move its traffic."""
    if context.job_def.name != job_name:
        raise dg.Failure(description=f"Release steps run only in {job_name}: launch that job instead.")


def image_to_release(release_image: ReleaseImageResource) -> ReleaseImageResource:
    """The image the run was launched with; a run launched without one fails saying how to give it."""
    if not release_image.is_set:
        raise dg.Failure(
            description="No image to release: give resources.release_image.config {tag, digest, repository, "
            "registry} (new_image_tag_sensor does this for every new tag)."
        )
    return release_image


@contextmanager
def alive(context) -> Iterator[None]:
    """Record this worker and keep a heartbeat going while a release step runs."""
    storage, key = context.instance.run_storage, worker_key(context.run.run_id)
    storage.set_cursor_values({key: worker_record()})
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            storage.set_cursor_values({key: worker_record()})

    thread = threading.Thread(target=beat, name="release-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextmanager
def stable_on_error(context, router: Router) -> Iterator[None]:
    try:
        yield
    except BaseException:  # also on termination (DagsterExecutionInterruptedError) and Ctrl-C
        try:
            state = router.set_weight(0)
            context.log.warning(f"Stable ({state.live}) serves all traffic again.")
        except Exception as exc:  # the run fails anyway; release_failure_sensor retries the rollback
            context.log.error(f"Could not return stable to 100 %: {exc}")
        raise


def end_rolled_back(context, router: Router, what: str, result: StepResult) -> None:
    """Stable gets all the traffic; one warning says why and what traffic looks like now."""
    state = router.set_weight(0)
    context.instance.add_run_tags(context.run.run_id, {OUTCOME_TAG: ROLLED_BACK})
    context.log.warning(ending(what, result, state.live, 100 - state.canary_weight))


def deploy_idle(context, plan: RolloutPlan, router: Router, image: ReleaseImageResource) -> RouteState:
    """Put the image on the idle colour (no traffic) and wait until it answers /health and /ready."""
    state = router.state()
    if state.canary_weight:
        # Left over by a run that died before release_failure_sensor saw it: the idle colour is about to
        # get a new image, so it must serve nothing first.
        state = router.set_weight(0)
    context.log.info(
        f"Deploying {image.tagged_reference} to the idle colour {state.idle} (live: {state.live})"
    )
    router.deploy(state.idle, image.tagged_reference)
    wait_healthy(router.health_url(state.idle), plan.health_timeout)
    return state


def _measurement_metadata(measurement: Measurement) -> dict:
    return {
        "verdict": measurement.verdict,
        "summary": measurement.summary,
        "seconds_into_analysis": round(measurement.at, 3),
        "decisions": dg.MetadataValue.json([decision.as_metadata() for decision in measurement.decisions]),
    }


def recorder(context, asset_key: str, label: str):
    """Logs each measurement and records it as an observation of the step's asset."""

    def record(measurement: Measurement) -> None:
        context.log.info(f"{label}: measurement {measurement.verdict}: {measurement.summary}")
        context.log_event(
            dg.AssetObservation(asset_key=asset_key, metadata=_measurement_metadata(measurement))
        )

    return record


def result_metadata(result: StepResult) -> dict:
    """A step's decision, with its last measurement and the operator's note if it needed approval."""
    metadata = {
        "outcome": result.outcome,
        "decision": result.message,
        "measurements": len(result.measurements),
    }
    if result.measurements:
        metadata.update(_measurement_metadata(result.measurements[-1]))
    if result.approval:
        metadata["approval"] = result.approval.note
    return metadata


def release_metadata(image: ReleaseImageResource, strategy: str, before: RouteState, after: RouteState):
    """What production_release records, whichever strategy released: the image and the colours."""
    return {
        "digest": image.digest,
        "tag": image.tag,
        "image": image.tagged_reference,
        "strategy": strategy,
        "live_color": after.live,
        "previous_color": before.live,
    }
