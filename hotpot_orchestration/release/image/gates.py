"""CI gates: the checks a source checkout must pass before its image is built.

The source declares them in `gates.yaml` at its top (the sample app's: format, lint, compile, smoke test; the
real API's: `cargo fmt -- --check`, `cargo clippy -- -D warnings`, `cargo test`, `cargo audit`). They run in
order in the checkout, each in its own shell with a timeout; the first failure stops the list, and the gates
after it are reported as not run. Every result keeps the tail of the gate's output for the report.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PositiveFloat,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from hotpot_orchestration.platform.proc import CommandFailed, CommandTimedOut, last_lines, run

GATES_FILE = "gates.yaml"
DEFAULT_TIMEOUT_SECONDS = 600


class GateConfigError(ValueError):
    """The gates file is missing or malformed."""


@dataclass(frozen=True)
class Gate:
    # The annotations are also the gates file's schema (see `GatesFile`).
    __pydantic_config__ = ConfigDict(extra="forbid")

    name: str
    run: Annotated[str, StringConstraints(pattern=r"\S")]
    timeout_seconds: PositiveFloat = DEFAULT_TIMEOUT_SECONDS
    # YAML's `CI: true` or `JOBS: 4` reach the gate's environment as the text they were written as.
    env: Mapping[str, Annotated[str, BeforeValidator(str)]] = field(default_factory=dict)


@dataclass(frozen=True)
class GateResult:
    name: str
    command: str
    status: str  # "passed", "failed", "timed out" or "not run"
    exit_code: int | None
    duration_seconds: float
    output_tail: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class GateFailed(RuntimeError):
    """A gate failed: the build must not go on."""

    def __init__(self, result: GateResult, results: Sequence[GateResult]):
        self.result = result
        self.results = list(results)
        what = f"exit code {result.exit_code}" if result.status == "failed" else result.status
        super().__init__(
            f"gate {result.name!r} {result.status} ({what}) after {result.duration_seconds:.1f} s: "
            f"`{result.command}`\n--- last lines of its output ---\n{result.output_tail}"
        )


class GatesFile(BaseModel):
    """`{gates: [{name?, run, timeout_seconds?, env?}, ...]}` or the bare list; a gate's name defaults to
    its command's first word."""

    gates: list[Gate]

    @model_validator(mode="before")
    @classmethod
    def _named(cls, data: Any) -> Any:
        items = data.get("gates") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise ValueError("expected a `gates:` list")
        return {"gates": [_with_name(item) for item in items]}

    @field_validator("gates")
    @classmethod
    def _names_unique(cls, gates: list[Gate]) -> list[Gate]:
        names = [gate.name for gate in gates]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError("; ".join(f"gate name {name!r} appears twice" for name in twice))
        return gates


def _with_name(item: Any) -> Any:
    """A gate without a name is named by its command's first word."""
    command = item.get("run") if isinstance(item, dict) else None
    if isinstance(command, str) and command.split() and not item.get("name"):
        return {**item, "name": command.split()[0]}
    return item


def _gate_problems(invalid: ValidationError, data: Any) -> list[str]:
    """Each problem once, named by its gate (`gate #2 'lint'`); unknown keys of a gate together."""
    items = data.get("gates") if isinstance(data, dict) else data
    problems: dict[str, list[str]] = {}
    for error in invalid.errors(include_url=False):
        loc, kind = error["loc"], error["type"]
        if len(loc) < 2:
            problems.setdefault(str(error["ctx"]["error"]) if kind == "value_error" else error["msg"], [])
            continue
        item = items[loc[1]]
        name = item.get("name") if isinstance(item, dict) else None
        where = f"gate #{loc[1] + 1}" + (f" {name!r}" if name else "")
        key = ".".join(map(str, loc[2:]))
        if kind == "unexpected_keyword_argument":
            problems.setdefault(f"{where} has unknown keys", []).append(key)
        elif key == "run" or (key == "name" and kind == "missing"):  # no name: no command to take it from
            problems.setdefault(f"{where} needs a `run:` command", [])
        else:
            problems.setdefault(
                f"{where}{f' {key}' if key else ''}: {error['msg']}, got {error['input']!r}", []
            )
    return [f"{problem} {sorted(keys)}" if keys else problem for problem, keys in problems.items()]


def parse_gates(data: object, origin: str = GATES_FILE) -> list[Gate]:
    """Gates from parsed YAML (see `GatesFile`); every problem of the file is reported at once."""
    try:
        return GatesFile.model_validate(data).gates
    except ValidationError as invalid:
        raise GateConfigError(f"{origin}: " + "\n  ".join(_gate_problems(invalid, data))) from None


def load_gates(source: Path, gates_file: str = GATES_FILE) -> list[Gate]:
    path = source / gates_file
    if not path.is_file():
        raise GateConfigError(
            f"{path} not found: the source must declare its CI gates (an empty `gates: []` runs none)"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise GateConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_gates(data, str(path))


def run_gate(gate: Gate, workdir: Path, env: Mapping[str, str] | None = None) -> GateResult:
    """Run one gate in `workdir` (stdout and stderr together); kill its whole process group on timeout."""
    environment = {**os.environ, **(env or {}), **gate.env}
    started = time.monotonic()
    try:
        finished = run(
            ["/bin/sh", "-c", gate.run],
            timeout=gate.timeout_seconds,
            env=environment,
            cwd=workdir,
            merge_stderr=True,
        )
        status, exit_code, output = "passed", finished.returncode, finished.tail
    except CommandTimedOut as timed_out:
        status, exit_code = "timed out", timed_out.returncode
        output = f"{timed_out.tail}\n[killed after {gate.timeout_seconds:g} s]"
    except CommandFailed as failed:
        status, exit_code, output = "failed", failed.returncode, failed.tail
    return GateResult(
        name=gate.name,
        command=gate.run,
        status=status,
        exit_code=exit_code,
        duration_seconds=time.monotonic() - started,
        output_tail=last_lines(output),
    )


def iter_gates(
    gates: Sequence[Gate], workdir: Path, env: Mapping[str, str] | None = None
) -> Iterator[GateResult]:
    """Run the gates in order, yielding each result as it comes; after a failure the rest are `not run`."""
    failed = False
    for gate in gates:
        if failed:
            yield GateResult(gate.name, gate.run, "not run", None, 0.0, "")
            continue
        result = run_gate(gate, workdir, env)
        failed = not result.passed
        yield result


def check_gate_results(results: Sequence[GateResult]) -> None:
    """Raise `GateFailed` for the first gate that did not pass."""
    for result in results:
        if result.status in ("failed", "timed out"):
            raise GateFailed(result, results)


def run_gates(
    gates: Sequence[Gate],
    workdir: Path,
    env: Mapping[str, str] | None = None,
    on_result: Callable[[GateResult], None] | None = None,
) -> list[GateResult]:
    """Run the gates in order; raise `GateFailed` at the first failure (later gates are reported not run)."""
    results: list[GateResult] = []
    for result in iter_gates(gates, workdir, env):
        results.append(result)
        if on_result:
            on_result(result)
    check_gate_results(results)
    return results
