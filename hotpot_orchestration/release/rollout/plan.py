"""The rollout plan (HOTPOT_ROLLOUT_PLAN's file, else the packaged rollout_plan.yaml): parsed and validated
once, when the code location loads.

A plan that cannot be followed must stop the load, not a release forty minutes in, so every rule is checked
here and each problem names its step or section.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from hotpot_orchestration.release.rollout.analysis import METRICS

DEFAULT_PLAN_PATH = Path(__file__).with_name("rollout_plan.yaml")
GATES = ("manual",)

_DURATION = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>ms|s|m|h)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class PlanError(ValueError):
    """The rollout plan cannot be followed; the message names the step or section."""


@dataclass(frozen=True)
class MetricRule:
    name: str
    threshold: float
    # None: judged against the threshold only.
    max_increase_over_stable: float | None


@dataclass(frozen=True)
class Analysis:
    interval: float
    window: float
    watch_every: float
    min_requests: int
    max_inconclusive: int
    selector: str
    metrics: tuple[MetricRule, ...]

    def selector_for(self, color: str) -> str:
        return self.selector.replace("{color}", color)


@dataclass(frozen=True)
class Step:
    number: int
    weight: int
    pause: float
    gate: str | None

    @property
    def asset_name(self) -> str:
        return f"canary_weight_{self.weight}"

    @property
    def label(self) -> str:
        return f"step {self.number} (weight {self.weight})"


@dataclass(frozen=True)
class BlueGreen:
    analysis: float
    scale_down_delay: float


@dataclass(frozen=True)
class RolloutPlan:
    analysis: Analysis
    steps: tuple[Step, ...]
    approval_timeout: float
    health_timeout: float
    blue_green: BlueGreen
    source: str


def parse_duration(value: object, where: str) -> float:
    """Seconds from `90`, `1.5s`, `10m`, `2h`, `250ms`; strictly positive."""
    if isinstance(value, bool):
        raise PlanError(f"{where}: expected a duration such as 30s or 10m, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(str(value).strip())
        if match is None:
            raise PlanError(f"{where}: expected a duration such as 30s or 10m, got {value!r}")
        seconds = float(match["number"]) * _UNIT_SECONDS[match["unit"]]
    if not math.isfinite(seconds) or seconds <= 0:
        raise PlanError(f"{where}: a duration must be positive, got {value!r}")
    return seconds


def _number(value: object, where: str, *, minimum: float = 0.0, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PlanError(f"{where}: expected a number, got {value!r}")
    if integer and int(value) != value:
        raise PlanError(f"{where}: expected a whole number, got {value!r}")
    if value < minimum:
        raise PlanError(f"{where}: must be at least {minimum:g}, got {value!r}")
    return value


def _mapping(value: object, where: str, allowed: set[str], required: set[str] = frozenset()) -> dict:
    if not isinstance(value, dict):
        raise PlanError(f"{where}: expected a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise PlanError(
            f"{where}: unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(sorted(allowed))}"
        )
    missing = sorted(required - set(value))
    if missing:
        raise PlanError(f"{where}: missing {', '.join(missing)}")
    return value


def _metric(name: object, raw: object) -> MetricRule:
    where = f"analysis.metrics.{name}"
    if name not in METRICS:
        raise PlanError(f"{where}: unknown metric; known metrics: {', '.join(METRICS)}")
    raw = _mapping(raw, where, {"threshold", "max_increase_over_stable"}, {"threshold"})
    threshold = _number(raw["threshold"], f"{where}.threshold")
    if threshold <= 0:
        raise PlanError(f"{where}.threshold: must be positive, got {threshold!r}")
    increase = raw.get("max_increase_over_stable")
    if increase is not None:
        increase = float(_number(increase, f"{where}.max_increase_over_stable"))
    return MetricRule(name=name, threshold=float(threshold), max_increase_over_stable=increase)


def _analysis(raw: object) -> Analysis:
    raw = _mapping(
        raw,
        "analysis",
        {"interval", "window", "watch_every", "min_requests", "max_inconclusive", "selector", "metrics"},
        {"interval", "min_requests", "max_inconclusive", "selector", "metrics"},
    )
    interval = parse_duration(raw["interval"], "analysis.interval")
    window = parse_duration(raw.get("window", interval), "analysis.window")
    watch_every = parse_duration(raw.get("watch_every", interval), "analysis.watch_every")
    if watch_every > interval:
        raise PlanError("analysis.watch_every: must not be longer than analysis.interval")
    selector = raw["selector"]
    if not isinstance(selector, str) or "{color}" not in selector:
        raise PlanError("analysis.selector: label matchers containing {color}, such as 'color=\"{color}\"'")
    metrics = raw["metrics"]
    if not isinstance(metrics, dict) or not metrics:
        raise PlanError(f"analysis.metrics: name at least one of {', '.join(METRICS)}")
    return Analysis(
        interval=interval,
        window=window,
        watch_every=watch_every,
        min_requests=int(_number(raw["min_requests"], "analysis.min_requests", minimum=1, integer=True)),
        max_inconclusive=int(_number(raw["max_inconclusive"], "analysis.max_inconclusive", integer=True)),
        selector=selector,
        metrics=tuple(_metric(name, rule) for name, rule in metrics.items()),
    )


def _steps(raw: object) -> tuple[Step, ...]:
    if not isinstance(raw, list) or not raw:
        raise PlanError("steps: expected a non-empty list of {weight, pause}")
    steps: list[Step] = []
    for number, item in enumerate(raw, start=1):
        weight = item.get("weight") if isinstance(item, dict) else None
        where = f"step {number}" + (f" (weight {weight})" if weight is not None else "")
        item = _mapping(item, where, {"weight", "pause", "gate"}, {"weight", "pause"})
        weight = _number(item["weight"], f"{where}: weight", integer=True)
        if not 1 <= weight <= 100:
            raise PlanError(f"{where}: weight must be within 1..100, got {weight!r}")
        if steps and weight <= steps[-1].weight:
            raise PlanError(f"{where}: weights must rise strictly; the previous step's is {steps[-1].weight}")
        gate = item.get("gate")
        if gate is not None and gate not in GATES:
            raise PlanError(f"{where}: gate must be one of {', '.join(GATES)}, got {gate!r}")
        steps.append(Step(number, int(weight), parse_duration(item["pause"], f"{where}: pause"), gate))
    return tuple(steps)


def _blue_green(raw: object) -> BlueGreen:
    keys = {"analysis", "scale_down_delay"}
    raw = _mapping(raw, "blue_green", keys, keys)
    return BlueGreen(**{key: parse_duration(raw[key], f"blue_green.{key}") for key in keys})


def parse_plan(text: str, source: str = "<plan>") -> RolloutPlan:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PlanError(f"rollout plan {source}: not valid YAML: {exc}") from None
    try:
        sections = {"analysis", "steps", "approval_timeout", "health_timeout", "blue_green"}
        raw = _mapping(raw, "plan", sections, sections)
        analysis = _analysis(raw["analysis"])
        steps = _steps(raw["steps"])
        if analysis.interval > min(step.pause for step in steps):
            shortest = min(steps, key=lambda step: step.pause)
            raise PlanError(
                f"{shortest.label}: pause is shorter than analysis.interval, so it would never be measured"
            )
        return RolloutPlan(
            analysis=analysis,
            steps=steps,
            approval_timeout=parse_duration(raw["approval_timeout"], "approval_timeout"),
            health_timeout=parse_duration(raw["health_timeout"], "health_timeout"),
            blue_green=_blue_green(raw["blue_green"]),
            source=source,
        )
    except PlanError as exc:
        raise PlanError(f"rollout plan {source}: {exc}") from None


def load_plan(path: Path | None = None) -> RolloutPlan:
    """The plan file HOTPOT_ROLLOUT_PLAN names (`path`), or the packaged rollout_plan.yaml when it is unset.

    The file is read once, at load: a changed ConfigMap takes effect when the code location reloads."""
    if path is None:
        return parse_plan(DEFAULT_PLAN_PATH.read_text(), source=str(DEFAULT_PLAN_PATH))
    return parse_plan(Path(path).read_text(), source=f"{path} (HOTPOT_ROLLOUT_PLAN)")
