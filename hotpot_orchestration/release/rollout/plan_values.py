"""The values a rollout plan file is written in: durations and numbers, each refusing what cannot be followed
with the form it accepts. The plan's models (in `plan` and `analysis`) are built from them and say where."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

_DURATION = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>ms|s|m|h)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Seconds from `90`, `1.5s`, `10m`, `2h`, `250ms`; strictly positive."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a duration such as 30s or 10m, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"expected a duration such as 30s or 10m, got {value!r}")
        seconds = float(match["number"]) * _UNIT_SECONDS[match["unit"]]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


def _number(value: object) -> float:
    # YAML's true and "0.1" are not numbers here, whatever Python or pydantic would make of them.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"expected a number, got {value!r}")
    return value


def _whole_number(value: object) -> int:
    if int(_number(value)) != value:
        raise ValueError(f"expected a whole number, got {value!r}")
    return int(value)


def _holds(rule: Callable[[float], bool], says: str) -> AfterValidator:
    def check(value: float) -> float:
        if not rule(value):
            raise ValueError(f"{says}, got {value!r}")
        return value

    return AfterValidator(check)


Duration = Annotated[float, BeforeValidator(parse_duration)]
Number = Annotated[float, BeforeValidator(_number), _holds(lambda n: n >= 0, "must be at least 0")]
PositiveNumber = Annotated[float, BeforeValidator(_number), _holds(lambda n: n > 0, "must be positive")]
WholeNumber = Annotated[int, BeforeValidator(_whole_number), _holds(lambda n: n >= 0, "must be at least 0")]
Count = Annotated[int, BeforeValidator(_whole_number), _holds(lambda n: n >= 1, "must be at least 1")]
Weight = Annotated[
    int, BeforeValidator(_whole_number), _holds(lambda n: 1 <= n <= 100, "must be within 1..100")
]


class PlanSection(BaseModel):
    """A section of the plan file: read-only once loaded, and an unknown key is an error (a misspelt key
    must not silently leave its default in place)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
