"""The operator's surface: failure alerts and pipeline health for the existing monitoring."""

from __future__ import annotations

import dagster as dg

from hotpot_orchestration.operations.sensors import (
    AlertWebhookResource,
    MetricsTextfileResource,
    pipeline_health_sensor,
    run_failure_alert_sensor,
)
from hotpot_orchestration.settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
    webhook_url = dg.EnvVar("HOTPOT_ALERT_WEBHOOK_URL") if settings.alert_webhook_url else None
    return dg.Definitions(
        sensors=[run_failure_alert_sensor, pipeline_health_sensor],
        resources={
            "alert_webhook": AlertWebhookResource(url=webhook_url, ui_url=settings.ui_url),
            "metrics_textfile": MetricsTextfileResource(
                path=str(settings.metrics_textfile) if settings.metrics_textfile else None
            ),
        },
    )
