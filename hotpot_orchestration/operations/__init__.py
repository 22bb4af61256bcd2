"""The operator's surface: failure alerts and pipeline health for the existing monitoring."""

from __future__ import annotations

import dagster as dg

from hotpot_orchestration.platform.planned import planned_sensor
from hotpot_orchestration.settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
    return dg.Definitions(sensors=[planned_sensor("run_failure_alert_sensor", issue=7)])
