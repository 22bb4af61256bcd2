"""Pipeline health in Prometheus text format, without Dagster.

Written as a node_exporter textfile (atomically, so a scrape never reads half a file); the alert rules in
deploy/prometheus/pipeline-alerts.yml (BackupTooOld, RestoreDrillFailing, ReleaseFailed, WalArchiveLagging)
read these series. Unknown values: a timestamp is 0, any other value -1.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

RELEASE_STATES = ("none", "running", "succeeded", "failed")


@dataclass(frozen=True)
class PipelineHealth:
    last_backup_at: float | None  # unix seconds of the newest postgres_backup materialization
    last_passing_drill_at: float | None  # unix seconds of the newest successful restore_drill
    last_drill_passed: bool | None  # outcome of the newest restore_drill_job run; None if never run
    release_state: str  # one of RELEASE_STATES, from the newest release run
    release_job: str | None = None
    # From the wal_archive check's latest evaluation: the newest archived WAL segment's age then (None when
    # the check could not tell), when that was, and whether it passed (None: never evaluated).
    wal_archive_age_seconds: float | None = None
    wal_archive_checked_at: float | None = None
    wal_archive_passed: bool | None = None
    # From pitr_drill's newest materialization: when, its RTO (to the restore point) and RPO.
    last_pitr_drill_at: float | None = None
    pitr_drill_rto_seconds: float | None = None
    pitr_drill_rpo_seconds: float | None = None


def _gauge(name: str, help_text: str, samples: list[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    lines += [f"{name}{labels} {_number(value)}" for labels, value in samples]
    return lines


def _number(value: float) -> str:
    """Every digit: `:g` kept six, which put a Unix time up to 5000 s off (1.79629e+09) and fed the age
    alerts a wrong age."""
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def _or_unknown(value: float | None) -> float:
    return -1 if value is None else value


def render(health: PipelineHealth) -> str:
    # A missing timestamp is exported as 0 so "time() - x" alerts fire instead of the series vanishing.
    lines = _gauge(
        "hotpot_backup_last_success_timestamp_seconds",
        "Unix time of the newest successful postgres_backup.",
        [("", health.last_backup_at or 0)],
    )
    lines += _gauge(
        "hotpot_restore_drill_last_success_timestamp_seconds",
        "Unix time of the newest passing restore_drill.",
        [("", health.last_passing_drill_at or 0)],
    )
    lines += _gauge(
        "hotpot_restore_drill_last_passed",
        "1 if the newest restore drill passed, 0 if it failed, -1 if no drill ran yet.",
        [("", -1 if health.last_drill_passed is None else int(health.last_drill_passed))],
    )
    job = health.release_job or ""
    lines += _gauge(
        "hotpot_release_state",
        "1 for the state of the newest release run (canary or blue-green), 0 for the others.",
        [
            (f'{{state="{state}",job="{job}"}}', int(state == health.release_state))
            for state in RELEASE_STATES
        ],
    )
    lines += _gauge(
        "hotpot_wal_archive_age_seconds",
        "Age of the newest archived WAL segment when the wal_archive check last looked; -1 if unknown.",
        [("", _or_unknown(health.wal_archive_age_seconds))],
    )
    lines += _gauge(
        "hotpot_wal_archive_check_timestamp_seconds",
        "Unix time of the latest wal_archive check evaluation.",
        [("", health.wal_archive_checked_at or 0)],
    )
    lines += _gauge(
        "hotpot_wal_archive_check_passed",
        "1 if the latest wal_archive check passed, 0 if it failed, -1 if it was never evaluated.",
        [("", -1 if health.wal_archive_passed is None else int(health.wal_archive_passed))],
    )
    lines += _gauge(
        "hotpot_pitr_drill_last_success_timestamp_seconds",
        "Unix time of the newest successful pitr_drill.",
        [("", health.last_pitr_drill_at or 0)],
    )
    lines += _gauge(
        "hotpot_pitr_drill_rto_seconds",
        "RTO of the newest pitr_drill: seconds until the recovered server was open; -1 if unknown.",
        [("", _or_unknown(health.pitr_drill_rto_seconds))],
    )
    lines += _gauge(
        "hotpot_pitr_drill_rpo_seconds",
        "RPO of the newest pitr_drill: seconds of commits the archive could not bring back; -1 if unknown.",
        [("", _or_unknown(health.pitr_drill_rpo_seconds))],
    )
    return "\n".join(lines) + "\n"


def write_textfile(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
