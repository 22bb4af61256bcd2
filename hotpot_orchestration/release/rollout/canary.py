"""The canary release: one asset per plan step, `canary_weight_<W>`, then production_release, all in
canary_release_job. The first step checks the gates and deploys to the idle colour; every step sets its
weight and waits out its analysis (and an operator's approval where the plan says so).

A step other than the first refuses to run unless the router is at the previous step's weight, so
re-executing from a failure cannot skip the gates and the deployment.
"""

from collections.abc import Iterator

import dagster as dg

from hotpot_orchestration.platform.resources import BackupStorageResource
from hotpot_orchestration.release.image.resource import RegistryResource, ReleaseImageResource
from hotpot_orchestration.release.rollout.approval import OperatorApproval
from hotpot_orchestration.release.rollout.checklist import check_gates, gate_deps
from hotpot_orchestration.release.rollout.controller import StepResult, analyse
from hotpot_orchestration.release.rollout.gates import WalArchiveWatch
from hotpot_orchestration.release.rollout.plan import RolloutPlan, Step
from hotpot_orchestration.release.rollout.releases import (
    CANARY_JOB,
    GROUP,
    IMAGE_ASSET,
    PRODUCTION_ASSET,
    RELEASE_TAGS,
)
from hotpot_orchestration.release.rollout.resources import CanaryPrometheusResource, TrafficRouterResource
from hotpot_orchestration.release.rollout.rollback import rollback_requested
from hotpot_orchestration.release.rollout.routers import Router, RouteState
from hotpot_orchestration.release.rollout.steps import (
    alive,
    deploy_idle,
    end_rolled_back,
    image_to_release,
    in_release_job,
    recorder,
    release_metadata,
    result_metadata,
    stable_on_error,
)


def _expect_weight(state: RouteState, weight: int, what: str) -> None:
    if state.canary_weight != weight:
        raise dg.Failure(
            description=f"{what} expects the canary at {weight} % (the previous step), the router is at "
            f"{state.canary_weight} %: start the release from its first step ({CANARY_JOB})."
        )


def _step_start(
    context, plan: RolloutPlan, step: Step, router: Router, image: ReleaseImageResource
) -> RouteState:
    """Where a step starts from: the first puts the image on the idle colour, a later one expects the
    router at the previous step's weight."""
    if step.number == 1:
        return deploy_idle(context, plan, router, image)
    state = router.state()
    _expect_weight(state, plan.steps[step.number - 2].weight, step.label)
    return state


def _step_description(plan: RolloutPlan, step: Step) -> str:
    gate = (
        " Waits for an operator's approval (asset release_approval) once the analysis passed."
        if step.gate
        else ""
    )
    first = (
        " First checks the safety gates (a fresh verified postgres_backup, proven restorable by "
        "restore_drill; WAL archiving working, as the wal_archive check of physical_backup sees it; the "
        "image in the registry) and deploys the image to the idle colour."
        if step.number == 1
        else ""
    )
    return (
        f"Canary at {step.weight} % for {step.pause:g}s, measured every {plan.analysis.interval:g}s "
        f"against stable.{gate} A failure, inconclusive-past-the-limit, a rejection or rollback_job sends "
        f"stable all the traffic and ends the release without materializing this step.{first}"
    )


def canary_step_asset(
    plan: RolloutPlan, step: Step, upstream: str, ui_url: str, wal_archive: WalArchiveWatch | None = None
) -> dg.AssetsDefinition:
    first = step.number == 1

    @dg.asset(
        name=step.asset_name,
        deps=[upstream, *(gate_deps(wal_archive) if first else [])],
        group_name=GROUP,
        description=_step_description(plan, step),
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
        in_release_job(context, CANARY_JOB)
        image = image_to_release(release_image)
        router = traffic_router.router()
        with alive(context):
            if first:
                check_gates(context, image, registry, backup_storage, ui_url, wal_archive)
            with stable_on_error(context, router):
                state = _step_start(context, plan, step, router, image)
                if reason := rollback_requested(context):
                    end_rolled_back(context, router, step.label, StepResult("rolled back", reason))
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
                    record=recorder(context, step.asset_name, step.label),
                    stop=lambda: rollback_requested(context),
                )
                if not result.passed:
                    end_rolled_back(context, router, step.label, result)
                    return
        yield dg.MaterializeResult(
            metadata={"weight": step.weight, "canary_color": state.idle, "image": image.tagged_reference}
            | result_metadata(result)
        )

    return canary_step


def production_release_asset(plan: RolloutPlan) -> dg.AssetsDefinition:
    last = plan.steps[-1]

    @dg.asset(
        name=PRODUCTION_ASSET,
        deps=[last.asset_name],
        group_name=GROUP,
        description="What production runs: the canary becomes the new stable, its colour live with 100 % "
        "of the traffic. Records the image's digest and tag (new_image_tag_sensor reads `digest` from "
        "here); blue_green_release_job records it too when its switch goes live (strategy 'blue-green').",
        output_required=False,
    )
    def production_release(
        context: dg.AssetExecutionContext,
        traffic_router: TrafficRouterResource,
        release_image: ReleaseImageResource,
    ) -> Iterator[dg.MaterializeResult]:
        in_release_job(context, CANARY_JOB)
        image = image_to_release(release_image)
        router = traffic_router.router()
        with alive(context), stable_on_error(context, router):
            before = router.state()
            _expect_weight(before, last.weight, PRODUCTION_ASSET)
            if reason := rollback_requested(context):
                end_rolled_back(context, router, PRODUCTION_ASSET, StepResult("rolled back", reason))
                return
            after = router.promote()
        context.log.info(f"{after.live} is live with {image.tagged_reference}; {before.live} is idle")
        yield dg.MaterializeResult(metadata=release_metadata(image, "canary", before, after))

    return production_release


def canary_assets(
    plan: RolloutPlan, ui_url: str, wal_archive: WalArchiveWatch | None = None
) -> list[dg.AssetsDefinition]:
    assets, upstream = [], IMAGE_ASSET
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
