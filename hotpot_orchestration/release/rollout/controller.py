"""Running a release step: set the weight, measure every interval for the pause, decide.

The rules (issue #6): a failing measurement stops the step at once; inconclusive measurements are tolerated up
to the plan's limit and never count as a pass; a step passes only once its pause has elapsed and its latest
measurement passed; a manual gate additionally needs an operator's approval, while measurements go on.
Between measurements the same checks run every `watch_every`, and only a failure among them counts: a fault
that appears just after a measurement is acted on as soon as Prometheus shows it, not an interval later.
Whatever ends a step other than a pass, the caller sends stable all the traffic. An operator's rollback
(`stop`) ends the step at the next poll, like a rejection.

Plain Python: the clock, the sleep and the approval source are passed in, so the rules are tested directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from hotpot_orchestration.release.rollout.analysis import Measurement, Prometheus, measure
from hotpot_orchestration.release.rollout.plan import Analysis

Outcome = Literal["pass", "fail", "inconclusive", "rejected", "unapproved", "rolled back"]
# The operator's answer and a rollback request are looked for this often between measurements.
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Approval:
    approved: bool
    note: str


class ApprovalGate(Protocol):
    """A manual approval a step waits for once its analysis passed (the Dagster side: approval.py); not the
    release's safety gates (gates.py) nor an image's CI gates (release/image/gates.py)."""

    timeout: float

    def open(self) -> None:
        """The step is ready for approval: tell the operator how to give it."""

    def poll(self) -> Approval | None:
        """The operator's answer given since `open()`, if any."""


@dataclass
class StepResult:
    outcome: Outcome
    message: str
    measurements: list[Measurement] = field(default_factory=list)
    approval: Approval | None = None

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"


def analyse(
    prometheus: Prometheus,
    analysis: Analysis,
    *,
    canary: str,
    stable: str | None,
    duration: float,
    baseline: Mapping[str, float | None] | None = None,
    gate: ApprovalGate | None = None,
    record: Callable[[Measurement], None] = lambda measurement: None,
    stop: Callable[[], str | None] = lambda: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> StepResult:
    """Measure `canary` every interval for at least `duration` seconds and decide (see the module doc)."""
    result = StepResult("inconclusive", "")
    started = clock()
    next_tick = started + analysis.interval
    inconclusive = 0
    gate_opened: float | None = None
    next_watch = started + analysis.watch_every
    while True:
        # Between measurements: watch for a failure and for the operator's answer.
        while (remaining := next_tick - clock()) > 0:
            sleep(min(remaining, POLL_SECONDS, max(0.0, next_watch - clock())))
            if next_watch <= clock() < next_tick:
                next_watch = clock() + analysis.watch_every
                watched = measure(prometheus, analysis, canary, stable, baseline, now=clock() - started)
                if watched.verdict == "fail":
                    # Only failures count between measurements: a pass needs a full interval of evidence.
                    result.measurements.append(watched)
                    record(watched)
                    return _end(result, "fail", f"failed: {watched.summary}")
            if reason := stop():
                return _end(result, "rolled back", reason)
            if gate_opened is not None and _answered(result, gate):
                return result
        next_tick += analysis.interval
        next_watch = clock() + analysis.watch_every
        measurement = measure(prometheus, analysis, canary, stable, baseline, now=clock() - started)
        result.measurements.append(measurement)
        record(measurement)
        if measurement.verdict == "fail":
            return _end(result, "fail", f"failed: {measurement.summary}")
        if measurement.verdict == "inconclusive":
            inconclusive += 1
            if inconclusive > analysis.max_inconclusive:
                return _end(
                    result,
                    "inconclusive",
                    f"inconclusive {inconclusive} times in a row (limit {analysis.max_inconclusive}): "
                    f"{measurement.summary}",
                )
            continue
        inconclusive = 0
        if clock() - started < duration:
            continue
        if gate is None:
            return _end(result, "pass", f"passed {len(result.measurements)} measurements")
        if gate_opened is None:
            gate_opened = clock()
            gate.open()
        if _answered(result, gate):
            return result
        if clock() - gate_opened > gate.timeout:
            return _end(result, "unapproved", f"no operator approval within {gate.timeout:g}s")


def ending(what: str, result: StepResult, live: str, live_share: int) -> str:
    """The one line that ends a release stopped on purpose: why, and where the traffic is now."""
    if result.outcome == "rolled back":  # the message names who rolled it back
        return f"{what} {result.message}: {live} serves {live_share} %"
    return f"{what} {result.message}; rolled back: {live} serves {live_share} %"


def _answered(result: StepResult, gate: ApprovalGate) -> bool:
    """Ends the step on a rejection at any time, or on an approval once the latest measurement passed
    (an approval never turns an inconclusive measurement into a pass: it waits for the next good one)."""
    if result.approval is None:
        result.approval = gate.poll()
    if result.approval is None:
        return False
    if not result.approval.approved:
        _end(result, "rejected", f"rejected by the operator: {result.approval.note}")
        return True
    if result.measurements[-1].verdict == "pass":
        _end(result, "pass", f"approved by the operator: {result.approval.note}")
        return True
    return False


def _end(result: StepResult, outcome: Outcome, message: str) -> StepResult:
    result.outcome = outcome
    result.message = message
    return result


def wait_healthy(base_url: str, timeout: float, paths: tuple[str, ...] = ("/health", "/ready")) -> None:
    """Every path answers 200 before `timeout`, or RuntimeError naming the ones that did not."""
    import httpx  # lazy: only releases probe colours

    deadline = time.monotonic() + timeout
    failing: dict[str, str] = {}
    while True:
        failing = {}
        for path in paths:
            try:
                status = httpx.get(base_url + path, timeout=min(5.0, timeout)).status_code
                if status != 200:
                    failing[path] = f"HTTP {status}"
            except httpx.HTTPError as exc:
                failing[path] = type(exc).__name__
        if not failing:
            return
        if time.monotonic() >= deadline:
            detail = ", ".join(f"{path}: {why}" for path, why in failing.items())
            raise RuntimeError(f"{base_url} not healthy after {timeout:g}s ({detail})")
        time.sleep(0.5)
