"""A rollout plan's analysis, a scripted Prometheus and a fake clock, for driving canary judgement and the
step controller without real services or waiting."""

from __future__ import annotations

from hotpot_orchestration.release.rollout.plan import parse_plan

PLAN = parse_plan(
    """
analysis:
  interval: 10s
  min_requests: 50
  max_inconclusive: 2
  selector: 'job="api-{color}"'
  metrics:
    error_ratio: {threshold: 0.1, max_increase_over_stable: 0.02}
    latency_p95: {threshold: 1.0, max_increase_over_stable: 0.25}
approval_timeout: 60s
steps:
  - {weight: 20, pause: 30s}
health_timeout: 5s
blue_green: {analysis: 30s, scale_down_delay: 1s}
"""
)
ANALYSIS = PLAN.analysis


class ScriptedPrometheus:
    """Answers by colour and kind of query; `values` may be changed between measurements."""

    def __init__(self, **values):
        self.values = {
            "green_requests": 200.0,
            "green_error_ratio": 0.0,
            "green_latency_p95": 0.05,
            "blue_error_ratio": 0.0,
            "blue_latency_p95": 0.05,
            **values,
        }
        self.queries: list[str] = []

    def query(self, promql: str) -> float | None:
        self.queries.append(promql)
        color = "green" if "api-green" in promql else "blue"
        if promql.startswith("sum(increase"):
            kind = "requests"
        else:
            kind = "error_ratio" if "5.." in promql else "latency_p95"
        value = self.values.get(f"{color}_{kind}")
        if isinstance(value, Exception):
            raise value
        return value


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
