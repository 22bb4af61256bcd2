"""The rollout plan: the default is the seed's, and every malformed plan is refused with its step named."""

from __future__ import annotations

import textwrap

import pytest

from hotpot_orchestration.release.rollout.plan import PlanError, load_plan, parse_duration, parse_plan

VALID = """
analysis:
  interval: 2s
  min_requests: 20
  max_inconclusive: 2
  selector: 'job="api-{color}"'
  metrics:
    error_ratio: {threshold: 0.1, max_increase_over_stable: 0.02}
    latency_p95: {threshold: 1.0}
approval_timeout: 1m
steps:
  - {weight: 20, pause: 4s}
  - {weight: 50, pause: 4s, gate: manual}
health_timeout: 5s
blue_green: {analysis: 4s, scale_down_delay: 1s}
"""


def test_default_plan_is_the_seeds_canary_with_its_alert_thresholds():
    plan = load_plan()
    assert [(step.weight, step.pause) for step in plan.steps] == [(20, 600), (40, 600), (60, 600), (80, 600)]
    assert [step.asset_name for step in plan.steps] == [f"canary_weight_{w}" for w in (20, 40, 60, 80)]
    thresholds = {rule.name: rule.threshold for rule in plan.analysis.metrics}
    assert thresholds == {"error_ratio": 0.1, "latency_p95": 1.0}  # HighErrorRate, HighResponseTime
    assert plan.analysis.window == plan.analysis.interval


def test_valid_plan_parses_durations_gates_and_optional_comparison():
    plan = parse_plan(VALID)
    assert plan.analysis.interval == 2.0
    assert plan.steps[1].gate == "manual"
    assert plan.analysis.metrics[1].max_increase_over_stable is None
    assert plan.analysis.selector_for("green") == 'job="api-green"'


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (VALID.replace("weight: 50", "weight: 10"), "step 2 (weight 10): weights must rise strictly"),
        (VALID.replace("weight: 50", "weight: 20"), "step 2 (weight 20): weights must rise strictly"),
        (VALID.replace("weight: 50", "weight: 101"), "step 2 (weight 101): weight must be within 1..100"),
        (VALID.replace("weight: 20", "weight: 0"), "step 1 (weight 0): weight must be within 1..100"),
        (VALID.replace("{weight: 20, pause: 4s}", "{weight: 20, pause: -4s}"), "step 1 (weight 20): pause"),
        (VALID.replace("{weight: 20, pause: 4s}", "{weight: 20, pause: 0}"), "step 1 (weight 20): pause"),
        (VALID.replace("{weight: 20, pause: 4s}", "{weight: 20}"), "step 1 (weight 20): missing pause"),
        (VALID.replace("gate: manual", "gate: auto"), "step 2 (weight 50): gate must be one of manual"),
        (VALID.replace("weight: 50", "weight: 50.5"), "step 2 (weight 50.5): weight: expected a whole"),
        (VALID.replace("latency_p95:", "latency_p99:"), "analysis.metrics.latency_p99: unknown metric"),
        (VALID.replace("threshold: 1.0", "threshold: 0"), "analysis.metrics.latency_p95.threshold"),
        (VALID.replace("interval: 2s", "interval: 5s"), "step 1 (weight 20): pause is shorter than"),
        (VALID.replace("interval: 2s", "interval: soon"), "analysis.interval: expected a duration"),
        (VALID.replace("interval: 2s", "interval: 2s\n  watch_every: 3s"), "analysis.watch_every: must not"),
        (VALID.replace('job="api-{color}"', 'job="api"'), "analysis.selector"),
        (VALID.replace("min_requests: 20", "min_requests: 0"), "analysis.min_requests"),
        (VALID.replace("approval_timeout: 1m\n", ""), "plan: missing approval_timeout"),
        (VALID + "extra: 1\n", "plan: unknown key(s) extra"),
        ("steps: [", "not valid YAML"),
    ],
)
def test_bad_plans_fail_naming_the_step_or_section(text: str, named: str):
    with pytest.raises(PlanError) as caught:
        parse_plan(text, source="bad.yaml")
    assert named in str(caught.value)
    assert str(caught.value).startswith("rollout plan bad.yaml: ")


def test_durations():
    assert parse_duration("10m", "x") == 600
    assert parse_duration("1.5s", "x") == 1.5
    assert parse_duration("250ms", "x") == 0.25
    assert parse_duration(90, "x") == 90
    assert parse_duration("2h", "x") == 7200
    for bad in ("", "10 minutes", True, "-1s", 0):
        with pytest.raises(PlanError):
            parse_duration(bad, "x")


def test_the_code_location_refuses_to_load_a_bad_plan(tmp_path):
    bad = tmp_path / "plan.yaml"
    bad.write_text(textwrap.dedent(VALID).replace("weight: 50", "weight: 5"))
    with pytest.raises(PlanError, match=r"step 2 \(weight 5\)"):
        load_plan(bad)
