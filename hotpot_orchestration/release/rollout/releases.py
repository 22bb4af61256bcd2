"""Dagster side of releases: the canary step assets generated from the plan, production_release, the
blue-green assets, and the rollback job. Thin: `controller`, `analysis`, `gates` and the routers make the
decisions.

Safety rules kept here:
- A release stopped on purpose (a failed, inconclusive or unapproved analysis, an operator's rejection,
  rollback_job) sends stable all the traffic and ends its step without materializing it, with one warning
  that says why and what traffic looks like now; the steps after it are skipped and the run is tagged
  `hotpot/release-outcome: rolled back`. Only errors fail a step (with their trace).
- Every release step runs under `_stable_on_error`: whatever else ends it early (an error, the run being
  terminated) also sends stable all the traffic before the step ends.
- Steps run only inside their release job (so inside the release queue), and a step other than the first
  refuses to run unless the router is at the previous step's weight (canary) or the previous step
  materialized in the same release (blue-green), so re-executing from a failure cannot skip the gates and
  the deployment.
- Release runs record their worker and a heartbeat (see `liveness`) for release_failure_sensor.
"""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import dagster as dg

from hotpot_orchestration.backups.assets import BACKUP
from hotpot_orchestration.backups.checks import MAX_AGE as MAX_BACKUP_AGE
from hotpot_orchestration.pitr.assets import PHYSICAL, latest_wal_archive_report
from hotpot_orchestration.platform.kubernetes import RELEASE_POD_TAGS
from hotpot_orchestration.platform.resources import BackupStorageResource
from hotpot_orchestration.release.image.resource import RegistryResource, ReleaseImageResource
from hotpot_orchestration.release.rollout.analysis import Measurement, stable_values
from hotpot_orchestration.release.rollout.controller import (
    Approval,
    StepResult,
    analyse,
    ending,
    wait_healthy,
)
from hotpot_orchestration.release.rollout.gates import (
    ReleaseGateRefused,
    WalArchiveWatch,
    backup_gate,
    image_gate,
    require,
    wal_archive_gate,
)
from hotpot_orchestration.release.rollout.liveness import HEARTBEAT_SECONDS, worker_key, worker_record
from hotpot_orchestration.release.rollout.plan import RolloutPlan, Step
from hotpot_orchestration.release.rollout.resources import CanaryPrometheusResource, TrafficRouterResource
from hotpot_orchestration.release.rollout.routers import Router, RouteState
from hotpot_orchestration.restores import DRILL_ASSET

GROUP = "release"
APPROVAL_ASSET = "release_approval"
# The run queue (dagster.yaml) allows one run at a time with the key `hotpot/release`: two releases never
# move traffic at once, and a second one waits in the queue. Automatic retries are off: a half-done traffic
# shift is undone by release_failure_sensor, never replayed.
RELEASE_QUEUE_TAG = "hotpot/release"
RELEASE_TAGS = {RELEASE_QUEUE_TAG: "release", "dagster/max_retries": "0", **RELEASE_POD_TAGS}
# rollback_job must NOT carry `hotpot/release`: the limit counts every value of that key, so a rollback
# would queue behind the very release it has to stop. It gets a key of its own instead.
ROLLBACK_TAGS = {"hotpot/rollback": "manual", **RELEASE_POD_TAGS}
CANARY_JOB, BLUE_GREEN_JOB, ROLLBACK_JOB = "canary_release_job", "blue_green_release_job", "rollback_job"
RELEASE_JOBS = (CANARY_JOB, BLUE_GREEN_JOB)
PRODUCTION_ASSET = "production_release"
# Set on a release run that ended on purpose without releasing (its run status is SUCCESS: nothing broke).
OUTCOME_TAG, ROLLED_BACK = "hotpot/release-outcome", "rolled back"
# How long rollback_job waits for a release run to notice its request and stop on its own (a step polls
# every second; a deploy to the idle colour, which moves no traffic, may hold it longer) before terminating
# it.
ROLLBACK_GRACE_SECONDS = 60.0


def rollback_key(run_id: str) -> str:
    """Where rollback_job asks release run `run_id` to stop (the instance's key-value store)."""
    return f"hotpot/release-rollback/{run_id}"


def _rollback_requested(context) -> str | None:
    """Who asked this run to roll back, if anyone has."""
    key = rollback_key(context.run.run_id)
    by = context.instance.run_storage.get_cursor_values({key}).get(key)
    return f"rolled back by {ROLLBACK_JOB} run {by[:8]}" if by else None


def _end_rolled_back(context, router: Router, what: str, result: StepResult) -> None:
    """Stable gets all the traffic; one warning says why and what traffic looks like now."""
    state = router.set_weight(0)
    context.instance.add_run_tags(context.run.run_id, {OUTCOME_TAG: ROLLED_BACK})
    context.log.warning(ending(what, result, state.live, 100 - state.canary_weight))


@contextmanager
def _alive(context) -> Iterator[None]:
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
def _stable_on_error(context, router: Router) -> Iterator[None]:
    try:
        yield
    except BaseException:  # also on termination (DagsterExecutionInterruptedError) and Ctrl-C
        try:
            state = router.set_weight(0)
            context.log.warning(f"Stable ({state.live}) serves all traffic again.")
        except Exception as exc:  # the run fails anyway; release_failure_sensor retries the rollback
            context.log.error(f"Could not return stable to 100 %: {exc}")
        raise


def _image(release_image: ReleaseImageResource) -> ReleaseImageResource:
    if not release_image.is_set:
        raise dg.Failure(
            description="No image to release: give resources.release_image.config {tag, digest, repository, "
            "registry} (new_image_tag_sensor does this for every new tag)."
        )
    return release_image


def _check_gates(
    context,
    image: ReleaseImageResource,
    registry: RegistryResource,
    backup_storage: BackupStorageResource,
    ui_url: str,
    wal_archive: WalArchiveWatch | None = None,
) -> None:
    """The seed's pre-deployment checklist, before anything is deployed or routed. The backup must be of
    HOTPOT_DATABASE_URL's database: another database's backup in the same bucket does not count. A refusal
    names the backup looked at and links to its partition of postgres_backup in the UI (`ui_url`).

    WAL archiving (`wal_archive`; None: not looked at) is judged without the database: release runs get
    the bucket's credentials (boto3's chain, as for the backup) but no HOTPOT_DATABASE_URL, and giving them
    a role that may read pg_stat_archiver would add a database secret to every release pod. The object
    store is listed with backup_storage's client (the barman archive lives in the same bucket), and
    pg_stat_archiver is read through the wal_archive check's latest evaluation in the instance, which
    runs every 5 minutes with the database's credentials."""
    database = backup_storage.database

    def resolve_digest() -> str | None:
        if image.registry != registry.registry:
            raise ValueError(
                f"the image is in {image.registry}, the configured registry is {registry.registry}"
            )
        with registry.client() as client:
            return client.manifest_digest(image.repository, image.digest)

    def latest_verified_backup():
        from hotpot_orchestration.backups.catalog import latest_backup

        return latest_backup(
            backup_storage.client(), backup_storage.bucket, backup_storage.prefix, database=database
        )

    def archived_wal():
        from hotpot_orchestration.pitr.archive import archived_wal as list_wal

        return list_wal(backup_storage.client(), wal_archive.barman)

    now = datetime.now(UTC)
    backup = backup_gate(latest_verified_backup, now, database=database, max_age=MAX_BACKUP_AGE)
    wal = wal_archive_gate(
        archived_wal, lambda: latest_wal_archive_report(context.instance), now, watch=wal_archive
    )
    results = [backup, wal, image_gate(resolve_digest, image.reference, image.digest)]
    for result in results:
        context.log.info(f"gate '{result.name}': {'passed' if result.passed else 'FAILED'}: {result.detail}")
    try:
        require(results)
    except ReleaseGateRefused as exc:
        metadata = {
            result.name: f"{'passed' if result.passed else 'failed'}: {result.detail}" for result in results
        }
        if (latest := backup.subject) is not None:
            metadata |= {
                "backup_manifest": latest.manifest_key,
                "backup_age_hours": round((now - latest.created_at).total_seconds() / 3600, 2),
                "backup_link": dg.MetadataValue.url(
                    f"{ui_url.rstrip('/')}/assets/{BACKUP.to_user_string()}?view=partitions"
                    f"&partition={latest.partition}"
                ),
            }
        if not wal.passed and (state := wal.subject) is not None:
            metadata |= {
                "wal_archive": state.location,
                "newest_archived_wal": state.newest_wal or "(none)",
                "wal_archive_age_seconds": -1.0 if state.age_seconds is None else round(state.age_seconds, 1),
                "wal_archive_check_link": dg.MetadataValue.url(
                    f"{ui_url.rstrip('/')}/assets/{PHYSICAL.to_user_string()}?view=checks"
                ),
            }
            if (report := state.check) is not None:
                metadata |= {
                    "wal_archive_check": f"{'passed' if report.passed else 'failed'} at "
                    f"{report.evaluated_at:%Y-%m-%d %H:%M:%S} UTC: {report.description}",
                    "archiver_last_failed_wal": report.last_failed_wal or "(none)",
                }
        raise dg.Failure(description=str(exc), metadata=metadata) from None


def _deploy_idle(context, plan: RolloutPlan, router: Router, image: ReleaseImageResource) -> RouteState:
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


def _recorder(context, asset_key: str, label: str):
    def record(measurement: Measurement) -> None:
        context.log.info(f"{label}: measurement {measurement.verdict}: {measurement.summary}")
        context.log_event(
            dg.AssetObservation(asset_key=asset_key, metadata=_measurement_metadata(measurement))
        )

    return record


def _result_metadata(result: StepResult) -> dict:
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


class OperatorApproval:
    """A manual gate answered from the UI: the operator reports a materialization of `release_approval`.

    Any report made after the gate opened counts (only one release runs at a time). Its description is the
    note recorded with the step; a description starting with "reject" rejects the step instead.
    """

    def __init__(self, context, step: Step, timeout: float):
        self.context = context
        self.step = step
        self.timeout = timeout
        self.opened_at = time.time()

    def open(self) -> None:
        self.opened_at = time.time()
        self.context.log.warning(
            f"{self.step.label} passed its analysis and waits for approval (up to {self.timeout:g}s): in "
            f"the UI, open the asset {APPROVAL_ASSET} and choose 'Report materialization event'. A "
            "description starting with 'reject' rejects the release; terminating the run rolls it back too."
        )

    def poll(self) -> Approval | None:
        event = self.context.instance.get_latest_materialization_event(dg.AssetKey(APPROVAL_ASSET))
        if event is None or event.timestamp <= self.opened_at:
            return None
        note = (event.asset_materialization.description or "").strip()
        return Approval(
            approved=not note.lower().startswith("reject"), note=note or "approved without a note"
        )


def _in_release_job(context, job_name: str) -> None:
    """Materializing a step from the asset graph would run outside the release queue (no hotpot/release
    tag) and beside a release in progress: only the release job `job_name` may move its traffic."""
    if context.job_def.name != job_name:
        raise dg.Failure(description=f"Release steps run only in {job_name}: launch that job instead.")


def _materialized_in_this_release(context, asset_name: str) -> dict:
    """The metadata of `asset_name`'s latest materialization, which must come from this run or the run it
    re-executes: a later blue-green step acts only on what an earlier one did in the same release, so a
    re-execution cannot skip the gates and the deployment."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey(asset_name))
    family = context.run.root_run_id or context.run.run_id
    run = context.instance.get_run_by_id(event.run_id) if event else None
    if run is None or (run.root_run_id or run.run_id) != family:
        raise dg.Failure(
            description=f"{asset_name} did not materialize in this release: launch {BLUE_GREEN_JOB} from "
            "its first step."
        )
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


def _gate_deps(wal_archive: WalArchiveWatch | None) -> list[dg.AssetDep]:
    """The release gate drawn in the graph, on the first step of either strategy: lineage only, nothing is
    loaded from these assets. Without a partition mapping the unpartitioned step depends on all of
    postgres_backup's daily partitions."""
    deps = [dg.AssetDep(BACKUP), dg.AssetDep(DRILL_ASSET)]
    if wal_archive is not None:
        deps.append(dg.AssetDep(PHYSICAL))  # whose wal_archive check the gate reads
    return deps


def _expect_weight(state: RouteState, weight: int, what: str) -> None:
    if state.canary_weight != weight:
        raise dg.Failure(
            description=f"{what} expects the canary at {weight} % (the previous step), the router is at "
            f"{state.canary_weight} %: start the release from its first step (canary_release_job)."
        )


def canary_step_asset(
    plan: RolloutPlan, step: Step, upstream: str, ui_url: str, wal_archive: WalArchiveWatch | None = None
) -> dg.AssetsDefinition:
    first = step.number == 1
    previous_weight = 0 if first else plan.steps[step.number - 2].weight
    gate = (
        " Waits for an operator's approval (asset release_approval) once the analysis passed."
        if step.gate
        else ""
    )
    description = (
        f"Canary at {step.weight} % for {step.pause:g}s, measured every {plan.analysis.interval:g}s "
        "against stable."
        f"{gate} A failure, inconclusive-past-the-limit, a rejection or rollback_job sends stable all the "
        "traffic and ends the release without materializing this step."
        + (
            " First checks the safety gates (a fresh verified postgres_backup, proven restorable by "
            "restore_drill; WAL archiving working, as the wal_archive check of physical_backup sees it; the "
            "image in the registry) and deploys the image to the idle colour."
            if first
            else ""
        )
    )

    @dg.asset(
        name=step.asset_name,
        deps=[upstream, *(_gate_deps(wal_archive) if first else [])],
        group_name=GROUP,
        description=description,
        output_required=False,
    )
    def canary_step(
        context: dg.AssetExecutionContext,
        traffic_router: TrafficRouterResource,
        canary_prometheus: CanaryPrometheusResource,
        release_image: ReleaseImageResource,
        registry: RegistryResource,
        backup_storage: BackupStorageResource,
    ) -> Iterator[dg.MaterializeResult]:
        _in_release_job(context, CANARY_JOB)
        image = _image(release_image)
        router = traffic_router.router()
        with _alive(context):
            if first:
                _check_gates(context, image, registry, backup_storage, ui_url, wal_archive)
            with _stable_on_error(context, router):
                if first:
                    state = _deploy_idle(context, plan, router, image)
                else:
                    state = router.state()
                    _expect_weight(state, previous_weight, step.label)
                if reason := _rollback_requested(context):
                    _end_rolled_back(context, router, step.label, StepResult("rolled back", reason))
                    return
                router.set_weight(step.weight)
                context.log.info(
                    f"{step.label}: {step.weight} % of traffic on {state.idle}, {state.live} is stable"
                )
                result = analyse(
                    canary_prometheus.client(),
                    plan.analysis,
                    canary=state.idle,
                    # At 100 % stable serves nothing to compare with: thresholds alone apply.
                    stable=state.live if step.weight < 100 else None,
                    duration=step.pause,
                    gate=OperatorApproval(context, step, plan.approval_timeout) if step.gate else None,
                    record=_recorder(context, step.asset_name, step.label),
                    stop=lambda: _rollback_requested(context),
                )
                if not result.passed:
                    _end_rolled_back(context, router, step.label, result)
                    return
        yield dg.MaterializeResult(
            metadata={"weight": step.weight, "canary_color": state.idle, "image": image.tagged_reference}
            | _result_metadata(result)
        )

    return canary_step


def production_release_asset(plan: RolloutPlan) -> dg.AssetsDefinition:
    last = plan.steps[-1]

    @dg.asset(
        name=PRODUCTION_ASSET,
        deps=[last.asset_name],
        group_name=GROUP,
        description="The canary becomes the new stable: its colour goes live with 100 % of the traffic. "
        "Records the image's digest and tag (new_image_tag_sensor reads `digest` from here).",
        output_required=False,
    )
    def production_release(
        context: dg.AssetExecutionContext,
        traffic_router: TrafficRouterResource,
        release_image: ReleaseImageResource,
    ) -> Iterator[dg.MaterializeResult]:
        _in_release_job(context, CANARY_JOB)
        image = _image(release_image)
        router = traffic_router.router()
        with _alive(context), _stable_on_error(context, router):
            before = router.state()
            _expect_weight(before, last.weight, PRODUCTION_ASSET)
            if reason := _rollback_requested(context):
                result = StepResult("rolled back", reason)
                _end_rolled_back(context, router, PRODUCTION_ASSET, result)
                return
            after = router.promote()
        context.log.info(f"{after.live} is live with {image.tagged_reference}; {before.live} is idle")
        yield dg.MaterializeResult(metadata=_release_metadata(image, "canary", before, after))

    return production_release


def _release_metadata(image: ReleaseImageResource, strategy: str, before: RouteState, after: RouteState):
    return {
        "digest": image.digest,
        "tag": image.tag,
        "image": image.tagged_reference,
        "strategy": strategy,
        "live_color": after.live,
        "previous_color": before.live,
    }


BLUE_GREEN_DEPLOY = "blue_green_deploy_idle"
BLUE_GREEN_SWITCH = "blue_green_switch"
BLUE_GREEN_SCALE_DOWN = "blue_green_scale_down_old"


def blue_green_assets(
    plan: RolloutPlan, ui_url: str, wal_archive: WalArchiveWatch | None = None
) -> list[dg.AssetsDefinition]:
    settings = plan.blue_green

    @dg.asset(
        name=BLUE_GREEN_DEPLOY,
        deps=["api_image", *_gate_deps(wal_archive)],
        group_name=GROUP,
        description="Blue-green release, first: the safety gates (a fresh verified postgres_backup, proven "
        "restorable by restore_drill; WAL archiving working, as the wal_archive check of physical_backup "
        "sees it; the image in the registry), then the image on the idle colour (no traffic), healthy on "
        "/health and /ready.",
    )
    def blue_green_deploy_idle(
        context: dg.AssetExecutionContext,
        traffic_router: TrafficRouterResource,
        release_image: ReleaseImageResource,
        registry: RegistryResource,
        backup_storage: BackupStorageResource,
    ) -> dg.MaterializeResult:
        _in_release_job(context, BLUE_GREEN_JOB)
        router = traffic_router.router()
        with _alive(context):
            image = _image(release_image)
            _check_gates(context, image, registry, backup_storage, ui_url, wal_archive)
            state = _deploy_idle(context, plan, router, image)
        return dg.MaterializeResult(
            metadata={"idle_color": state.idle, "live_color": state.live, "image": image.tagged_reference}
        )

    @dg.asset(
        name=BLUE_GREEN_SWITCH,
        deps=[BLUE_GREEN_DEPLOY],
        group_name=GROUP,
        description=f"All traffic to the new colour, analysed for {settings.analysis:g}s against stable's "
        "numbers from just before the switch; switches back on failure or rollback_job (and the old colour "
        "is kept, without materializing this asset), else makes it live and records production_release "
        "with strategy 'blue-green'.",
        # Not materialized when switched back: the scale-down is skipped.
        output_required=False,
    )
    def blue_green_switch(
        context: dg.AssetExecutionContext,
        traffic_router: TrafficRouterResource,
        canary_prometheus: CanaryPrometheusResource,
        release_image: ReleaseImageResource,
    ) -> Iterator[dg.MaterializeResult]:
        _in_release_job(context, BLUE_GREEN_JOB)
        image = _image(release_image)
        new_color = _materialized_in_this_release(context, BLUE_GREEN_DEPLOY)["idle_color"]
        router = traffic_router.router()
        prometheus = canary_prometheus.client()
        what = f"blue-green {new_color}"
        with _alive(context), _stable_on_error(context, router):
            before = router.state()
            if before.idle != new_color:
                raise dg.Failure(description=f"{new_color} is no longer the idle colour: another release ran")
            if reason := _rollback_requested(context):
                _end_rolled_back(context, router, what, StepResult("rolled back", reason))
                return
            baseline = stable_values(prometheus, plan.analysis, before.live)
            context.log.info(f"Stable {before.live} before the switch: {baseline}")
            router.set_weight(100)
            result = analyse(
                prometheus,
                plan.analysis,
                canary=new_color,
                stable=None,
                baseline=baseline,
                duration=settings.analysis,
                record=_recorder(context, BLUE_GREEN_SWITCH, what),
                stop=lambda: _rollback_requested(context),
            )
            if not result.passed:
                _end_rolled_back(context, router, what, result)
                return
            after = router.promote()
        metadata = _release_metadata(image, "blue-green", before, after) | _result_metadata(result)
        # production_release is the one record of what is live, whichever strategy released it
        # (new_image_tag_sensor reads its digest).
        context.log_event(dg.AssetMaterialization(asset_key=PRODUCTION_ASSET, metadata=metadata))
        yield dg.MaterializeResult(metadata=metadata)

    @dg.asset(
        name=BLUE_GREEN_SCALE_DOWN,
        deps=[BLUE_GREEN_SWITCH],
        group_name=GROUP,
        description=f"Scales the old colour down {settings.scale_down_delay:g}s after the switch; not "
        "materialized when the old colour is live again by then (rolled back).",
        output_required=False,
    )
    def blue_green_scale_down_old(
        context: dg.AssetExecutionContext, traffic_router: TrafficRouterResource
    ) -> Iterator[dg.MaterializeResult]:
        _in_release_job(context, BLUE_GREEN_JOB)
        old_color = _materialized_in_this_release(context, BLUE_GREEN_SWITCH)["previous_color"]
        with _alive(context):
            # Until then the old colour is an instant way back (rollback_job).
            time.sleep(settings.scale_down_delay)
            router = traffic_router.router()
            if router.state().live == old_color:
                context.log.warning(f"{old_color} is live again (rolled back): leaving it running")
                return
            router.scale_down(old_color)
        context.log.info(f"{old_color} scaled down")
        yield dg.MaterializeResult(metadata={"scaled_down_color": old_color})

    return [blue_green_deploy_idle, blue_green_switch, blue_green_scale_down_old]


blue_green_job = dg.define_asset_job(
    name=BLUE_GREEN_JOB,
    selection=[BLUE_GREEN_DEPLOY, BLUE_GREEN_SWITCH, BLUE_GREEN_SCALE_DOWN],
    tags=RELEASE_TAGS,
    executor_def=dg.in_process_executor,
    description="Blue-green release: gates, deploy to the idle colour, check /health and /ready, switch all "
    "traffic, keep analysing, switch back on failure, scale the old colour down after a delay. Takes the "
    "image as resources.release_image config.",
)


@dg.op(
    description="Sends stable (the live colour) all the traffic and asks running releases to stop: each "
    "ends its step, saying it was rolled back, before moving traffic again; one that has not stopped "
    f"within {ROLLBACK_GRACE_SECONDS:g}s is terminated."
)
def return_stable_to_full_traffic(
    context: dg.OpExecutionContext, traffic_router: TrafficRouterResource
) -> None:
    instance = context.instance
    active = [
        record.dagster_run.run_id
        for job_name in RELEASE_JOBS
        for record in instance.get_run_records(
            filters=dg.RunsFilter(
                job_name=job_name, statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
            )
        )
    ]
    if active:
        # The request first: a release checks it before every traffic change, so none moves traffic again
        # after the weight below.
        requests = {rollback_key(run_id): context.run.run_id for run_id in active}
        instance.run_storage.set_cursor_values(requests)
    router = traffic_router.router()
    state = router.set_weight(0)
    context.log.info(f"Stable ({state.live}) serves all traffic")
    deadline = time.monotonic() + ROLLBACK_GRACE_SECONDS
    for run_id in active:
        context.log.info(f"Waiting for release run {run_id} to stop")
        while not instance.get_run_by_id(run_id).is_finished and time.monotonic() < deadline:
            time.sleep(0.5)
        if not instance.get_run_by_id(run_id).is_finished:
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


def canary_assets(
    plan: RolloutPlan, ui_url: str, wal_archive: WalArchiveWatch | None = None
) -> list[dg.AssetsDefinition]:
    assets, upstream = [], "api_image"
    for step in plan.steps:
        assets.append(canary_step_asset(plan, step, upstream, ui_url, wal_archive))
        upstream = step.asset_name
    return [*assets, production_release_asset(plan)]


def canary_job(plan: RolloutPlan):
    return dg.define_asset_job(
        name=CANARY_JOB,
        selection=[step.asset_name for step in plan.steps] + [PRODUCTION_ASSET],
        tags=RELEASE_TAGS,
        # One process: the steps run one after another anyway, and killing it must stop the release.
        executor_def=dg.in_process_executor,
        description="Canary release following the rollout plan: gates, deploy to the idle colour, each "
        "weight analysed, then production_release. Takes the image as resources.release_image config.",
    )


APPROVAL_SPEC = dg.AssetSpec(
    APPROVAL_ASSET,
    group_name=GROUP,
    description="Operator approval of a manual release gate. To approve a waiting step, choose 'Report "
    "materialization event' on this asset (the description is recorded as the note); a description "
    "starting with 'reject' rejects the release instead.",
)
