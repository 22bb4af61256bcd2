"""The state of WAL archiving: what the server says (pg_stat_archiver) and what the object store holds.

The archive is healthy when the archiver's last attempt succeeded and the newest WAL segment in the object
store is younger than the limit, or nothing is waiting to be archived (an idle server writes no segments).
A gap in the segment sequence after a base backup is named: recovery through it is impossible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from hotpot_orchestration.pitr.barman import BarmanCloud
from hotpot_orchestration.platform.pg import PgTarget

# wals/<timeline+log>/<segment>[.gz|...]: barman-cloud's layout of archived segments.
_SEGMENT = re.compile(r"wals/[0-9A-F]{16}/(?P<segment>[0-9A-F]{24})(?:\.[a-z0-9]+)?$")
# Timeline history files (a promotion's), which barman-cloud stores beside the segment directories.
_HISTORY = re.compile(r"wals/(?:[0-9A-F]{16}/)?(?P<history>[0-9A-F]{8}\.history)(?:\.[a-z0-9]+)?$")
# How often the wal_archive check is evaluated (wal_archive_check_schedule: every five minutes).
CHECK_INTERVAL_SECONDS = 300


@dataclass(frozen=True)
class ArchiverStatus:
    archive_mode: str
    last_archived_wal: str | None
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None
    current_wal: str

    @property
    def failing(self) -> bool:
        """The archiver's latest attempt failed (a failure newer than the last success)."""
        if self.last_failed_time is None:
            return False
        return self.last_archived_time is None or self.last_failed_time > self.last_archived_time

    @property
    def waiting(self) -> bool:
        """WAL is waiting to be archived: the server writes into a segment after the last archived one."""
        return self.last_archived_wal is None or self.current_wal[8:] > self.last_archived_wal[8:]


def archiver_status(target: PgTarget) -> ArchiverStatus:
    with target.connect(connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT last_archived_wal, last_archived_time, failed_count, last_failed_wal, last_failed_time,"
            " pg_walfile_name(pg_current_wal_lsn()), current_setting('archive_mode')"
            " FROM pg_stat_archiver"
        ).fetchone()
    return ArchiverStatus(
        last_archived_wal=row[0],
        last_archived_time=row[1],
        failed_count=row[2],
        last_failed_wal=row[3],
        last_failed_time=row[4],
        current_wal=row[5],
        archive_mode=row[6],
    )


@dataclass(frozen=True)
class ArchivedWal:
    segments: dict[str, datetime]  # segment name -> when the object was stored
    keys: dict[str, str] = field(default_factory=dict)  # segment name -> object key
    history: dict[str, str] = field(default_factory=dict)  # timeline history file name -> object key

    @property
    def newest(self) -> tuple[str, datetime] | None:
        if not self.segments:
            return None
        name = max(self.segments)
        return name, self.segments[name]


def archived_wal(client, barman: BarmanCloud) -> ArchivedWal:
    """Every WAL segment and timeline history file of the server in the object store (backup-label files
    left out)."""
    segments, keys, history = {}, {}, {}
    prefix = barman.server_prefix + "wals/"
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=barman.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if match := _SEGMENT.search(item["Key"]):
                segments[match["segment"]] = item["LastModified"]
                keys[match["segment"]] = item["Key"]
            elif match := _HISTORY.search(item["Key"]):
                history[match["history"]] = item["Key"]
    return ArchivedWal(segments, keys, history)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    description: str
    age_seconds: float | None


def judge(status: ArchiverStatus, archived: ArchivedWal, *, max_age_seconds: int, now: datetime) -> Verdict:
    """The wal_archive check's verdict: failing archiver, or stale archive with WAL waiting."""
    newest = archived.newest
    age = (now - newest[1]).total_seconds() if newest else None
    if status.archive_mode == "off":
        return Verdict(False, "the server runs with archive_mode=off: no WAL is archived", age)
    if status.failing:
        return Verdict(
            False,
            f"archive_command is failing: {status.last_failed_wal} failed at "
            f"{status.last_failed_time:%Y-%m-%d %H:%M:%S %Z} ({status.failed_count} failures since the "
            f"statistics were reset), after the last success {status.last_archived_wal or '(none)'}",
            age,
        )
    if newest is None:
        if status.waiting:
            return Verdict(False, "no WAL segment in the object store yet, and WAL is waiting", age)
        return Verdict(True, "no WAL segment written yet", age)
    if age > max_age_seconds and status.waiting:
        return Verdict(
            False,
            f"the newest archived WAL segment {newest[0]} is {age:.0f} s old (limit {max_age_seconds} s) "
            f"while the server writes {status.current_wal}",
            age,
        )
    return Verdict(True, f"newest archived WAL segment {newest[0]}, {age:.0f} s old", age)


@dataclass(frozen=True)
class CheckReport:
    """The latest evaluation of the wal_archive check as recorded in the Dagster instance: what readers
    without the database's credentials (the release gate, pipeline health) know of pg_stat_archiver."""

    passed: bool
    description: str
    evaluated_at: datetime
    archive_age_seconds: float | None  # the newest archived segment's age then; None: unknown
    newest_archived_wal: str = ""
    last_failed_wal: str = ""
    failed_count: int | None = None


def evaluate(
    target: PgTarget, client, barman: BarmanCloud, *, max_age_seconds: int, now: datetime
) -> tuple[Verdict, ArchiverStatus, ArchivedWal | None]:
    """The wal_archive check: the server's archiver and the store's listing; an unreachable store fails
    the check (naming it) instead of erroring it, since that is what a failing archive looks like."""
    status = archiver_status(target)
    try:
        archived = archived_wal(client, barman)
    except Exception as error:  # botocore's connection and client errors alike
        reason = f"{barman.destination} cannot be listed ({type(error).__name__}: {error})"
        if status.failing or status.archive_mode == "off":
            detail = judge(status, ArchivedWal({}), max_age_seconds=max_age_seconds, now=now).description
        else:
            detail = f"the archiver's last success: {status.last_archived_wal or '(none)'}"
        return Verdict(False, f"{reason}; {detail}", None), status, None
    return judge(status, archived, max_age_seconds=max_age_seconds, now=now), status, archived


def next_segment(segment: str, segment_bytes: int) -> str:
    """The WAL segment after `segment` (timeline, log, seg) for segments of `segment_bytes`."""
    per_log = 0x100000000 // segment_bytes
    timeline, log, seg = int(segment[:8], 16), int(segment[8:16], 16), int(segment[16:], 16)
    number = log * per_log + seg + 1
    return f"{timeline:08X}{number // per_log:08X}{number % per_log:08X}"


def segment_of(lsn: int, timeline: str, segment_bytes: int) -> str:
    """The name of the WAL segment of `timeline` (8 hex digits) that holds the position `lsn`."""
    per_log = 0x100000000 // segment_bytes
    number = lsn // segment_bytes
    return f"{timeline}{number // per_log:08X}{number % per_log:08X}"


def first_gap(archived: ArchivedWal, begin_wal: str, segment_bytes: int) -> str | None:
    """The first segment missing between `begin_wal` and the newest archived one of its timeline."""
    timeline = begin_wal[:8]
    newest = max((name for name in archived.segments if name[:8] == timeline), default=None)
    if newest is None or newest < begin_wal:
        return begin_wal
    segment = begin_wal
    while segment <= newest:
        if segment not in archived.segments:
            return segment
        segment = next_segment(segment, segment_bytes)
    return None
