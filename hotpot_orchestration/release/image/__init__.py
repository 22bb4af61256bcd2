"""The API image: gated build, immutable push, and the sensor that watches the registry for new tags."""

from __future__ import annotations

import dagster as dg

from hotpot_orchestration.platform.planned import planned_asset, planned_job, planned_sensor
from hotpot_orchestration.settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        assets=[planned_asset("api_image", issue=5, group_name="release")],
        jobs=[planned_job("build_image_job", issue=5)],
        sensors=[planned_sensor("new_image_tag_sensor", issue=5)],
    )
