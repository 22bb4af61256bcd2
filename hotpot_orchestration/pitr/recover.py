"""Recovering a scratch server to a chosen moment of the archive.

The base backup that ends before the moment, every WAL segment from its start on (a gap is named before
anything is downloaded), then a server that replays WAL and pauses at the target, read-only. The drill
(drill.py) and restore_database_job's point-in-time mode both start here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hotpot_orchestration.backups.catalog import list_backups
from hotpot_orchestration.pitr.archive import ArchivedWal, archived_wal, first_gap, segment_of
from hotpot_orchestration.pitr.barman import BarmanCloud, BarmanError
from hotpot_orchestration.pitr.scratch import DEFAULT_ROOT, ScratchError, ScratchServer
from hotpot_orchestration.platform.pg import PgTarget

DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024
# Restore point names PostgreSQL accepts (MAXFNAMELEN - 1).
MAX_RESTORE_POINT_LENGTH = 63


class RecoveryError(RuntimeError):
    """The archive cannot recover the asked moment, the recovery failed, or (in a drill) what it recovered
    differs from the logical backup."""


@dataclass(frozen=True)
class RecoveryTarget:
    """A moment of the archive: a named restore point, or a time (the last commit at or before it)."""

    time: datetime | None = None
    restore_point: str | None = None

    def __post_init__(self) -> None:
        if (self.time is None) == (self.restore_point is None):
            raise ValueError("a recovery target is either a time or a restore point name")
        if self.time is not None and self.time.tzinfo is None:
            raise ValueError("a recovery target time needs its UTC offset, such as 2026-03-01T18:30:00+00:00")
        if self.restore_point is not None and not 0 < len(self.restore_point) <= MAX_RESTORE_POINT_LENGTH:
            raise ValueError(f"a restore point name has 1 to {MAX_RESTORE_POINT_LENGTH} characters")

    @classmethod
    def parse(cls, *, target_time: str | None, restore_point: str | None) -> RecoveryTarget:
        """From an operator's input: an ISO 8601 time with its offset (Z for UTC) or a restore point name."""
        if target_time is not None and restore_point is not None:
            raise ValueError("give target_time or restore_point, not both")
        if target_time is None:
            return cls(restore_point=restore_point)
        try:
            moment = datetime.fromisoformat(target_time.strip())
        except ValueError:
            raise ValueError(
                f"target_time {target_time!r} is not an ISO 8601 time such as 2026-03-01T18:30:00Z"
            ) from None
        return cls(time=moment)

    def describe(self) -> str:
        if self.restore_point is not None:
            return f"restore point {self.restore_point!r}"
        return self.time.astimezone(UTC).isoformat(timespec="seconds")


def lsn_value(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def _done(barman: BarmanCloud, env: dict[str, str]) -> list[dict[str, Any]]:
    return [b for b in barman.list_backups(env) if b.get("status") == "DONE" and b.get("end_xlog")]


def base_backup_before(barman: BarmanCloud, lsn: str, env: dict[str, str]) -> dict[str, Any]:
    """The newest finished base backup that ends at or before `lsn` (recovery can start from it)."""
    usable = [b for b in _done(barman, env) if lsn_value(b["end_xlog"]) <= lsn_value(lsn)]
    if not usable:
        raise RecoveryError(
            f"no base backup in {barman.destination} (server {barman.server_name}) ends before {lsn}: run "
            "physical_backup before the moment to recover"
        )
    return usable[-1]


def base_backup_before_time(barman: BarmanCloud, moment: datetime, env: dict[str, str]) -> dict[str, Any]:
    """The newest finished base backup that ends at or before `moment`."""
    done = _done(barman, env)
    usable = [b for b in done if datetime.fromisoformat(b["end_time_iso"]) <= moment]
    if not usable:
        oldest = f"; the oldest ends at {done[0]['end_time_iso']}" if done else ""
        raise RecoveryError(
            f"no base backup in {barman.destination} (server {barman.server_name}) ends before "
            f"{moment.isoformat()}{oldest}: a moment before the oldest base backup cannot be recovered"
        )
    return usable[-1]


def restore_point_lsn(client, bucket: str, prefix: str, database: str, name: str) -> str:
    """The WAL position of a restore point the nightly logical backups recorded."""
    points = [b.manifest["restore_point"] for b in list_backups(client, bucket, prefix, database)]
    for point in points:
        if point and point["name"] == name:
            return point["lsn"]
    known = [point["name"] for point in points if point][-5:]
    raise RecoveryError(
        f"no logical backup of {database} under s3://{bucket}/{prefix} recorded the restore point {name!r}"
        + (f" (the newest: {', '.join(known)})" if known else "")
        + "; name one of those or give a target time"
    )


def complete_wal(
    client, barman: BarmanCloud, base: dict[str, Any], *, restore_point: tuple[str, str] | None = None
) -> ArchivedWal:
    """The archive's segments, once every one from `base`'s start on is known to be there, and, given a
    `restore_point` (name, WAL position), the segment holding it: it is written before it is archived."""
    archived = archived_wal(client, barman)
    where = f"s3://{barman.bucket}/{barman.server_prefix}wals/"
    segment_bytes = int(base.get("xlog_segment_size") or DEFAULT_SEGMENT_BYTES)
    gap = first_gap(archived, base["begin_wal"], segment_bytes)
    if gap is not None:
        raise RecoveryError(
            f"WAL segment {gap} is missing from {where}: base backup {base['backup_id']} cannot be recovered "
            "past it"
        )
    if restore_point is not None:
        name, lsn = restore_point
        holding = segment_of(lsn_value(lsn), base["begin_wal"][:8], segment_bytes)
        # Any timeline: a later one continues the same positions.
        if not any(segment[8:] >= holding[8:] for segment in archived.segments):
            newest = archived.newest[0] if archived.newest else "none"
            raise RecoveryError(
                f"restore point {name!r} at {lsn} is in WAL segment {holding}, which is not in {where} yet "
                f"(the newest there is {newest}): the server archives it once the segment is full or "
                "archive_timeout has passed; try again then"
            )
    return archived


def needed_wal(archived: ArchivedWal, begin_wal: str) -> dict[str, str]:
    """What recovery from a base backup starting at `begin_wal` may ask for: its timeline's segments from
    there on, and every timeline history file."""
    timeline = begin_wal[:8]
    segments = {s: key for s, key in archived.keys.items() if s[:8] == timeline and s >= begin_wal}
    return {**segments, **archived.history}


def restore_base(scratch: ScratchServer, client, base: dict[str, Any], archived: ArchivedWal) -> int:
    """The base backup into the scratch directory, the WAL it needs downloaded beside it; the number of
    files downloaded."""
    needed = needed_wal(archived, base["begin_wal"])
    try:
        # The WAL downloads beside the base backup's: each waits on S3 more than on a core.
        with ThreadPoolExecutor(1) as side:
            prefetch = side.submit(scratch.prefetch_wal, client, needed)
            scratch.restore(client, base["backup_id"])
            return prefetch.result()
    except (BarmanError, ScratchError) as error:
        raise RecoveryError(f"restoring base backup {base['backup_id']} failed: {error}") from None


@dataclass(frozen=True)
class Recovered:
    """A scratch server paused at the target, read-only."""

    scratch: ScratchServer
    base_backup_id: str
    begin_wal: str
    target: RecoveryTarget
    restore_seconds: float  # the base backup and its WAL downloaded and unpacked

    def database(self, dbname: str, user: str) -> PgTarget:
        return self.scratch.target(dbname, user)


@contextlib.contextmanager
def recovered(
    target: RecoveryTarget,
    *,
    barman: BarmanCloud,
    client,
    backup_bucket: str,
    backup_prefix: str,
    source: PgTarget,
    bin_dir: Path,
    env: dict[str, str],
    log: Callable[[str], None] = print,
    root: Path = DEFAULT_ROOT,
) -> Iterator[Recovered]:
    """A scratch server recovered to `target` and paused there; stopped and deleted on exit, whatever
    happens. `source`: the archived server (its database names the restore point's logical backups, its
    user is a role of the recovered cluster)."""
    lsn = None
    if target.time is not None:
        if target.time > datetime.now(UTC):
            raise RecoveryError(f"{target.describe()} is in the future: nothing is archived for it yet")
        base = base_backup_before_time(barman, target.time, env)
    else:
        lsn = restore_point_lsn(client, backup_bucket, backup_prefix, source.dbname, target.restore_point)
        base = base_backup_before(barman, lsn, env)
    point = (target.restore_point, lsn) if lsn else None
    archived = complete_wal(client, barman, base, restore_point=point)
    log(f"recovering base backup {base['backup_id']} ({base['begin_wal']}), then WAL to {target.describe()}")
    started = time.monotonic()
    with ScratchServer(bin_dir, barman, root=root, env=env, log=log) as scratch:
        segments = restore_base(scratch, client, base, archived)
        restored = time.monotonic() - started
        log(
            f"base backup and {segments} WAL segments restored in {restored:.1f} s; replaying WAL to "
            f"{target.describe()}"
        )
        try:
            scratch.configure(target_name=target.restore_point, target_time=target.time, pause_at_target=True)
            scratch.start()
            scratch.wait(source.user, promoted=False)
        except ScratchError as error:
            raise RecoveryError(
                f"recovering base backup {base['backup_id']} to {target.describe()} failed: {error}"
            ) from None
        log(f"paused at {target.describe()}")
        yield Recovered(scratch, base["backup_id"], base["begin_wal"], target, restored)
