"""Canary judgement and the step controller, driven directly with a scripted Prometheus and a fake clock.

The PromQL itself runs against a real Prometheus in test_rollout_e2e.py.
"""

from __future__ import annotations

import math

import pytest
from support.canary import ANALYSIS, FakeClock, ScriptedPrometheus

from hotpot_orchestration.release.rollout.analysis import (
    PrometheusError,
    error_ratio_query,
    judge,
    latency_p95_query,
    measure,
    request_count_query,
)
from hotpot_orchestration.release.rollout.controller import Approval, analyse
from hotpot_orchestration.release.rollout.plan import parse_plan

ERROR, LATENCY = ANALYSIS.metrics


def test_queries_follow_the_seed_metrics_and_the_window():
    assert error_ratio_query('job="a"', 10) == (
        '(sum(rate(http_requests_total{job="a", status=~"5.."}[10000ms])) or vector(0))'
        ' / sum(rate(http_requests_total{job="a"}[10000ms]))'
    )
    assert latency_p95_query('job="a"', 1.5) == (
        'histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{job="a"}[1500ms])))'
    )
    assert request_count_query('job="a"', 60) == 'sum(increase(http_requests_total{job="a"}[60000ms]))'


@pytest.mark.parametrize(
    ("value", "samples", "baseline", "verdict"),
    [
        (0.0, 200, 0.0, "pass"),
        (0.015, 200, 0.0, "pass"),  # within stable + 0.02
        (0.05, 200, 0.0, "fail"),  # a small share of 5xx that stable does not have
        (0.2, 200, 0.2, "fail"),  # above the seed's threshold even when stable is as bad
        (0.0, 49, 0.0, "inconclusive"),  # too little traffic
        (0.0, None, 0.0, "inconclusive"),
        (math.nan, 200, 0.0, "inconclusive"),
        (None, 200, 0.0, "inconclusive"),
        (0.0, 200, None, "inconclusive"),  # nothing to compare with
        (0.0, math.nan, 0.0, "inconclusive"),
    ],
)
def test_judge_error_ratio(value, samples, baseline, verdict):
    assert judge(ERROR, value, samples, 50, baseline, compare=True)[0] == verdict


def test_judge_without_stable_traffic_uses_the_threshold_alone():
    assert judge(LATENCY, 0.9, 200, 50, None, compare=False)[0] == "pass"
    assert judge(LATENCY, 1.1, 200, 50, None, compare=False)[0] == "fail"


def test_measure_records_query_value_threshold_samples_and_verdict():
    prometheus = ScriptedPrometheus(green_latency_p95=0.5)
    measurement = measure(prometheus, ANALYSIS, canary="green", stable="blue")
    assert measurement.verdict == "fail"
    latency = next(d for d in measurement.decisions if d.check == "latency_p95")
    assert latency.as_metadata() | {"reason": ""} == {
        "check": "latency_p95",
        "query": latency_p95_query('job="api-green"', 10),
        "value": 0.5,
        "threshold": pytest.approx(0.3),
        "sample_count": 200.0,
        "verdict": "fail",
        "reason": "",
        "stable_query": latency_p95_query('job="api-blue"', 10),
        "stable_value": 0.05,
    }
    assert "exceeds stable" in measurement.summary


def test_prometheus_down_is_inconclusive_not_a_pass():
    prometheus = ScriptedPrometheus(green_requests=PrometheusError("connection refused"))
    assert measure(prometheus, ANALYSIS, canary="green", stable="blue").verdict == "inconclusive"


def run(prometheus, duration=30.0, gate=None, clock=None, **kwargs):
    clock = clock or FakeClock()
    result = analyse(
        prometheus,
        ANALYSIS,
        canary="green",
        stable="blue",
        duration=duration,
        gate=gate,
        clock=clock,
        sleep=clock.sleep,
        **kwargs,
    )
    return result, clock


def test_a_good_canary_passes_after_the_pause():
    result, clock = run(ScriptedPrometheus())
    assert result.outcome == "pass"
    assert len(result.measurements) == 3 and clock.now == pytest.approx(30)


def test_a_failing_measurement_stops_at_once():
    prometheus = ScriptedPrometheus(green_error_ratio=0.06)
    result, clock = run(prometheus)
    assert result.outcome == "fail" and len(result.measurements) == 1
    assert clock.now == pytest.approx(10)  # one interval, not the whole pause
    assert "error_ratio" in result.message


def test_no_traffic_is_never_a_pass():
    silent = ScriptedPrometheus(green_requests=0.0, green_error_ratio=None, green_latency_p95=math.nan)
    result, _ = run(silent)
    assert result.outcome == "inconclusive"
    assert len(result.measurements) == ANALYSIS.max_inconclusive + 1
    assert "0 canary requests in the window, 50 needed" in result.message


def test_an_inconclusive_last_measurement_extends_the_step_until_a_pass():
    prometheus = ScriptedPrometheus()
    # what the next measurement sees: the 3rd and 4th find only 10 canary requests
    answers = iter([200.0, 10.0, 10.0, 200.0, 200.0])

    def record(measurement):
        prometheus.values["green_requests"] = next(answers)

    result, clock = run(prometheus, record=record)
    # the pause ended on an inconclusive measurement, so the step went on to the next good one
    assert result.outcome == "pass" and len(result.measurements) == 5


class ScriptedGate:
    def __init__(self, timeout: float, answer_after: int | None, approved: bool = True):
        self.timeout = timeout
        self.polls = 0
        self.opened = False
        self.answer_after = answer_after
        self.approved = approved

    def open(self):
        self.opened = True

    def poll(self):
        assert self.opened
        self.polls += 1
        if self.answer_after is not None and self.polls > self.answer_after:
            return Approval(self.approved, "by ops")
        return None


def test_manual_gate_waits_for_approval_while_measuring():
    gate = ScriptedGate(timeout=60, answer_after=15)
    result, clock = run(ScriptedPrometheus(), gate=gate)
    assert result.outcome == "pass" and result.approval == Approval(True, "by ops")
    assert 30 < clock.now < 60 and len(result.measurements) > 3


def test_manual_gate_rejection_and_timeout_roll_back():
    rejected, _ = run(ScriptedPrometheus(), gate=ScriptedGate(timeout=60, answer_after=3, approved=False))
    assert rejected.outcome == "rejected" and "by ops" in rejected.message
    unapproved, clock = run(ScriptedPrometheus(), gate=ScriptedGate(timeout=20, answer_after=None))
    assert unapproved.outcome == "unapproved" and clock.now <= 30 + 20 + 10


def test_manual_gate_still_fails_fast_on_a_bad_measurement():
    prometheus = ScriptedPrometheus()
    gate = ScriptedGate(timeout=600, answer_after=None)

    def record(measurement):
        if len(measurements) == 4:
            prometheus.values["green_error_ratio"] = 0.5

    measurements: list = []
    result, _ = run(prometheus, gate=gate, record=lambda m: (measurements.append(m), record(m)))
    assert result.outcome == "fail" and len(result.measurements) == 5


def test_blue_green_after_switch_compares_with_the_baseline():
    prometheus = ScriptedPrometheus(green_latency_p95=0.4)
    clock = FakeClock()
    result = analyse(
        prometheus,
        ANALYSIS,
        canary="green",
        stable=None,
        baseline={"error_ratio": 0.0, "latency_p95": 0.05},
        duration=30,
        clock=clock,
        sleep=clock.sleep,
    )
    assert result.outcome == "fail"
    assert not any("api-blue" in query for query in prometheus.queries)


WATCHED = parse_plan(
    """
analysis:
  interval: 10s
  watch_every: 2s
  min_requests: 50
  max_inconclusive: 2
  selector: 'job="api-{color}"'
  metrics:
    error_ratio: {threshold: 0.1, max_increase_over_stable: 0.02}
approval_timeout: 60s
health_timeout: 5s
steps:
  - {weight: 20, pause: 30s}
blue_green: {analysis: 30s, scale_down_delay: 1s}
"""
).analysis


def test_watching_between_measurements_acts_on_a_failure_before_the_next_interval():
    prometheus = ScriptedPrometheus()
    clock = FakeClock()

    def sleep(seconds):
        clock.sleep(seconds)
        if clock.now >= 13:  # a fault shows 3 s after the first measurement
            prometheus.values["green_error_ratio"] = 0.3

    result = analyse(
        prometheus, WATCHED, canary="green", stable="blue", duration=30, clock=clock, sleep=sleep
    )
    assert result.outcome == "fail"
    assert 13 <= clock.now <= 14  # caught by the next watch, not at the measurement due at 20 s
    assert [round(m.at) for m in result.measurements] == [10, 14]


def test_watches_never_pass_a_step_early():
    clock = FakeClock()
    result = analyse(
        ScriptedPrometheus(),
        WATCHED,
        canary="green",
        stable="blue",
        duration=30,
        clock=clock,
        sleep=clock.sleep,
    )
    assert result.outcome == "pass" and clock.now == pytest.approx(30)
    assert len(result.measurements) == 3  # the passing watches are not recorded as measurements
