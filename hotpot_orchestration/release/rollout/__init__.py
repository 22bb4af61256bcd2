"""Staged canary and blue-green releases judged on real metrics, and rollback.

The plan (HOTPOT_ROLLOUT_PLAN's file, else the packaged rollout_plan.yaml) is validated when the code
location loads and generates one asset per step, `canary_weight_<W>`, between `api_image` and
`production_release`, all in `canary_release_job`.
"""

from __future__ import annotations

import dagster as dg

from hotpot_orchestration.release.rollout.plan import RolloutPlan, load_plan
from hotpot_orchestration.release.rollout.releases import (
    APPROVAL_SPEC,
    blue_green_job,
    canary_assets,
    canary_job,
    rollback_job,
)
from hotpot_orchestration.release.rollout.resources import CanaryPrometheusResource, traffic_router_resource
from hotpot_orchestration.release.rollout.sensor import release_failure_sensor
from hotpot_orchestration.settings import Settings


def build_rollout_defs(plan: RolloutPlan, ui_url: str) -> dg.Definitions:
    """Assets, jobs and the sensor for `plan` (a refused gate links to `ui_url`, the Dagster UI); the
    resources come from the caller."""
    return dg.Definitions(
        assets=[*canary_assets(plan, ui_url), APPROVAL_SPEC],
        jobs=[canary_job(plan), blue_green_job(plan, ui_url), rollback_job],
        sensors=[release_failure_sensor],
    )


def build_defs(settings: Settings) -> dg.Definitions:
    return dg.Definitions.merge(
        build_rollout_defs(load_plan(settings.rollout_plan), settings.ui_url),
        dg.Definitions(
            resources={
                "traffic_router": traffic_router_resource(settings),
                "canary_prometheus": CanaryPrometheusResource(url=settings.prometheus_url),
            }
        ),
    )
