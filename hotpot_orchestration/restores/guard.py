"""restore_database_job's rules: the targets it refuses, and how a verified restore takes a target's place.

The backup is restored into a scratch database and verified against its manifest first; only then is the
target dropped (if it exists) and the scratch database renamed to it. A restore that fails at any point
leaves the target exactly as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from hotpot_orchestration.platform.pg import PgTarget
from hotpot_orchestration.restores.errors import RestoreRefused
from hotpot_orchestration.restores.scratch import (
    TEMPLATE_DATABASES,
    ScratchDatabase,
    is_scratch_name,
    maintenance_target,
)

# Everything a database holds beyond what CREATE DATABASE ... TEMPLATE template0 gives it.
_CONTENTS = """
SELECT
  (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
      AND n.nspname NOT LIKE 'pg\\_temp\\_%'),
  (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')),
  (SELECT count(*) FROM pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'public') AND nspname NOT LIKE 'pg\\_%'),
  (SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql'),
  (SELECT count(*) FROM pg_largeobject_metadata)
"""
_CONTENT_NAMES = ("relations", "functions", "schemas", "extensions", "large objects")


@dataclass(frozen=True)
class RestoreRequest:
    target_database: str
    partition: str | None = None
    backup_key: str | None = None
    replace: bool = False
    confirm: str = ""


def choice_refusal(request: RestoreRequest) -> str | None:
    """A real restore names its backup: exactly one of partition and backup_key."""
    if bool(request.partition) == bool(request.backup_key):
        given = "both" if request.partition else "neither"
        return (
            f"name the backup to restore ({given} given): pass partition: 'YYYY-MM-DD' (that day's newest "
            "verified backup) or backup_key: '<dump key in the bucket>', not both"
        )
    return None


@dataclass(frozen=True)
class TargetState:
    exists: bool
    contents: dict[str, int]
    owner: str | None = None

    @property
    def empty(self) -> bool:
        return not any(self.contents.values())

    def describe(self) -> str:
        return ", ".join(f"{count} {what}" for what, count in self.contents.items() if count) or "nothing"


def inspect_target(server: PgTarget, name: str) -> TargetState:
    with maintenance_target(server, avoid=(name,)).connect() as conn:
        row = conn.execute(
            "SELECT pg_get_userbyid(datdba), datallowconn FROM pg_database WHERE datname = %s", [name]
        ).fetchone()
    if row is None:
        return TargetState(exists=False, contents={})
    owner, allows_connections = row
    if not allows_connections:
        # Cannot look inside (template0-like); treat it as holding something so it needs the confirmation.
        return TargetState(
            exists=True, contents={"unknown objects (connections not allowed)": 1}, owner=owner
        )
    with server.with_dbname(name).connect() as conn:
        counts = conn.execute(_CONTENTS).fetchone()
    return TargetState(exists=True, contents=dict(zip(_CONTENT_NAMES, counts, strict=True)), owner=owner)


def refusal(request: RestoreRequest, state: TargetState, *, protected_database: str) -> str | None:
    """Why the job must not restore into the target as requested, or None.

    `protected_database` is HOTPOT_DATABASE_URL's database: the job touches it only with its name repeated in
    `confirm`, even when it is empty or does not exist.
    """
    name = request.target_database
    again = f"confirm: {name!r}"
    if name in TEMPLATE_DATABASES or is_scratch_name(name):
        return (
            f"{name!r} is a template or scratch database, not a restore target: pass another name as "
            "target_database"
        )
    if name == protected_database and request.confirm != name:
        needs = f"replace: true and {again}" if state.exists and not state.empty else again
        return (
            f"{name!r} is the database HOTPOT_DATABASE_URL points at; restore_database_job touches it only "
            f"when told twice: pass {needs}"
        )
    if state.exists and not state.empty:
        if not request.replace:
            return (
                f"database {name!r} is not empty ({state.describe()}); to drop it and put the backup in its "
                f"place pass replace: true and {again}"
            )
        if request.confirm != name:
            got = f"got {request.confirm!r}" if request.confirm else "got nothing"
            return (
                f"replace: true needs the target database's name again as confirmation: pass {again} ({got})"
            )
    return None


def check(request: RestoreRequest, server: PgTarget, *, protected_database: str) -> TargetState:
    """The target's state, or RestoreRefused."""
    reason = choice_refusal(request)
    if reason:
        raise RestoreRefused(reason)
    state = inspect_target(server, request.target_database)
    reason = refusal(request, state, protected_database=protected_database)
    if reason:
        raise RestoreRefused(reason)
    return state


def put_in_place(
    scratch: ScratchDatabase,
    request: RestoreRequest,
    server: PgTarget,
    *,
    protected_database: str,
    provenance: str,
) -> TargetState:
    """Replace the target with the verified scratch database, after checking the rules again: the target
    may have changed during a long restore. The old target's owner is kept."""
    state = check(request, server, protected_database=protected_database)
    restored_at = datetime.now(UTC).isoformat(timespec="seconds")
    scratch.keep_as(
        request.target_database,
        f"restored {restored_at} from {provenance} by restore_database_job",
        replacing=state.exists,
        owner=state.owner if state.owner != server.user else None,
    )
    return state
