"""Is a release run's worker still alive? Release runs record who runs them, and a heartbeat.

A run whose process was killed (kill -9, OOM, a node lost) never reports failure: it stays STARTED, holding
the release queue's slot with the canary at its last weight. Dagster's run monitoring cannot check a local
run worker's health (the default run launcher does not support it), so release runs record, in the
instance's key-value store under `worker_key(run_id)` (not in run tags: rewriting a run's tags from a
heartbeat thread could race with a status change of the same run):

- `worker`: host, pid and the process's start time. On the same host, a pid that is gone (or reused by
  another process, which the start time tells apart) is a dead worker, known at once.
- `heartbeat`: a Unix time refreshed every few seconds. From another host (a Kubernetes run pod), a
  heartbeat older than `stale_after` is a dead worker.

Plain Python; the Dagster side stores the record and the sensor acts on the answer.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

HEARTBEAT_SECONDS = 5.0
# Several missed heartbeats, so a busy database or a GC pause is not taken for a death.
STALE_AFTER_SECONDS = 60.0


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its closing one.
    return stat[stat.rindex(")") + 2 :].split()[19]


def worker_key(run_id: str) -> str:
    return f"hotpot/release-worker/{run_id}"


def worker_record(pid: int | None = None, now: float | None = None) -> str:
    """The value stored under `worker_key`: this process and a fresh heartbeat."""
    pid = os.getpid() if pid is None else pid
    worker = f"{socket.gethostname()}:{pid}:{_start_time(pid)}"
    return json.dumps({"worker": worker, "heartbeat": time.time() if now is None else now})


def worker_dead(
    record: str | None, now: float | None = None, stale_after: float = STALE_AFTER_SECONDS
) -> str | None:
    """Why the run's worker is dead, or None while it is (or may be) alive (or has not recorded itself)."""
    if not record:
        return None
    now = time.time() if now is None else now
    record = json.loads(record)
    identity, heartbeat = record.get("worker"), record.get("heartbeat")
    if identity:
        host, pid, started = identity.rsplit(":", 2)
        if host == socket.gethostname():
            current = _start_time(int(pid))
            if current is None:
                return f"its worker process {pid} on {host} is gone"
            if current != started:
                return f"its worker process {pid} on {host} was replaced by another process"
            return None
    if heartbeat and now - float(heartbeat) > stale_after:
        return f"no heartbeat for {now - float(heartbeat):.0f}s (limit {stale_after:g}s)"
    return None
