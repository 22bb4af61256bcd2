"""restore_database_job's rules: the targets it refuses, and how a verified restore takes a target's place.

The backup is restored into a scratch database and verified against its manifest first; only then is the
target dropped (if it exists) and the scratch database renamed to it. A restore that fails at any point
leaves the target exactly as it was.

Never a target: the server's own databases (`postgres`, the templates) and the drill server's database.
Sessions connected to the target are ended only when its name is repeated in `confirm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from hotpot_orchestration.platform.pg import PgTarget
from hotpot_orchestration.restores.errors import RestoreRefused
from hotpot_orchestration.restores.scratch import (
    MAINTENANCE_DATABASES,
    ScratchDatabase,
    is_scratch_name,
    maintenance_target,
    sessions_on,
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
    # Point-in-time mode: a moment of the WAL archive instead of a logical backup.
    target_time: str | None = None
    restore_point: str | None = None


def choice_refusal(request: RestoreRequest) -> str | None:
    """A real restore names what it restores: exactly one of partition, backup_key, target_time and
    restore_point."""
    given = [
        name for name in ("partition", "backup_key", "target_time", "restore_point") if getattr(request, name)
    ]
    if len(given) != 1:
        named = f"{' and '.join(given)} given" if given else "neither given"
        return (
            f"name the backup to restore ({'both given' if len(given) == 2 else named}): pass partition: "
            "'YYYY-MM-DD' (that day's newest verified backup) or backup_key: '<dump key in the bucket>', or "
            "for a point in time target_time: '<ISO 8601 time with offset>' or restore_point: '<name>'; "
            "only one of them"
        )
    return None


@dataclass(frozen=True)
class TargetState:
    exists: bool
    contents: dict[str, int]
    owner: str | None = None
    # The sessions connected to it, described (pid, user, application, state, query start).
    sessions: tuple[str, ...] = ()

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
        sessions = tuple(sessions_on(conn, name))
    if row is None:
        return TargetState(exists=False, contents={})
    owner, allows_connections = row
    if not allows_connections:
        # Cannot look inside (template0-like); treat it as holding something so it needs the confirmation.
        return TargetState(
            exists=True,
            contents={"unknown objects (connections not allowed)": 1},
            owner=owner,
            sessions=sessions,
        )
    with server.with_dbname(name).connect() as conn:
        counts = conn.execute(_CONTENTS).fetchone()
    contents = dict(zip(_CONTENT_NAMES, counts, strict=True))
    return TargetState(exists=True, contents=contents, owner=owner, sessions=sessions)


def refusal(
    request: RestoreRequest, state: TargetState, *, protected_database: str, drill_database: str | None = None
) -> str | None:
    """Why the job must not restore into the target as requested, or None.

    `protected_database` is HOTPOT_DATABASE_URL's database: the job touches it only with its name repeated in
    `confirm`, even when it is empty or does not exist. `drill_database` (HOTPOT_DRILL_DATABASE_URL's) is
    never a target, like the server's own databases.
    """
    name = request.target_database
    again = f"confirm: {name!r}"
    if name in MAINTENANCE_DATABASES or (name == drill_database and name != protected_database):
        drill = name == drill_database
        what = "HOTPOT_DRILL_DATABASE_URL's database" if drill else "one of the server's own databases"
        return (
            f"{name!r} is {what}, which the server and its tools need: it is never a restore target, "
            "confirmed or not. Pass another name as target_database"
        )
    if is_scratch_name(name):
        return f"{name!r} is a scratch database, not a restore target: pass another name as target_database"
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
    if state.sessions and request.confirm != name:
        return (
            f"database {name!r} has {len(state.sessions)} connected session(s), which restoring into it "
            f"would end: {'; '.join(state.sessions)}. Close them, or pass {again} to end them"
        )
    return None


def check(
    request: RestoreRequest, server: PgTarget, *, protected_database: str, drill_database: str | None = None
) -> TargetState:
    """The target's state, or RestoreRefused."""
    reason = choice_refusal(request)
    if reason:
        raise RestoreRefused(reason)
    state = inspect_target(server, request.target_database)
    reason = refusal(request, state, protected_database=protected_database, drill_database=drill_database)
    if reason:
        raise RestoreRefused(reason)
    return state


def put_in_place(
    scratch: ScratchDatabase,
    request: RestoreRequest,
    server: PgTarget,
    *,
    protected_database: str,
    drill_database: str | None = None,
    provenance: str,
) -> TargetState:
    """Replace the target with the verified scratch database, after checking the rules again: the target
    may have changed during a long restore. The old target's owner is kept. Sessions that connected since
    the check are ended only with the confirmation; without it the drop is refused and names them."""
    state = check(request, server, protected_database=protected_database, drill_database=drill_database)
    restored_at = datetime.now(UTC).isoformat(timespec="seconds")
    scratch.keep_as(
        request.target_database,
        f"restored {restored_at} from {provenance} by restore_database_job",
        replacing=state.exists,
        end_sessions=request.confirm == request.target_database,
        owner=state.owner if state.owner != server.user else None,
    )
    return state
