"""Which backups to delete: older than the retention window, but never the last good ones.

Pure: the caller lists the backups (only those this project wrote, see `catalog.list_backups`) and deletes
what this returns. The newest `min_keep` verified backups are kept whatever their age, so a run of failed
or unverified nights can never leave the database with fewer good copies than that; backups that were
never verified do not count toward the guard, but are kept as long as they are inside the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from hotpot_orchestration.backups.catalog import Backup


@dataclass(frozen=True)
class RetentionPlan:
    delete: list[Backup]
    keep: list[Backup]
    # Past the window but kept because they are among the newest verified backups.
    guarded: list[Backup]


def plan_retention(
    backups: Sequence[Backup], *, now: datetime, retention_days: int, min_keep: int
) -> RetentionPlan:
    cutoff = now - timedelta(days=retention_days)
    verified = sorted((b for b in backups if b.verified), key=lambda b: b.created_at)
    protected = {b.dump_key for b in verified[max(len(verified) - min_keep, 0) :]}
    delete, keep, guarded = [], [], []
    for backup in sorted(backups, key=lambda b: b.created_at):
        if backup.created_at >= cutoff:
            keep.append(backup)
        elif backup.dump_key in protected:
            keep.append(backup)
            guarded.append(backup)
        else:
            delete.append(backup)
    return RetentionPlan(delete=delete, keep=keep, guarded=guarded)
