"""The rollout plan (HOTPOT_ROLLOUT_PLAN's file, else the packaged rollout_plan.yaml): parsed and validated
once, when the code location loads.

A plan that cannot be followed must stop the load, not a release forty minutes in, so every rule is checked
here and every problem is reported at once, each naming its step or section.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, Field, ValidationError, model_validator

from hotpot_orchestration.release.rollout.analysis import Analysis
from hotpot_orchestration.release.rollout.plan_values import Duration, PlanSection, Weight

DEFAULT_PLAN_PATH = Path(__file__).with_name("rollout_plan.yaml")
GATES = ("manual",)


class PlanError(ValueError):
    """The rollout plan cannot be followed; the message names each step or section at fault."""


def _gate(gate: str | None) -> str | None:
    if gate is not None and gate not in GATES:
        raise ValueError(f"must be one of {', '.join(GATES)}, got {gate!r}")
    return gate


class Step(PlanSection):
    number: int  # its place in `steps`, from 1; not written in the file
    weight: Weight
    pause: Duration
    gate: Annotated[str | None, AfterValidator(_gate)] = None

    @property
    def asset_name(self) -> str:
        return f"canary_weight_{self.weight}"

    @property
    def label(self) -> str:
        return f"step {self.number} (weight {self.weight})"


class BlueGreen(PlanSection):
    analysis: Duration
    scale_down_delay: Duration


class RolloutPlan(PlanSection):
    analysis: Analysis
    steps: tuple[Step, ...] = Field(min_length=1)
    approval_timeout: Duration
    health_timeout: Duration
    blue_green: BlueGreen

    @model_validator(mode="before")
    @classmethod
    def _number_the_steps(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("steps"), list):
            steps = [
                {**step, "number": n} if isinstance(step, dict) else step
                for n, step in enumerate(data["steps"], 1)
            ]
            data = {**data, "steps": steps}
        return data

    @model_validator(mode="after")
    def _steps_can_be_followed(self) -> RolloutPlan:
        """Rules between steps, and between steps and the analysis; each problem names its step."""
        problems = [
            f"{step.label}: weights must rise strictly; the previous step's is {previous.weight}"
            for previous, step in pairwise(self.steps)
            if step.weight <= previous.weight
        ]
        problems += [
            f"{step.label}: pause is shorter than analysis.interval, so it would never be measured"
            for step in self.steps
            if step.pause < self.analysis.interval
        ]
        if problems:
            raise ValueError("\n  ".join(problems))
        return self


def _at(raw: Any, loc: tuple) -> Any:
    """What the file holds at `loc` (None where it holds nothing there)."""
    for part in loc:
        try:
            raw = raw[part]
        except (KeyError, IndexError, TypeError):
            return None
    return raw


def _where(loc: tuple, raw: Any) -> str:
    """`step 2 (weight 50): pause`, `analysis.metrics.latency_p95.threshold`, `blue_green`, or `plan`."""
    if not loc:
        return "plan"
    if loc[0] == "steps" and len(loc) > 1 and isinstance(loc[1], int):
        weight = _at(raw, (*loc[:2], "weight"))
        label = f"step {loc[1] + 1}" + (f" (weight {weight})" if weight is not None else "")
        return ": ".join([label, ".".join(map(str, loc[2:]))]) if len(loc) > 2 else label
    metrics = _at(raw, ("analysis", "metrics"))
    if loc[:2] == ("analysis", "metrics") and len(loc) > 2 and isinstance(metrics, dict):
        # The rules are checked as a list in the file's order; the file names them.
        loc = (*loc[:2], list(metrics)[loc[2]], *(part for part in loc[3:] if part != "name"))
    return ".".join(map(str, loc))


def _problems(invalid: ValidationError, raw: Any) -> Iterator[str]:
    for error in invalid.errors(include_url=False):
        loc, kind = error["loc"], error["type"]
        if kind == "default_factory_not_called":
            continue  # a default taken from a refused value: that value's own problem is reported
        if kind == "missing":
            yield f"{_where(loc[:-1], raw)}: missing {loc[-1]}"
        elif kind == "extra_forbidden":
            yield f"{_where(loc[:-1], raw)}: unknown key {loc[-1]}"
        elif kind == "value_error" and not loc:
            yield str(error["ctx"]["error"])  # the rules between steps name their steps
        elif kind == "value_error":
            yield f"{_where(loc, raw)}: {error['ctx']['error']}"
        else:
            yield f"{_where(loc, raw)}: {error['msg']}, got {error['input']!r}"


def parse_plan(text: str, source: str = "<plan>") -> RolloutPlan:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PlanError(f"rollout plan {source}: not valid YAML: {exc}") from None
    try:
        return RolloutPlan.model_validate(raw)
    except ValidationError as invalid:
        raise PlanError(f"rollout plan {source}: " + "\n  ".join(_problems(invalid, raw))) from None


def load_plan(path: Path | None = None) -> RolloutPlan:
    """The plan file HOTPOT_ROLLOUT_PLAN names (`path`), or the packaged rollout_plan.yaml when it is unset.

    The file is read once, at load: a changed ConfigMap takes effect when the code location reloads."""
    if path is None:
        return parse_plan(DEFAULT_PLAN_PATH.read_text(), source=str(DEFAULT_PLAN_PATH))
    return parse_plan(Path(path).read_text(), source=f"{path} (HOTPOT_ROLLOUT_PLAN)")
