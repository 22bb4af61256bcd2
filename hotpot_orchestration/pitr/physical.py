"""Base backups (barman-cloud-backup) and their retention (barman-cloud-backup-delete).

A base backup copies the data directory of the server HOTPOT_DATABASE_URL reaches, so it runs where that
directory is readable (the local stack; in production CloudNativePG takes them). Retention keeps every
backup needed to recover to any moment of the recovery window, and the WAL those backups need.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hotpot_orchestration.pitr.barman import BarmanCloud, run
from hotpot_orchestration.platform.pg import PgTarget
from hotpot_orchestration.platform.units import format_bytes, format_duration


@dataclass(frozen=True)
class BaseBackup:
    backup_id: str
    name: str
    info: dict[str, Any]  # barman-cloud-backup-show's description
    stored_bytes: int
    seconds: float

    @property
    def metadata(self) -> dict[str, Any]:
        """Bytes and seconds for the plots, each with its readable companion; None where barman said
        nothing."""
        cluster_bytes = self.info.get("cluster_size")
        return {
            "backup_id": self.backup_id,
            "backup_name": self.name,
            "stored_bytes": self.stored_bytes,
            "stored_size": format_bytes(self.stored_bytes),
            "cluster_bytes": cluster_bytes,
            "cluster_size": format_bytes(cluster_bytes) if isinstance(cluster_bytes, int) else None,
            "duration_seconds": round(self.seconds, 1),
            "duration": format_duration(self.seconds),
            "begin_wal": self.info.get("begin_wal"),
            "end_wal": self.info.get("end_wal"),
            "begin_lsn": self.info.get("begin_xlog"),
            "end_lsn": self.info.get("end_xlog"),
            "timeline": self.info.get("timeline"),
            "server_version": self.info.get("version"),
        }


def stored_bytes(client, barman: BarmanCloud, backup_id: str) -> int:
    prefix = f"{barman.server_prefix}base/{backup_id}/"
    total = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=barman.bucket, Prefix=prefix):
        total += sum(item["Size"] for item in page.get("Contents", []))
    return total


def take_base_backup(
    barman: BarmanCloud, target: PgTarget, client, *, label: str, env: dict[str, str] | None = None
) -> BaseBackup:
    """A base backup of `target`'s server, named `label` plus the time, and what barman recorded about it.
    `env` adds to this process's environment (the AWS chain); the connection's variables come on top."""
    name = f"{label}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    env = {**target.env(), **(env or {})}
    started = time.monotonic()
    run(barman.backup_argv(target, name=name), env=env)
    seconds = time.monotonic() - started
    backup = next((b for b in reversed(barman.list_backups(env)) if b.get("backup_name") == name), None)
    if backup is None:
        raise RuntimeError(
            f"barman-cloud-backup finished but {barman.destination} lists no backup named {name}"
        )
    return BaseBackup(
        backup_id=backup["backup_id"],
        name=name,
        info=backup,
        stored_bytes=stored_bytes(client, barman, backup["backup_id"]),
        seconds=seconds,
    )


def apply_retention(barman: BarmanCloud, recovery_window_days: int, env: dict[str, str]) -> dict[str, Any]:
    """barman-cloud-backup-delete with a recovery window: the backups before and after, by id."""
    before = [b["backup_id"] for b in barman.list_backups(env)]
    run(barman.delete_argv(recovery_window_days), env=env)
    after = [b["backup_id"] for b in barman.list_backups(env)]
    return {
        "policy": f"RECOVERY WINDOW OF {recovery_window_days} DAYS",
        "kept": after,
        "deleted": [backup_id for backup_id in before if backup_id not in after],
    }
