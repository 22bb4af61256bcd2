"""The rollout plan: the default is the seed's, every malformed plan is refused with its step named, and
HOTPOT_ROLLOUT_PLAN names a plan file (a ConfigMap in deploy/) that replaces it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest
import yaml

from hotpot_orchestration.definitions import build_definitions
from hotpot_orchestration.release.rollout.plan import DEFAULT_PLAN_PATH, PlanError, load_plan, parse_plan
from hotpot_orchestration.release.rollout.plan_values import parse_duration
from hotpot_orchestration.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]

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
        (VALID.replace("weight: 50", "weight: 101"), "step 2 (weight 101): weight: must be within 1..100"),
        (VALID.replace("weight: 20", "weight: 0"), "step 1 (weight 0): weight: must be within 1..100"),
        (VALID.replace("{weight: 20, pause: 4s}", "{weight: 20, pause: -4s}"), "step 1 (weight 20): pause"),
        (VALID.replace("{weight: 20, pause: 4s}", "{weight: 20, pause: 0}"), "step 1 (weight 20): pause"),
        (VALID.replace("{weight: 20, pause: 4s}", "{weight: 20}"), "step 1 (weight 20): missing pause"),
        (VALID.replace("gate: manual", "gate: auto"), "step 2 (weight 50): gate: must be one of manual"),
        (VALID.replace("weight: 50", "weight: 50.5"), "step 2 (weight 50.5): weight: expected a whole"),
        (VALID.replace("latency_p95:", "latency_p99:"), "analysis.metrics.latency_p99: unknown metric"),
        (VALID.replace("threshold: 1.0", "threshold: 0"), "analysis.metrics.latency_p95.threshold"),
        (VALID.replace("interval: 2s", "interval: 5s"), "step 1 (weight 20): pause is shorter than"),
        (VALID.replace("interval: 2s", "interval: soon"), "analysis.interval: expected a duration"),
        (VALID.replace("interval: 2s", "interval: 2s\n  watch_every: 3s"), "analysis.watch_every: must not"),
        (VALID.replace('job="api-{color}"', 'job="api"'), "analysis.selector"),
        (VALID.replace("min_requests: 20", "min_requests: 0"), "analysis.min_requests"),
        (VALID.replace("approval_timeout: 1m\n", ""), "plan: missing approval_timeout"),
        (VALID + "extra: 1\n", "plan: unknown key extra"),
        ("steps: [", "not valid YAML"),
    ],
)
def test_bad_plans_fail_naming_the_step_or_section(text: str, named: str):
    with pytest.raises(PlanError) as caught:
        parse_plan(text, source="bad.yaml")
    assert named in str(caught.value)
    assert str(caught.value).startswith("rollout plan bad.yaml: ")


def test_every_problem_of_a_plan_is_reported_at_once():
    text = (
        VALID.replace("interval: 2s", "interval: soon")
        .replace("weight: 50", "weight: 101")
        .replace("threshold: 1.0", "threshold: 0")
        .replace("scale_down_delay: 1s", "scale_down_delay: 1s, color: green")
    )
    with pytest.raises(PlanError) as caught:
        parse_plan(text, source="bad.yaml")
    assert str(caught.value).splitlines() == [
        "rollout plan bad.yaml: analysis.interval: expected a duration such as 30s or 10m, got 'soon'",
        "  analysis.metrics.latency_p95.threshold: must be positive, got 0.0",
        "  step 2 (weight 101): weight: must be within 1..100, got 101",
        "  blue_green: unknown key color",
    ]


def test_durations():
    assert parse_duration("10m") == 600
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("250ms") == 0.25
    assert parse_duration(90) == 90
    assert parse_duration("2h") == 7200
    for bad in ("", "10 minutes", True, "-1s", 0, None):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_the_code_location_refuses_to_load_a_bad_plan(tmp_path):
    bad = tmp_path / "plan.yaml"
    bad.write_text(textwrap.dedent(VALID).replace("weight: 50", "weight: 5"))
    with pytest.raises(PlanError, match=r"step 2 \(weight 5\)"):
        load_plan(bad)


def validate_code_location(tmp_path, **environ: str) -> subprocess.CompletedProcess:
    """`dagster definitions validate` on the code location, with only `environ` set."""
    bin_dir = Path(sys.executable).parent
    return subprocess.run(
        [str(bin_dir / "dagster"), "definitions", "validate", "-m", "hotpot_orchestration.definitions"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": str(bin_dir), "DAGSTER_HOME": str(tmp_path), "HOME": str(tmp_path), **environ},
        timeout=120,
    )


def test_the_plan_file_that_hotpot_rollout_plan_names_sets_the_canary_steps(tmp_path):
    plan_file = tmp_path / "rollout_plan.yaml"
    plan_file.write_text(
        DEFAULT_PLAN_PATH.read_text()
        .replace("  - weight: 60\n    pause: 10m\n", "")
        .replace("  - weight: 40\n    pause: 10m", "  - weight: 50\n    pause: 3m")
        .replace("threshold: 0.1", "threshold: 0.05")
    )
    settings = load_settings({"HOTPOT_ROLLOUT_PLAN": str(plan_file)})
    repo = build_definitions(settings).get_repository_def()
    steps = sorted(
        (key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()),
        key=lambda name: int(name.rsplit("_", 1)[1]) if name.startswith("canary_weight_") else -1,
    )
    assert [name for name in steps if name.startswith("canary_weight_")] == [
        "canary_weight_20",
        "canary_weight_50",
        "canary_weight_80",
    ]
    assert (
        "for 180s"
        in repo.assets_defs_by_key[dg.AssetKey("canary_weight_50")].descriptions_by_key[
            dg.AssetKey("canary_weight_50")
        ]
    )
    # The code location follows the same file: its pauses and thresholds are the ones the steps judge by.
    plan = load_plan(settings.rollout_plan)
    assert [(step.weight, step.pause) for step in plan.steps] == [(20, 600), (50, 180), (80, 600)]
    assert {rule.name: rule.threshold for rule in plan.analysis.metrics}["error_ratio"] == 0.05
    # Unset: the packaged plan, as before.
    assert load_plan(load_settings({}).rollout_plan) == load_plan()
    assert validate_code_location(tmp_path, HOTPOT_ROLLOUT_PLAN=str(plan_file)).returncode == 0


def test_a_bad_plan_file_stops_the_load_naming_the_variable_and_the_step(tmp_path):
    bad = tmp_path / "rollout_plan.yaml"
    bad.write_text(DEFAULT_PLAN_PATH.read_text().replace("weight: 40", "weight: 10"))
    result = validate_code_location(tmp_path, HOTPOT_ROLLOUT_PLAN=str(bad))
    assert result.returncode != 0
    assert (
        f"rollout plan {bad} (HOTPOT_ROLLOUT_PLAN): step 2 (weight 10): weights must rise strictly"
        in result.stdout + result.stderr
    )

    missing = tmp_path / "absent.yaml"
    result = validate_code_location(tmp_path, HOTPOT_ROLLOUT_PLAN=str(missing))
    assert result.returncode != 0
    assert f"HOTPOT_ROLLOUT_PLAN='{missing}' is not valid: expected a readable file" in (
        result.stdout + result.stderr
    )


def test_the_shipped_configmap_holds_a_valid_plan_equal_to_the_packaged_one():
    manifest = yaml.safe_load((ROOT / "deploy/k8s/rollout-plan.yaml").read_text())
    assert manifest["kind"] == "ConfigMap" and manifest["metadata"]["name"] == "hotpot-rollout-plan"
    shipped = parse_plan(manifest["data"]["rollout_plan.yaml"], source="deploy/k8s/rollout-plan.yaml")
    assert shipped == load_plan()
    # The Helm values mount it where HOTPOT_ROLLOUT_PLAN points, for the code location and its runs.
    values = yaml.safe_load((ROOT / "deploy/helm/values.yaml").read_text())
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    env = {item["name"]: item["value"] for item in deployment["env"]}
    volumes = deployment["volumes"]
    [volume] = [v for v in volumes if v.get("configMap", {}).get("name") == "hotpot-rollout-plan"]
    [mount] = [m for m in deployment["volumeMounts"] if m["name"] == volume["name"]]
    assert env["HOTPOT_ROLLOUT_PLAN"] == f"{mount['mountPath']}/rollout_plan.yaml"
