"""run_failure_alert_sensor against a real webhook receiver on loopback."""

from __future__ import annotations

import json
import logging

import dagster as dg

from hotpot_orchestration.operations.alerts import post_alert, scrub_secrets
from hotpot_orchestration.operations.sensors import AlertWebhookResource, run_failure_alert_sensor

SECRET = "hunter2-Secr3t"


class KeptRecords(logging.Handler):
    """Keeps what a sensor logs (Dagster's sensor logger does not propagate to pytest's caplog)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dg.op
def load_orders():
    raise RuntimeError(f"connection to postgresql://app:{SECRET}@db:5432/x refused\nsecond line")


@dg.job
def failing_job():
    load_orders()


@dg.op(retry_policy=dg.RetryPolicy(max_retries=1))
def upload_dump():
    raise dg.Failure("S3 at http://127.0.0.1:9 is unreachable: check AWS_ENDPOINT_URL")


@dg.job
def retried_job():
    upload_dump()


def failure_context(instance: dg.DagsterInstance, webhook: AlertWebhookResource, job=failing_job):
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    records = instance.get_records_for_run(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    return dg.build_run_status_sensor_context(
        sensor_name="run_failure_alert_sensor",
        dagster_event=records[0].event_log_entry.dagster_event,
        dagster_instance=instance,
        dagster_run=run,
        resources={"alert_webhook": webhook},
    ).for_run_failure()


def test_one_slack_message_per_failed_run_without_secrets(webhook_receiver):
    receiver = webhook_receiver()
    webhook = AlertWebhookResource(url=receiver.url, ui_url="http://dagster.example:3000")
    with dg.instance_for_test() as instance:
        contexts = [failure_context(instance, webhook) for _ in range(2)]
        for context in contexts:
            run_failure_alert_sensor(context)
    assert len(receiver.messages) == 2
    for context, message in zip(contexts, receiver.messages, strict=True):
        text = json.dumps(message)
        assert "failing_job" in message["text"] and "load_orders" in message["text"]
        assert "connection to postgresql://app:***@db:5432/x refused" in message["text"]
        assert "second line" not in text
        assert f"http://dagster.example:3000/runs/{context.dagster_run.run_id}" in text
        assert SECRET not in text


def test_a_step_whose_retries_ran_out_is_alerted_with_its_last_error(webhook_receiver):
    receiver = webhook_receiver()
    webhook = AlertWebhookResource(url=receiver.url)
    with dg.instance_for_test() as instance:
        run_failure_alert_sensor(failure_context(instance, webhook, job=retried_job))
    [message] = receiver.messages
    assert message["text"].endswith(
        "retried_job failed at upload_dump: S3 at http://127.0.0.1:9 is unreachable:"
        " check AWS_ENDPOINT_URL (exceeded max_retries of 1)"
    ), message["text"]


def test_webhook_down_is_retried_then_logged_without_crashing(webhook_receiver):
    receiver = webhook_receiver(fail_next=2)
    try:
        delivery = post_alert(receiver.url, {"text": "x"}, attempts=3, backoff_s=0.01)
        assert delivery.delivered and delivery.attempts == 3
        assert receiver.messages == [{"text": "x"}]
    finally:
        receiver.close()
    # Nothing listens on the port any more: every attempt fails, and the sensor still returns.
    delivery = post_alert(receiver.url, {"text": "x"}, attempts=2, backoff_s=0.01)
    assert not delivery.delivered and delivery.attempts == 2
    assert "token" not in delivery.detail
    webhook = AlertWebhookResource(url=receiver.url)
    kept = KeptRecords()
    with dg.instance_for_test() as instance:
        context = failure_context(instance, webhook)
        context.log.addHandler(kept)
        assert run_failure_alert_sensor(context) is None  # the tick ends normally
    [record] = kept.records
    logged = record.getMessage()
    assert record.levelno == logging.ERROR
    assert f"alert for run {context.dagster_run.run_id} NOT delivered after 4 attempts" in logged
    assert "Connection refused" in logged and "failing_job failed at load_orders" in logged
    # Neither the webhook URL (a credential) nor the run's secret reaches the log.
    assert "token" not in logged and receiver.url not in logged and SECRET not in logged


def test_scrub_secrets_in_urls_and_pairs():
    assert scrub_secrets("postgresql://u:p@h/db") == "postgresql://u:***@h/db"
    assert scrub_secrets("PGPASSWORD=abc token: xyz") == "PGPASSWORD=*** token: ***"
