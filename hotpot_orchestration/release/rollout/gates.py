"""Safety gates: the seed's pre-deployment checklist ("backups created", the image ready) checked before a
release moves any traffic. Every gate is evaluated and the failure names each one that did not pass, so the
operator fixes all of them in one go. A gate that cannot be checked (S3 or the registry unreachable) fails:
a release never starts on an unknown.

Plain Python: the lookups are passed in as callables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any


class GateFailed(RuntimeError):
    """One or more safety gates did not pass."""


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    detail: str
    subject: Any = None  # what the gate looked at (the backup), for a refusal to name and link to


def backup_gate(
    find_latest_verified: Callable[[], Any], now: datetime, *, database: str, max_age: timedelta
) -> GateResult:
    """The latest verified backup of `database` (the one being released against) exists and is younger
    than `max_age`; `find_latest_verified` looks up only that database's backups."""
    name = "backup fresh and verified"
    if not database:
        return GateResult(
            name, False, "HOTPOT_DATABASE_URL is not set: the database whose backup to ask for is unknown"
        )
    try:
        latest = find_latest_verified()
    except Exception as exc:  # any failure to look is a failed gate, with the reason
        return GateResult(name, False, f"could not list backups of {database!r}: {type(exc).__name__}: {exc}")
    if latest is None:
        return GateResult(name, False, f"no verified backup of database {database!r} exists")
    age = now - latest.created_at
    hours = age.total_seconds() / 3600
    detail = f"latest verified backup of {database!r}, {latest.dump_key}, is {hours:.1f} h old"
    if age > max_age:
        limit = f"{detail}; the limit is {max_age.total_seconds() / 3600:g} h"
        return GateResult(name, False, limit, latest)
    return GateResult(name, True, detail, latest)


def image_gate(resolve_digest: Callable[[], str | None], reference: str, digest: str) -> GateResult:
    """The image's digest exists in the registry (HEAD of the manifest by digest)."""
    name = "image digest in the registry"
    try:
        found = resolve_digest()
    except Exception as exc:
        detail = f"could not ask the registry about {reference}: {type(exc).__name__}: {exc}"
        return GateResult(name, False, detail)
    if found is None:
        return GateResult(name, False, f"{reference} is not in the registry")
    if found != digest:
        return GateResult(name, False, f"{reference} resolves to {found}, not {digest}")
    return GateResult(name, True, f"{reference} is in the registry")


def require(results: list[GateResult]) -> None:
    failed = [result for result in results if not result.passed]
    if failed:
        raise GateFailed(
            "release blocked by " + "; ".join(f"gate '{result.name}': {result.detail}" for result in failed)
        )
