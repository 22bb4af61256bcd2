"""The blue-green release, as assets in blue_green_release_job: blue_green_deploy_idle (the gates, the image
on the idle colour, healthy) -> blue_green_switch (all traffic to it, analysed against stable's numbers from
just before the switch, then live) -> blue_green_scale_down_old. The first depends on api_image and, like
the first canary step, draws the gate (postgres_backup, restore_drill, physical_backup) in the graph.

A switch that goes live also records production_release (strategy 'blue-green'): that asset is the one record
of what production runs, whichever strategy released it. Later steps act only on what an earlier one did in
the same release (`_materialized_in_this_release`), so re-executing from a failure cannot skip the gates and
the deployment.
"""

import time
from collections.abc import Iterator

import dagster as dg

from hotpot_orchestration.platform.resources import BackupStorageResource
from hotpot_orchestration.release.image.resource import RegistryResource, ReleaseImageResource
from hotpot_orchestration.release.rollout.analysis import stable_values
from hotpot_orchestration.release.rollout.checklist import check_gates, gate_deps
from hotpot_orchestration.release.rollout.controller import StepResult, analyse
from hotpot_orchestration.release.rollout.gates import WalArchiveWatch
from hotpot_orchestration.release.rollout.plan import RolloutPlan
from hotpot_orchestration.release.rollout.releases import (
    BLUE_GREEN_DEPLOY,
    BLUE_GREEN_JOB,
    BLUE_GREEN_SCALE_DOWN,
    BLUE_GREEN_SWITCH,
    GROUP,
    IMAGE_ASSET,
    PRODUCTION_ASSET,
    RELEASE_TAGS,
)
from hotpot_orchestration.release.rollout.resources import CanaryPrometheusResource, TrafficRouterResource
from hotpot_orchestration.release.rollout.rollback import rollback_requested
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


def blue_green_assets(
    plan: RolloutPlan, ui_url: str, wal_archive: WalArchiveWatch | None = None
) -> list[dg.AssetsDefinition]:
    settings = plan.blue_green

    @dg.asset(
        name=BLUE_GREEN_DEPLOY,
        deps=[IMAGE_ASSET, *gate_deps(wal_archive)],
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
        in_release_job(context, BLUE_GREEN_JOB)
        router = traffic_router.router()
        with alive(context):
            image = image_to_release(release_image)
            check_gates(context, image, registry, backup_storage, ui_url, wal_archive)
            state = deploy_idle(context, plan, router, image)
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
        in_release_job(context, BLUE_GREEN_JOB)
        image = image_to_release(release_image)
        new_color = _materialized_in_this_release(context, BLUE_GREEN_DEPLOY)["idle_color"]
        router = traffic_router.router()
        prometheus = canary_prometheus.client()
        what = f"blue-green {new_color}"
        with alive(context), stable_on_error(context, router):
            before = router.state()
            if before.idle != new_color:
                raise dg.Failure(description=f"{new_color} is no longer the idle colour: another release ran")
            if reason := rollback_requested(context):
                end_rolled_back(context, router, what, StepResult("rolled back", reason))
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
                record=recorder(context, BLUE_GREEN_SWITCH, what),
                stop=lambda: rollback_requested(context),
            )
            if not result.passed:
                end_rolled_back(context, router, what, result)
                return
            after = router.promote()
        metadata = release_metadata(image, "blue-green", before, after) | result_metadata(result)
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
        in_release_job(context, BLUE_GREEN_JOB)
        old_color = _materialized_in_this_release(context, BLUE_GREEN_SWITCH)["previous_color"]
        with alive(context):
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
