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

from hotpot_orchestration.pitr.archive import CHECK_INTERVAL_SECONDS, ArchivedWal, CheckReport
from hotpot_orchestration.pitr.barman import BarmanCloud


class ReleaseGateRefused(RuntimeError):
    """One or more of a release's safety gates did not pass."""


@dataclass(frozen=True)
class ReleaseGateResult:
    name: str
    passed: bool
    detail: str
    subject: Any = None  # what the gate looked at (the backup), for a refusal to name and link to


def backup_gate(
    find_latest_verified: Callable[[], Any], now: datetime, *, database: str, max_age: timedelta
) -> ReleaseGateResult:
    """The latest verified backup of `database` (the one being released against) exists and is younger
    than `max_age`; `find_latest_verified` looks up only that database's backups."""
    name = "backup fresh and verified"
    if not database:
        return ReleaseGateResult(
            name, False, "HOTPOT_DATABASE_URL is not set: the database whose backup to ask for is unknown"
        )
    try:
        latest = find_latest_verified()
    except Exception as exc:  # any failure to look is a failed gate, with the reason
        return ReleaseGateResult(
            name, False, f"could not list backups of {database!r}: {type(exc).__name__}: {exc}"
        )
    if latest is None:
        return ReleaseGateResult(name, False, f"no verified backup of database {database!r} exists")
    age = now - latest.created_at
    hours = age.total_seconds() / 3600
    detail = f"latest verified backup of {database!r}, {latest.dump_key}, is {hours:.1f} h old"
    if age > max_age:
        limit = f"{detail}; the limit is {max_age.total_seconds() / 3600:g} h"
        return ReleaseGateResult(name, False, limit, latest)
    return ReleaseGateResult(name, True, detail, latest)


@dataclass(frozen=True)
class WalArchiveWatch:
    """The barman-cloud archive a release gate looks at, and the wal_archive check's age limit."""

    barman: BarmanCloud
    max_age_seconds: int

    @property
    def location(self) -> str:
        return f"{self.barman.destination}/{self.barman.server_name}/wals/"


@dataclass(frozen=True)
class WalArchiveState:
    """What the WAL gate saw, for a refusal's metadata."""

    location: str
    newest_wal: str | None = None
    age_seconds: float | None = None
    check: CheckReport | None = None


WAL_TO_DO = (
    "fix archive_command (the database server's log names its error: S3 unreachable, credentials, the "
    "bucket), then launch wal_archive_check_job and release again; docs/runbook.md 'WAL archiving is failing'"
)


def _when(report: CheckReport, now: datetime) -> str:
    ago = (now - report.evaluated_at).total_seconds()
    return f"{report.evaluated_at:%Y-%m-%d %H:%M:%S} UTC, {ago:.0f} s ago"


def _archived_since(newest: tuple[str, datetime] | None, report: CheckReport) -> bool:
    """Whether a segment reached the store after the check's evaluation, told by name where the evaluation
    recorded one: newer than the newest it saw, or the one it saw failing. S3 keeps LastModified to the
    second, so a segment stored within the evaluation's second would look older than it."""
    if newest is None:
        return False
    if report.newest_archived_wal and newest[0] > report.newest_archived_wal:
        return True
    if report.last_failed_wal and newest[0] >= report.last_failed_wal[:24]:
        return True
    if report.newest_archived_wal or report.last_failed_wal:
        return False
    return newest[1] > report.evaluated_at


def wal_archive_gate(
    list_archive: Callable[[], ArchivedWal],
    latest_check: Callable[[], CheckReport | None],
    now: datetime,
    *,
    watch: WalArchiveWatch | None,
) -> ReleaseGateResult:
    """WAL archiving works, judged as the wal_archive check judges it, from what a release may read.

    A release has no database credentials (only the bucket's, as for the backup gate), so pg_stat_archiver
    is known here only through the wal_archive check's latest evaluation, which `latest_check` reads from the
    Dagster instance; the object store is listed directly. The gate refuses when:
    - the archive cannot be listed (a gate that cannot be checked fails);
    - the latest wal_archive evaluation failed (pg_stat_archiver showed a failure newer than the last
      success, archive_mode=off, or a stale archive with WAL waiting) and no segment reached the store
      since that evaluation (one that did shows archiving has moved on);
    - the newest archived segment is older than HOTPOT_WAL_ARCHIVE_MAX_AGE_SECONDS, or there is none,
      unless the check passed within that limit plus its 5-minute interval: then the server had nothing
      waiting to archive (an idle server writes no segments), which only the check can tell.
    `watch` None: no archive is configured for releases, and WAL is not looked at (said in the detail).
    """
    name = "WAL archiving working"
    if watch is None:
        return ReleaseGateResult(
            name, True, "not looked at: no WAL archive (PITR) is configured for releases"
        )
    location, limit = watch.location, watch.max_age_seconds
    try:
        archived = list_archive()
    except Exception as exc:
        detail = f"could not list the WAL archive {location}: {type(exc).__name__}: {exc}"
        return ReleaseGateResult(name, False, detail, WalArchiveState(location))
    try:
        report = latest_check()
    except Exception as exc:
        detail = f"could not read the wal_archive check's latest evaluation: {type(exc).__name__}: {exc}"
        return ReleaseGateResult(name, False, detail, WalArchiveState(location))
    newest = archived.newest
    age = (now - newest[1]).total_seconds() if newest else None
    state = WalArchiveState(location, newest[0] if newest else None, age, report)
    seen = (
        f"the newest WAL segment in {location} is {newest[0]}, {age:.0f} s old"
        if newest
        else f"{location} holds no WAL segment"
    )
    if report is None:
        checked = "the wal_archive check has not been evaluated yet"
    else:
        checked = (
            f"the wal_archive check {'passed' if report.passed else 'failed'} ({_when(report, now)})"
            + ("" if report.passed else f": {report.description}")
        )
    if report is not None and not report.passed and not _archived_since(newest, report):
        detail = f"WAL archiving is failing: {checked}; {seen}, none archived since; {WAL_TO_DO}"
        return ReleaseGateResult(name, False, detail, state)
    if newest is None or age > limit:
        recent = timedelta(seconds=limit + CHECK_INTERVAL_SECONDS)
        if report is not None and report.passed and now - report.evaluated_at <= recent:
            detail = f"{seen} (limit {limit} s), but {checked}: the server had no WAL waiting to archive"
            return ReleaseGateResult(name, True, detail, state)
        detail = (
            f"WAL archiving is not keeping up: {seen} (limit {limit} s) and {checked}"
            + ("" if report is None or not report.passed else ", too long ago to vouch for an idle server")
            + f"; {WAL_TO_DO}"
        )
        return ReleaseGateResult(name, False, detail, state)
    if report is not None and not report.passed:
        checked += "; a segment was archived after it"
    return ReleaseGateResult(name, True, f"{seen} (limit {limit} s); {checked}", state)


def image_gate(resolve_digest: Callable[[], str | None], reference: str, digest: str) -> ReleaseGateResult:
    """The image's digest exists in the registry (HEAD of the manifest by digest)."""
    name = "image digest in the registry"
    try:
        found = resolve_digest()
    except Exception as exc:
        detail = f"could not ask the registry about {reference}: {type(exc).__name__}: {exc}"
        return ReleaseGateResult(name, False, detail)
    if found is None:
        return ReleaseGateResult(name, False, f"{reference} is not in the registry")
    if found != digest:
        return ReleaseGateResult(name, False, f"{reference} resolves to {found}, not {digest}")
    return ReleaseGateResult(name, True, f"{reference} is in the registry")


def require(results: list[ReleaseGateResult]) -> None:
    failed = [result for result in results if not result.passed]
    if failed:
        raise ReleaseGateRefused(
            "release blocked by " + "; ".join(f"gate '{result.name}': {result.detail}" for result in failed)
        )
