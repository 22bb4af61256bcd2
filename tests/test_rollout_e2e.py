"""Release jobs end to end, with time compressed (2 s analysis intervals, 4 s pauses instead of 10 min).

Real services on 127.0.0.1: Debian's nginx routing between two colours of a stand-in API (small Python HTTP
servers exposing the seed's metrics, whose faults the tests switch on: see hotpot_devstack/release_stack.py),
Debian's Prometheus scraping both every second, bounded synthetic traffic through nginx, the devstack registry
holding the image and the devstack S3 holding a verified backup (the safety gates are the real ones).

The tests wait for conditions (Prometheus has seen a window of traffic, requests were answered after a
switch), never for a fixed time, so that they hold on a loaded machine.

Run by hand as `python tests/test_rollout_e2e.py SPEC.json`, this file executes the job in a process of
its own: the kill test uses that to kill -9 a release mid-rollout.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
from support.release import allow_two_runs_in_one_process
from support.waiting import wait_until

from hotpot_devstack import Traffic
from hotpot_devstack.release_stack import (
    ReleaseStack,
    local_plan,
    release_definitions,
    release_spec,
)
from hotpot_orchestration.release.rollout.analysis import Prometheus, request_count_query, stable_values
from hotpot_orchestration.release.rollout.plan import parse_plan
from hotpot_orchestration.release.rollout.releases import OUTCOME_TAG, ROLLED_BACK
from hotpot_orchestration.release.rollout.resources import TrafficRouterResource
from hotpot_orchestration.release.rollout.routers import RouteState
from hotpot_orchestration.release.rollout.sensor import release_failure_sensor

INTERVAL = 2.0
PLAN = local_plan(INTERVAL, [f"{{weight: {weight}, pause: 4s}}" for weight in (20, 40, 60, 80)], window=3.0)
ANALYSIS = parse_plan(PLAN).analysis
STEP_LOG = re.compile(r"^step \d+ \(weight (?P<weight>\d+)\): \d+ % of traffic on ")
AWS_ENV = {"AWS_ACCESS_KEY_ID": "devstack-access-key", "AWS_SECRET_ACCESS_KEY": "devstack-secret-key"}
# Deadlines, generous: on a loaded machine Dagster's steps, nginx reloads and Prometheus scrapes all run late.
SETTLE_SECONDS = 60  # for Prometheus or the traffic to show a change
RUN_SECONDS = 180  # for a release run to finish

pytestmark = pytest.mark.slow


def execute(
    spec: dict, instance: dg.DagsterInstance, job_name: str = "canary_release_job", plan: str | None = None
):
    job = release_definitions({**spec, "plan": plan or spec["plan"]}).resolve_job_def(job_name)
    return job.execute_in_process(instance=instance, raise_on_error=False)


@pytest.fixture(scope="module")
def stack():
    with ReleaseStack() as started:
        yield started


@pytest.fixture(scope="module", autouse=True)
def aws_credentials():
    """boto3's own chain, as in production: every test's gate lists the backups, with or without `spec`."""
    os.environ.update(AWS_ENV)


@pytest.fixture(scope="module")
def spec(stack, registry, s3):
    return release_spec(stack, registry, s3, PLAN)


@pytest.fixture
def instance(tmp_path, monkeypatch):
    allow_two_runs_in_one_process(monkeypatch)  # in_background + execute
    with dg.instance_for_test(temp_dir=str(tmp_path)) as test_instance:
        yield test_instance


@pytest.fixture(autouse=True)
def clean_stack(stack):
    stack.reset()
    # No request of the previous test may be left in this test's analysis windows.
    wait_until(
        lambda: stack.quiet_for(ANALYSIS.window),
        SETTLE_SECONDS,
        f"Prometheus still sees earlier requests in the last {ANALYSIS.window:g} s",
        interval=0.5,
    )
    yield


def answered_after(traffic: Traffic, since: float, count: int = 40) -> list:
    """The answered requests sent after `since` (time.time()), once there are at least `count` of them."""

    def answered() -> list:
        return [hit for hit in traffic.between(since, math.inf) if hit.color is not None]

    return wait_until(
        lambda: len(hits := answered()) >= count and hits,
        SETTLE_SECONDS,
        lambda: f"{len(answered())} requests sent after {since:.2f} answered, {count} expected",
    )


def wait_for_a_baseline(stack: ReleaseStack, color: str) -> None:
    """Until Prometheus holds a window of `color`'s traffic, which a blue-green switch is judged against:
    enough requests, and a number for every metric."""
    prometheus = Prometheus(stack.prometheus.url)
    requests = request_count_query(ANALYSIS.selector_for(color), ANALYSIS.window)

    def baseline() -> dict:
        return {"requests": prometheus.query(requests), **stable_values(prometheus, ANALYSIS, color)}

    def enough(values: dict) -> bool:
        numbers = all(value is not None and math.isfinite(value) for value in values.values())
        return numbers and values["requests"] >= ANALYSIS.min_requests

    wait_until(
        lambda: enough(baseline()),
        SETTLE_SECONDS,
        lambda: f"no baseline of {color} yet: {baseline()}",
        interval=0.5,
    )


def logs(instance, run_id: str) -> list[dg.EventLogEntry]:
    return list(instance.all_logs(run_id))


def last_messages(instance, run_id: str, count: int = 8) -> str:
    """What a run was doing last, for a failure message."""
    messages = [entry.user_message for entry in logs(instance, run_id) if entry.user_message]
    return "\n  ".join(["the run's last messages:", *messages[-count:]])


def logged_at(instance, run_id: str, text: str) -> float | None:
    """When the run first logged a message containing `text`; None if it has not."""
    return next((e.timestamp for e in logs(instance, run_id) if text in (e.user_message or "")), None)


def observations(instance, run_id: str) -> list[dg.EventLogEntry]:
    return [
        entry
        for entry in logs(instance, run_id)
        if entry.dagster_event and entry.dagster_event.is_asset_observation
    ]


def weight_set_at(instance, run_id: str) -> dict[int, float]:
    """When each step's weight took effect (the router returns once nginx's new workers serve it)."""
    return {
        int(match["weight"]): entry.timestamp
        for entry in logs(instance, run_id)
        if (match := STEP_LOG.match(entry.user_message or ""))
    }


def stack_traces(instance, run_id: str) -> list[str]:
    """The events of a run that carry an error with a stack trace (step failures, engine events, the run's
    failure or cancellation)."""
    return [
        f"{entry.dagster_event.event_type_value}: {error.message}"
        for entry in logs(instance, run_id)
        if entry.dagster_event
        and (error := getattr(entry.dagster_event.event_specific_data, "error", None))
        and error.stack
    ]


def clean_ending(instance, result, *texts: str) -> dg.EventLogEntry:
    """Asserts the release run ended on purpose: no event with a stack trace, the run tagged rolled back,
    and exactly one event whose message holds every one of `texts`; returns that event."""
    assert stack_traces(instance, result.run_id) == []
    run = instance.get_run_by_id(result.run_id)
    assert result.success and run.tags.get(OUTCOME_TAG) == ROLLED_BACK, last_messages(instance, run.run_id)
    saying = [e for e in logs(instance, result.run_id) if all(t in (e.user_message or "") for t in texts)]
    assert len(saying) == 1, [e.user_message for e in saying] or last_messages(instance, run.run_id)
    return saying[0]


def materialized(instance, key: str):
    return instance.get_latest_materialization_event(dg.AssetKey(key))


def more_traffic(traffic: Traffic, count: int = 40) -> None:
    """Waits for `count` requests sent from now on to be answered: traffic after what just happened."""
    answered_after(traffic, time.time(), count)


def test_a_good_canary_walks_every_step_to_100_percent(stack, spec, instance):
    with stack.traffic() as traffic:
        result = execute(spec, instance)
        more_traffic(traffic)
    assert result.success, last_messages(instance, result.run_id)
    steps = [20, 40, 60, 80]
    for weight in steps:
        event = materialized(instance, f"canary_weight_{weight}")
        assert event is not None and event.run_id == result.run_id
        assert event.asset_materialization.metadata["outcome"].value == "pass"
    release = materialized(instance, "production_release").asset_materialization.metadata
    assert release["digest"].value == spec["image"]["digest"] and release["tag"].value == "v2"
    assert release["live_color"].value == "green"

    # Observed share of each step, between its weight taking effect and the next one's. nginx's weighted round
    # robin is exact within a worker; requests still on a retiring worker's connection after a reload, and
    # traffic threads a loaded machine runs late, move a share by a few points.
    started = weight_set_at(instance, result.run_id)
    promoted = materialized(instance, "production_release").timestamp
    bounds = [started[w] for w in steps] + [promoted]
    seen = {}
    for weight, start, end in zip(steps, bounds, bounds[1:], strict=False):
        hits = traffic.between(start + 0.1, end - 0.1)
        seen[weight] = (len(hits), Traffic.share(hits, "green"))
    shares = "; ".join(f"step {w}: green served {share:.1f} % of {n}" for w, (n, share) in seen.items())
    assert all(n >= 50 for n, _ in seen.values()), f"too few requests in a step: {shares}"
    assert all(abs(share - w) <= 8 for w, (_, share) in seen.items()), f"off the steps' weights: {shares}"
    after = traffic.between(promoted + 0.5, math.inf)
    assert Traffic.share(after, "green") == 100.0, Counter(hit.color for hit in after)
    assert_no_request_dropped(traffic)
    assert stack.router().state().live == "green"


def assert_no_request_dropped(traffic: Traffic) -> None:
    """Every request through the reloads was answered 200. nginx closes idle keep-alive connections when a
    reload retires its old workers; the rare GET sent on one at that moment is retried by the client, as
    HTTP clients do (counted, and bounded here to 1 % of the requests)."""
    hits = traffic.hits
    assert all(hit.status == 200 for hit in hits), Counter((hit.status, hit.error) for hit in hits)
    retried = sum(hit.retried for hit in hits)
    assert retried <= len(hits) // 100, f"{retried} of {len(hits)} requests were retried"


def failed_fast(instance, result, stack, traffic) -> str:
    """Asserts the run rolled back in its first step, judged bad by a measurement before any other verdict
    than "not enough data yet", with one clear event and no stack trace, and that stable serves everything
    again; returns the event's message.

    How soon the fault is caught (one analysis interval at most, when the first window has enough requests)
    is measured by bench/canary_detection.py; on a loaded machine the first window may hold too few."""
    ending = clean_ending(instance, result, "step 1 (weight 20) failed: ", "rolled back: blue serves 100 %")
    assert ending.step_key == "canary_weight_20"
    verdicts = [e.asset_observation.metadata["verdict"].value for e in observations(instance, result.run_id)]
    assert verdicts[-1] == "fail" and set(verdicts[:-1]) <= {"inconclusive"}, verdicts
    assert len(verdicts) <= 3, verdicts  # before max_inconclusive (2) would have rolled back on its own
    assert materialized(instance, "production_release") is None
    assert stack.router().state().canary_weight == 0
    more_traffic(traffic)
    after = traffic.between(ending.timestamp + 0.2, math.inf)
    assert Traffic.share(after, "blue") == 100.0, Counter(hit.color for hit in after)
    return ending.user_message


@pytest.mark.parametrize(
    ("fault", "value", "metric"),
    [
        # 8 %: under the seed's 0.1 threshold, so it is the comparison with stable (0 %) that catches it
        ("fault_5xx_ratio", 0.08, "error_ratio"),
        ("fault_latency", 0.3, "latency_p95"),
    ],
    ids=["some 5xx", "slow"],
)
def test_a_bad_canary_is_caught_and_traffic_returns_to_stable(stack, spec, instance, fault, value, metric):
    setattr(stack.colors["green"], fault, value)
    with stack.traffic() as traffic:
        result = execute(spec, instance)
        message = failed_fast(instance, result, stack, traffic)
    assert metric in message


def test_a_canary_without_traffic_is_never_promoted(stack, spec, instance):
    result = execute(spec, instance)  # no traffic at all
    clean_ending(instance, result, "inconclusive 3 times in a row", "rolled back: blue serves 100 %")
    assert materialized(instance, "canary_weight_20") is None
    assert materialized(instance, "production_release") is None
    verdicts = [e.asset_observation.metadata["verdict"].value for e in observations(instance, result.run_id)]
    assert verdicts == ["inconclusive"] * 3  # max_inconclusive (2) + 1
    assert stack.router().state().canary_weight == 0


@pytest.mark.parametrize(
    ("job_name", "first_step"),
    [("canary_release_job", "canary_weight_20"), ("blue_green_release_job", "blue_green_deploy_idle")],
    ids=["canary", "blue-green"],
)
def test_gates_block_a_release_and_name_the_failed_gate(stack, instance, registry, s3, job_name, first_step):
    stale = release_spec(stack, registry, s3, PLAN, backup_age=timedelta(hours=30))
    bad = {**stale, "image": {**stale["image"], "digest": "sha256:" + "f" * 64}}
    result = execute(bad, instance, job_name)
    assert not result.success
    [failed] = [e for e in result.all_events if e.is_step_failure]
    assert failed.step_key == first_step
    failure = failed.step_failure_data
    message = failure.error.message
    assert "gate 'backup fresh and verified'" in message and "30.0 h old" in message
    assert "gate 'image digest in the registry'" in message and "not in the registry" in message
    assert stack.router().state().canary_weight == 0
    # The refusal names the backup it looked at, and links to it in the UI.
    metadata = failure.user_failure_data.metadata
    storage = stale["backup_storage"]
    listed = s3.client().list_objects_v2(Bucket=storage["bucket"], Prefix=storage["prefix"])["Contents"]
    [manifest] = [item["Key"] for item in listed if item["Key"].endswith(".manifest.json")]
    assert metadata["backup_manifest"].value == manifest
    assert manifest.removesuffix(".manifest.json") in message  # the dump beside it
    assert 30.0 <= metadata["backup_age_hours"].value < 30.1
    partition = manifest.split("/")[2]
    assert metadata["backup_link"].value == (
        f"{stale['ui_url']}/assets/postgres_backup?view=partitions&partition={partition}"
    )


def live_processes_in_group(pgid: int) -> list[int]:
    """Processes of process group `pgid` that still run (zombies left to be reaped do not)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except OSError:  # it ended while we looked
            continue
        if int(group) == pgid and state != "Z":
            pids.append(int(stat.parent.name))
    return pids


def test_killing_the_run_mid_rollout_leaves_stable_at_100_percent(stack, spec, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({**spec, "dagster_home": str(home)}))
    router = stack.router()
    with stack.traffic() as traffic:
        worker = subprocess.Popen(
            [sys.executable, __file__, str(spec_file)], env={**os.environ, **AWS_ENV}, start_new_session=True
        )

        def at_40_percent() -> bool:
            assert worker.poll() is None, "the release ended before reaching 40 %"
            return router.state().canary_weight >= 40

        try:
            wait_until(at_40_percent, RUN_SECONDS, lambda: f"the release is at {router.state()}, not 40 %")
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
            killed_at = time.time()
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        # Every process of the release is gone (nginx reloads it started included)...
        wait_until(
            lambda: not live_processes_in_group(worker.pid),
            SETTLE_SECONDS,
            lambda: f"the release's processes {live_processes_in_group(worker.pid)} live on",
        )
        assert router.state().canary_weight == 40  # ...so nobody is left to roll it back...

        instance = dg.DagsterInstance.local_temp(str(home))
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.STARTED  # ...and the run still looks alive
        with dg.build_sensor_context(
            instance=instance, resources={"traffic_router": TrafficRouterResource(**spec["router"])}
        ) as context:
            tick = release_failure_sensor(context)  # one tick
        restored_at = time.time()
        assert "back to 100 %" in tick.skip_message
        assert router.state().canary_weight == 0
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        after = answered_after(traffic, restored_at + 0.2)
        assert Traffic.share(after, "blue") == 100.0, Counter(hit.color for hit in after)
        assert killed_at < restored_at


def test_blue_green_switches_after_health_checks_and_keeps_the_new_colour(stack, spec, instance):
    with stack.traffic() as traffic:
        wait_for_a_baseline(stack, "blue")
        result = execute(spec, instance, "blue_green_release_job")
        more_traffic(traffic)
    assert result.success, last_messages(instance, result.run_id)
    release = materialized(instance, "production_release")
    assert release.run_id == result.run_id
    metadata = release.asset_materialization.metadata
    assert metadata["strategy"].value == "blue-green" and metadata["digest"].value == spec["image"]["digest"]
    for step in ("blue_green_deploy_idle", "blue_green_switch", "blue_green_scale_down_old"):
        assert materialized(instance, step).run_id == result.run_id, step
    assert stack.router().state() == RouteState("green", 0)
    after = traffic.between(weight_switch_at(instance, result.run_id) + 0.2, math.inf)
    assert Traffic.share(after, "green") == 100.0, Counter(hit.color for hit in after)
    assert_no_request_dropped(traffic)


def test_blue_green_switches_back_when_the_new_colour_is_bad(stack, spec, instance):
    stack.colors["green"].fault_5xx_ratio = 0.1
    with stack.traffic() as traffic:
        wait_for_a_baseline(stack, "blue")
        result = execute(spec, instance, "blue_green_release_job")
        more_traffic(traffic)
    ending = clean_ending(instance, result, "blue-green green failed: ", "rolled back: blue serves 100 %")
    assert ending.step_key == "blue_green_switch"
    assert result.is_node_skipped("blue_green_scale_down_old")  # green stays deployed until the next release
    assert stack.router().state() == RouteState("blue", 0)
    after = traffic.between(ending.timestamp + 0.2, math.inf)
    assert Traffic.share(after, "blue") == 100.0, Counter(hit.color for hit in after)
    assert materialized(instance, "production_release") is None


def weight_switch_at(instance, run_id: str) -> float:
    return (
        next(
            e.timestamp
            for e in logs(instance, run_id)
            if (e.user_message or "").startswith("blue-green green: measurement")
        )
        - INTERVAL
    )


# The approval timeout is far from what the test needs, so that a slow machine never times the gate out.
GATED_PLAN = local_plan(
    INTERVAL, ["{weight: 20, pause: 4s, gate: manual}"], window=3.0, approval_timeout="120s"
)


def in_background(spec: dict, instance, plan: str | None = None) -> tuple[threading.Thread, dict, str]:
    """Starts a canary release in a thread; returns the thread, where its result (or error) will be, and the
    run's id once the run exists."""
    outcome = {}

    def release() -> None:
        try:
            outcome["result"] = execute(spec, instance, plan=plan)
        except BaseException as error:  # reported by finished(), with what the run was doing
            outcome["error"] = error

    worker = threading.Thread(target=release, daemon=True)
    worker.start()
    run_id = wait_until(
        lambda: (runs := instance.get_runs(limit=1)) and runs[0].run_id,
        SETTLE_SECONDS,
        "the release run never started",
    )
    return worker, outcome, run_id


def finished(worker: threading.Thread, outcome: dict, instance, run_id: str):
    """The background release's result, once it has ended."""
    wait_until(
        lambda: not worker.is_alive(),
        RUN_SECONDS,
        lambda: f"the release did not finish; {last_messages(instance, run_id)}",
        interval=0.5,
    )
    assert "error" not in outcome, outcome.get("error")
    return outcome["result"]


def gate_opened(instance, run_id: str) -> float:
    """When the release's manual gate opened, once it has."""
    return wait_until(
        lambda: logged_at(instance, run_id, "waits for approval"),
        RUN_SECONDS,
        lambda: f"the gate never opened; {last_messages(instance, run_id)}",
    )


def test_a_manual_gate_waits_for_the_operators_approval(stack, spec, instance):
    with stack.traffic():
        worker, outcome, run_id = in_background(spec, instance, GATED_PLAN)
        opened_at = gate_opened(instance, run_id)
        # While it waits it goes on measuring, and stays at 20 %.
        wait_until(
            lambda: len([e for e in observations(instance, run_id) if e.timestamp > opened_at]) >= 2,
            SETTLE_SECONDS,
            lambda: f"no measurements while waiting; {last_messages(instance, run_id)}",
        )
        assert worker.is_alive(), last_messages(instance, run_id)
        assert stack.router().state().canary_weight == 20
        # What the UI's "Report materialization event" on release_approval does:
        instance.report_runless_asset_event(
            dg.AssetMaterialization("release_approval", description="ok, ops")
        )
        result = finished(worker, outcome, instance, run_id)
    assert result.success, last_messages(instance, run_id)
    step = materialized(instance, "canary_weight_20").asset_materialization.metadata
    assert step["approval"].value == "ok, ops"
    assert stack.router().state() == RouteState("green", 0)


def test_an_operators_rejection_rolls_back_with_one_clear_event(stack, spec, instance):
    with stack.traffic() as traffic:
        worker, outcome, run_id = in_background(spec, instance, GATED_PLAN)
        gate_opened(instance, run_id)
        instance.report_runless_asset_event(
            dg.AssetMaterialization("release_approval", description="reject: p95 looks odd")
        )
        result = finished(worker, outcome, instance, run_id)
        more_traffic(traffic)
    ending = clean_ending(
        instance,
        result,
        "step 1 (weight 20) rejected by the operator: reject: p95 looks odd",
        "rolled back: blue serves 100 %",
    )
    assert materialized(instance, "canary_weight_20") is None
    assert stack.router().state() == RouteState("blue", 0)
    after = traffic.between(ending.timestamp + 0.2, math.inf)
    assert Traffic.share(after, "blue") == 100.0, Counter(hit.color for hit in after)


def test_rollback_job_stops_a_running_release_with_one_clear_event(stack, spec, instance):
    router = stack.router()
    with stack.traffic() as traffic:
        worker, outcome, run_id = in_background(spec, instance)
        wait_until(
            lambda: router.state().canary_weight >= 40,
            RUN_SECONDS,
            lambda: f"the release is at {router.state()}, not 40 %; {last_messages(instance, run_id)}",
        )
        rollback = execute(spec, instance, "rollback_job")
        assert rollback.success, last_messages(instance, rollback.run_id)
        result = finished(worker, outcome, instance, run_id)  # rollback_job returned once it had stopped
        more_traffic(traffic)
    assert not worker.is_alive()
    ending = clean_ending(
        instance, result, f"rolled back by rollback_job run {rollback.run_id[:8]}: blue serves 100 %"
    )
    assert ending.step_key.startswith("canary_weight_")
    assert materialized(instance, "production_release") is None
    assert router.state() == RouteState("blue", 0)
    after = traffic.between(ending.timestamp + 0.2, math.inf)
    assert Traffic.share(after, "blue") == 100.0, Counter(hit.color for hit in after)


def test_an_error_in_a_release_still_fails_it_with_its_stack_trace(stack, spec, instance):
    # Green's server is not there: its health check never answers, which is an error, not a rollback.
    broken = {**spec, "router": {**spec["router"], "green_servers": ["127.0.0.1:9"]}}
    result = execute(broken, instance)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "canary_weight_20"
    error = failure.step_failure_data.error
    while error.cause:  # the user code's exception, under Dagster's wrapper
        error = error.cause
    assert "not healthy after" in error.message and "wait_healthy" in "".join(error.stack)
    assert OUTCOME_TAG not in instance.get_run_by_id(result.run_id).tags
    assert stack.router().state().canary_weight == 0


def test_rollback_job_puts_stable_at_100_percent(stack, spec, instance):
    router = stack.router()
    router.set_weight(60)  # a release left half-way
    with stack.traffic() as traffic:
        split = answered_after(traffic, time.time())
        assert 0 < Traffic.share(split, "green") < 100, Counter(hit.color for hit in split)
        result = execute(spec, instance, "rollback_job")
        done = time.time()
        more_traffic(traffic)
    assert result.success
    assert router.state() == RouteState("blue", 0)
    after = traffic.between(done + 0.1, math.inf)
    assert Traffic.share(after, "blue") == 100.0, Counter(hit.color for hit in after)


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    with dg.DagsterInstance.local_temp(spec["dagster_home"]) as worker_instance:
        execute(spec, worker_instance)
