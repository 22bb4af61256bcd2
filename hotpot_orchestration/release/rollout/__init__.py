"""Staged canary and blue-green releases judged on real metrics, and rollback."""

from __future__ import annotations

import dagster as dg

from hotpot_orchestration.platform.planned import planned_asset, planned_job, planned_sensor
from hotpot_orchestration.settings import Settings

CANARY_WEIGHTS = (20, 40, 60, 80)


def build_defs(settings: Settings) -> dg.Definitions:
    steps, upstream = [], "api_image"
    for weight in CANARY_WEIGHTS:
        steps.append(planned_asset(f"canary_weight_{weight}", issue=6, deps=[upstream], group_name="release"))
        upstream = f"canary_weight_{weight}"
    return dg.Definitions(
        assets=[*steps, planned_asset("production_release", issue=6, deps=[upstream], group_name="release")],
        jobs=[
            planned_job("canary_release_job", issue=6),
            planned_job("blue_green_release_job", issue=6),
            planned_job("rollback_job", issue=6),
        ],
        sensors=[planned_sensor("release_failure_sensor", issue=6)],
    )
