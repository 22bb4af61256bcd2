"""Sensors that watch this code location's runs for operators."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from hotpot_orchestration.operations.alerts import FailedRun, post_alert, slack_message


class AlertWebhookResource(dg.ConfigurableResource):
    """Slack-compatible incoming webhook (HOTPOT_ALERT_WEBHOOK_URL); unset sends alerts to the log only."""

    url: str | None = Field(default=None, description="fed from HOTPOT_ALERT_WEBHOOK_URL, a credential")
    ui_url: str = Field(default="http://127.0.0.1:3000", description="the Dagster UI, for links to runs")


def failed_run_from(context: dg.RunFailureSensorContext, ui_url: str) -> FailedRun:
    run = context.dagster_run
    step_failures = context.get_step_failure_events()
    if step_failures:
        first = step_failures[0]
        step, error = first.step_key, first.event_specific_data.error
    else:
        step, error = None, context.failure_event.event_specific_data.error
    # Dagster wraps an op's exception; operators want the exception itself.
    while error and error.cls_name == "DagsterExecutionStepExecutionError" and error.cause:
        error = error.cause
    message = error.message if error else (context.failure_event.message or "")
    return FailedRun(
        job_name=run.job_name,
        run_id=run.run_id,
        failing_step=step,
        error=message,
        run_url=f"{ui_url.rstrip('/')}/runs/{run.run_id}",
    )


@dg.run_failure_sensor(
    name="run_failure_alert_sensor",
    description="Posts every failed run of this code location to HOTPOT_ALERT_WEBHOOK_URL (Slack format).",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
def run_failure_alert_sensor(context: dg.RunFailureSensorContext, alert_webhook: AlertWebhookResource):
    failed = failed_run_from(context, alert_webhook.ui_url)
    message = slack_message(failed)
    if not alert_webhook.url:
        context.log.error(f"[alert] {message['text']} ({failed.run_url}); HOTPOT_ALERT_WEBHOOK_URL is unset")
        return
    delivery = post_alert(alert_webhook.url, message)
    if delivery.delivered:
        context.log.info(f"alert for run {failed.run_id} delivered ({delivery.detail})")
    else:
        context.log.error(
            f"alert for run {failed.run_id} NOT delivered after {delivery.attempts} attempts "
            f"({delivery.detail}): {message['text']}"
        )
