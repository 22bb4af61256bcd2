"""Canary judgement: PromQL for each metric, one measurement per interval, and its verdict.

The metric names are the seed's (`http_requests_total{status}`, `http_request_duration_seconds` histogram).
A colour's series are picked by the plan's selector. Missing data is never read as good news: too few canary
requests, NaN or an empty result make a measurement "inconclusive", and only a measurement in which every
metric was judged against real numbers can pass. The plan's `analysis:` section is read into `Analysis`
here, beside the metrics it names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from hotpot_orchestration.release.rollout.plan_values import (
    Count,
    Duration,
    Number,
    PlanSection,
    PositiveNumber,
    WholeNumber,
)

Verdict = Literal["pass", "fail", "inconclusive"]


def _window(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def error_ratio_query(selector: str, window: float) -> str:
    # `or vector(0)`: the 5xx series exists only after a first error; no errors is a ratio of 0, while no
    # requests at all still divides by an empty (or zero) denominator and reads as empty/NaN.
    w = _window(window)
    return (
        f'(sum(rate(http_requests_total{{{selector}, status=~"5.."}}[{w}])) or vector(0))'
        f" / sum(rate(http_requests_total{{{selector}}}[{w}]))"
    )


def latency_p95_query(selector: str, window: float) -> str:
    return (
        "histogram_quantile(0.95, sum by (le) "
        f"(rate(http_request_duration_seconds_bucket{{{selector}}}[{_window(window)}])))"
    )


def request_count_query(selector: str, window: float) -> str:
    return f"sum(increase(http_requests_total{{{selector}}}[{_window(window)}]))"


# Metric name in the plan -> PromQL of one colour over a window.
METRICS: dict[str, Callable[[str, float], str]] = {
    "error_ratio": error_ratio_query,
    "latency_p95": latency_p95_query,
}


class MetricRule(PlanSection):
    """One metric of `analysis.metrics`: the canary fails above `threshold`, or above stable's value plus
    `max_increase_over_stable` (None: judged against the threshold only)."""

    name: str
    threshold: PositiveNumber
    max_increase_over_stable: Number | None = None

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in METRICS:
            raise ValueError(f"unknown metric; known metrics: {', '.join(METRICS)}")
        return name


class Analysis(PlanSection):
    """How canaries are measured: every `interval` over the last `window` (both default to `interval`),
    watched for a failure every `watch_every`."""

    interval: Duration
    # Default: the interval.
    window: Duration = Field(default_factory=lambda fields: fields["interval"])
    watch_every: Duration = Field(default_factory=lambda fields: fields["interval"])
    min_requests: Count
    max_inconclusive: WholeNumber
    selector: str
    metrics: tuple[MetricRule, ...] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _metrics_by_name(cls, data: Any) -> Any:
        """In the file, metrics are a mapping by name."""
        if isinstance(data, dict) and isinstance(data.get("metrics"), dict):
            rules = [
                {"name": name, **rule} if isinstance(rule, dict) else rule
                for name, rule in data["metrics"].items()
            ]
            data = {**data, "metrics": rules}
        return data

    @field_validator("watch_every")
    @classmethod
    def _within_interval(cls, watch_every: float, info: ValidationInfo) -> float:
        if watch_every > info.data.get("interval", watch_every):
            raise ValueError("must not be longer than analysis.interval")
        return watch_every

    @field_validator("selector")
    @classmethod
    def _names_the_color(cls, selector: str) -> str:
        if "{color}" not in selector:
            raise ValueError("label matchers containing {color}, such as 'color=\"{color}\"'")
        return selector

    def selector_for(self, color: str) -> str:
        return self.selector.replace("{color}", color)


class PrometheusError(RuntimeError):
    """Prometheus could not answer; the measurement is inconclusive."""


class Prometheus:
    """Instant queries over Prometheus's HTTP API (`/api/v1/query`)."""

    def __init__(self, url: str, timeout: float = 5.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, promql: str) -> float | None:
        """The single value of a scalar-or-one-series result; None when the result is empty."""
        import httpx  # lazy: only release runs talk to Prometheus

        try:
            response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=self.timeout)
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise PrometheusError(f"Prometheus at {self.url} did not answer {promql!r}: {exc}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"Prometheus rejected {promql!r}: {body.get('error', response.text[:200])}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return float(data["result"][1])
        series = data["result"]
        if not series:
            return None
        if len(series) > 1:
            raise PrometheusError(f"{promql!r} returned {len(series)} series where one was expected")
        return float(series[0]["value"][1])


@dataclass(frozen=True)
class Decision:
    """One judged number, recorded as metadata: what was asked, what came back, against what."""

    check: str
    query: str
    value: float | None
    threshold: float | None
    sample_count: float | None
    verdict: Verdict
    reason: str
    stable_query: str | None = None
    stable_value: float | None = None

    def as_metadata(self) -> dict:
        return {
            key: (None if isinstance(v, float) and math.isnan(v) else v) for key, v in asdict(self).items()
        }


@dataclass(frozen=True)
class Measurement:
    at: float
    decisions: tuple[Decision, ...]

    @property
    def verdict(self) -> Verdict:
        verdicts = {decision.verdict for decision in self.decisions}
        if "fail" in verdicts:
            return "fail"
        return "inconclusive" if "inconclusive" in verdicts else "pass"

    @property
    def summary(self) -> str:
        worst = [d for d in self.decisions if d.verdict == self.verdict]
        return "; ".join(f"{d.check}: {d.reason}" for d in worst)


def _usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def judge(
    rule: MetricRule,
    value: float | None,
    samples: float | None,
    min_requests: int,
    baseline: float | None,
    compare: bool,
) -> tuple[Verdict, float | None, str]:
    """Verdict, the limit that applied, and why. `compare` is False where stable serves no traffic."""
    if not _usable(samples) or samples < min_requests:
        shown = "no" if not _usable(samples) else f"{samples:.0f}"
        return "inconclusive", rule.threshold, f"{shown} canary requests in the window, {min_requests} needed"
    if not _usable(value):
        return "inconclusive", rule.threshold, f"no {rule.name} value for the canary (empty or NaN)"
    if value > rule.threshold:
        return (
            "fail",
            rule.threshold,
            f"canary {rule.name} {value:.4g} is above the threshold {rule.threshold:g}",
        )
    if not compare or rule.max_increase_over_stable is None:
        return (
            "pass",
            rule.threshold,
            f"canary {rule.name} {value:.4g} is within the threshold {rule.threshold:g}",
        )
    if not _usable(baseline):
        return "inconclusive", rule.threshold, f"no {rule.name} value for stable to compare with"
    limit = min(rule.threshold, baseline + rule.max_increase_over_stable)
    if value > limit:
        return (
            "fail",
            limit,
            f"canary {rule.name} {value:.4g} exceeds stable's {baseline:.4g} by more than "
            f"{rule.max_increase_over_stable:g}",
        )
    return "pass", limit, f"canary {rule.name} {value:.4g} is within {limit:.4g} (stable {baseline:.4g})"


def measure(
    prometheus: Prometheus,
    analysis: Analysis,
    canary: str,
    stable: str | None,
    baseline: Mapping[str, float | None] | None = None,
    now: float = 0.0,
) -> Measurement:
    """Judge the canary colour over the last window.

    `stable` names the colour to compare with, measured in the same window. Without it, `baseline` holds
    stable's values measured earlier (blue-green, after the switch); with neither, thresholds alone apply.
    """
    canary_selector = analysis.selector_for(canary)
    count_query = request_count_query(canary_selector, analysis.window)
    decisions: list[Decision] = []
    try:
        samples = prometheus.query(count_query)
    except PrometheusError as exc:
        return Measurement(
            now, (Decision("requests", count_query, None, None, None, "inconclusive", str(exc)),)
        )
    for rule in analysis.metrics:
        build = METRICS[rule.name]
        query = build(canary_selector, analysis.window)
        stable_query = build(analysis.selector_for(stable), analysis.window) if stable else None
        try:
            value = prometheus.query(query)
            reference = prometheus.query(stable_query) if stable_query else (baseline or {}).get(rule.name)
        except PrometheusError as exc:
            decisions.append(
                Decision(rule.name, query, None, None, samples, "inconclusive", str(exc), stable_query)
            )
            continue
        compare = stable_query is not None or baseline is not None
        verdict, limit, reason = judge(rule, value, samples, analysis.min_requests, reference, compare)
        decisions.append(
            Decision(rule.name, query, value, limit, samples, verdict, reason, stable_query, reference)
        )
    return Measurement(now, tuple(decisions))


def stable_values(prometheus: Prometheus, analysis: Analysis, color: str) -> dict[str, float | None]:
    """One colour's metric values over the last window: the baseline a blue-green switch is judged against."""
    selector = analysis.selector_for(color)
    return {
        rule.name: prometheus.query(METRICS[rule.name](selector, analysis.window))
        for rule in analysis.metrics
    }
