"""Scratch databases that restores write into, and the cleanup of ones a crashed run left behind.

A scratch database is recognised by two marks, never by one: its name starts with a scratch prefix
(`hotpot_drill_` or `hotpot_restore_`, followed by a UTC timestamp and random hex, so two runs never pick the
same name and no real database is named like that by accident), and `COMMENT ON DATABASE` carries
`SCRATCH_MARKER`. Only a database with both marks is ever dropped by the cleanup.

Liveness: while a run uses a scratch database it keeps a session open whose application_name is
`hotpot-scratch:<name>`. PostgreSQL closes that session when the run's process dies, however it dies
(SIGKILL, OOM, a lost pod), so "no such session in pg_stat_activity" means "its owner is gone" on every
database of the server, with no age guess that a slow restore could outlive.

Every DROP and RENAME of a database waits at most a lock timeout for another session's lock on it (a
forgotten transaction, a backup's long-running snapshot) and then fails naming who holds it, instead of
hanging the run.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from psycopg import errors as pg_errors
from psycopg import sql

from hotpot_orchestration.platform.pg import PgTarget
from hotpot_orchestration.restores.errors import (
    DEFAULT_LOCK_TIMEOUT_SECONDS,
    DatabaseLocked,
    RestoreRefused,
    RestoreSetupError,
)

_log = logging.getLogger(__name__)

PREFIXES = {"drill": "hotpot_drill_", "restore": "hotpot_restore_"}
SCRATCH_MARKER = "hotpot-orchestration scratch database"
HOLDER_PREFIX = "hotpot-scratch:"
# The server's own databases: never a restore target, never dropped.
MAINTENANCE_DATABASES = ("postgres", "template0", "template1")
_SESSIONS = """
SELECT pid, usename, application_name, state, query_start FROM pg_stat_activity
WHERE datname = %s AND pid <> pg_backend_pid() ORDER BY backend_start
"""
_LOCK_HOLDERS = """
SELECT DISTINCT a.pid, a.usename, a.application_name, a.state, a.query_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'object' AND l.granted AND l.pid <> pg_backend_pid()
  AND l.classid = 'pg_database'::regclass AND l.objid = (SELECT oid FROM pg_database WHERE datname = %s)
ORDER BY a.pid
"""


def scratch_name(kind: str) -> str:
    """`hotpot_drill_20260105_040000_9f3a1c2b`: lowercase so it never needs quoting in psql by hand."""
    return f"{PREFIXES[kind]}{datetime.now(UTC):%Y%m%d_%H%M%S}_{secrets.token_hex(4)}"


def is_scratch_name(name: str) -> bool:
    return name.startswith(tuple(PREFIXES.values()))


def _describe(rows) -> list[str]:
    return [
        f"pid {pid} (user {user}, application {application or '(none)'!r}, state {state or 'unknown'}, "
        f"query started {started.isoformat(timespec='seconds') if started else 'never'})"
        for pid, user, application, state, started in rows
    ]


def sessions_on(conn, name: str) -> list[str]:
    """The sessions connected to database `name` (other than `conn`'s), described for a message."""
    return _describe(conn.execute(_SESSIONS, [name]).fetchall())


@contextlib.contextmanager
def lock_timeout(conn, name: str, seconds: float) -> Iterator[None]:
    """Statements on `conn` wait at most `seconds` for a lock; DatabaseLocked names who held the lock on
    database `name` when one did not come in time."""
    conn.execute("SELECT set_config('lock_timeout', %s, false)", [f"{int(seconds * 1000)}ms"])
    try:
        yield
    except pg_errors.LockNotAvailable:
        holders = _describe(conn.execute(_LOCK_HOLDERS, [name]).fetchall())
        raise DatabaseLocked(
            f"waited {seconds:g} s for a lock on database {name!r}, held by "
            + ("; ".join(holders) or "a session that has since released it")
            + ": end that session or its transaction (SELECT pg_terminate_backend(PID)) and run again"
        ) from None
    finally:
        with contextlib.suppress(Exception):
            conn.execute("RESET lock_timeout")


def drop_database(conn, name: str, *, end_sessions: bool, seconds: float) -> None:
    """DROP DATABASE IF EXISTS `name` under a lock timeout. Connected sessions are ended (WITH (FORCE)) only
    when `end_sessions`; otherwise their presence refuses the drop and they are named."""
    force = sql.SQL(" WITH (FORCE)") if end_sessions else sql.SQL("")
    statement = sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(name), force)
    with lock_timeout(conn, name, seconds):
        try:
            conn.execute(statement)
        except pg_errors.ObjectInUse:
            sessions = "; ".join(sessions_on(conn, name)) or "sessions that have since gone"
            raise RestoreRefused(
                f"database {name!r} has connected sessions, which are ended only when confirmed: {sessions}. "
                f"Close them, or pass confirm: {name!r} to end them"
            ) from None


def maintenance_target(server: PgTarget, avoid: tuple[str, ...] = ()) -> PgTarget:
    """A database on `server` to run CREATE/DROP/ALTER DATABASE from: the URL's own unless it is one being
    dropped or renamed (a session cannot drop the database it is connected to)."""
    for dbname in (server.dbname, "postgres", "template1"):
        if dbname not in avoid:
            return server.with_dbname(dbname)
    raise AssertionError("unreachable: three distinct names, at most two avoided")


class ScratchDatabase:
    """A scratch database that exists while its holder session is open; see the module docstring."""

    def __init__(
        self,
        server: PgTarget,
        kind: str,
        avoid: tuple[str, ...] = (),
        log: Callable[[str], None] = _log.warning,
        lock_timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS,
    ):
        self.name = scratch_name(kind)
        self.log = log
        self.lock_timeout_seconds = lock_timeout_seconds
        self.target = server.with_dbname(self.name)
        self._maintenance = maintenance_target(server, avoid=(*avoid, self.name))
        self._holder = None
        self.kept_as: str | None = None

    def __enter__(self) -> ScratchDatabase:
        self._holder = self._maintenance.connect()
        try:
            # The holder announces itself before the database exists, so a concurrent cleanup never sees the
            # database without its live owner.
            self._holder.execute(
                "SELECT set_config('application_name', %s, false)", [HOLDER_PREFIX + self.name]
            )
            self._create()
        except BaseException:
            self.__exit__()  # a database created without its marker would never be cleaned up
            raise
        return self

    def _create(self) -> None:
        name = sql.Identifier(self.name)
        try:
            self._holder.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(name))
        except pg_errors.InsufficientPrivilege:
            server = self._maintenance
            raise RestoreSetupError(
                f"role {server.user} may not create databases on {server.host}:{server.port}: grant it "
                "CREATEDB, or restore with a role or on a server that may"
            ) from None
        created = datetime.now(UTC).isoformat(timespec="seconds")
        marker = f"{SCRATCH_MARKER}: created {created}, dropped when its run ends"
        self._holder.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(name, sql.Literal(marker)))

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self.kept_as is None:
                # end_sessions: a pg_restore worker that outlived an interrupted run must not keep it alive.
                drop_database(self._holder, self.name, end_sessions=True, seconds=self.lock_timeout_seconds)
        except Exception as error:
            # The restore's own outcome stands; the next run finds the database abandoned and drops it.
            self.log(f"could not drop scratch database {self.name} ({error}); the next restore run will")
        finally:
            self._close()

    def keep_as(
        self,
        new_name: str,
        comment: str,
        *,
        replacing: bool,
        end_sessions: bool,
        owner: str | None = None,
    ) -> None:
        """Turn the scratch database into the real `new_name`, dropping the existing one first when
        `replacing` (ending its sessions only when `end_sessions`: confirmed by name). The result is stripped
        of the scratch marker, so no cleanup will ever touch it."""
        name = sql.Identifier(new_name)
        if replacing:
            seconds = self.lock_timeout_seconds
            drop_database(self._holder, new_name, end_sessions=end_sessions, seconds=seconds)
        with lock_timeout(self._holder, self.name, self.lock_timeout_seconds):
            self._holder.execute(
                sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(self.name), name)
            )
        self.kept_as = new_name
        with lock_timeout(self._holder, new_name, self.lock_timeout_seconds):
            self._holder.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(name, sql.Literal(comment)))
            if owner:
                self._holder.execute(
                    sql.SQL("ALTER DATABASE {} OWNER TO {}").format(name, sql.Identifier(owner))
                )

    def _close(self) -> None:
        if self._holder is not None:
            with contextlib.suppress(Exception):
                self._holder.close()
            self._holder = None


def abandoned_scratch_databases(conn) -> list[str]:
    """Scratch databases (both marks) whose holder session is gone."""
    patterns = [prefix.replace("_", r"\_") + "%" for prefix in PREFIXES.values()]
    rows = conn.execute(
        """
        SELECT d.datname
        FROM pg_database d
        WHERE d.datname LIKE ANY (%s)
          AND shobj_description(d.oid, 'pg_database') LIKE %s
          AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.application_name = %s || d.datname)
        ORDER BY d.datname
        """,
        [patterns, SCRATCH_MARKER.replace("_", r"\_") + "%", HOLDER_PREFIX],
    ).fetchall()
    return [name for (name,) in rows]


def drop_abandoned(
    server: PgTarget,
    log: Callable[[str], None] = _log.info,
    lock_timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS,
) -> list[str]:
    """Drop every scratch database whose run is gone; returns their names. One that stays locked is left
    for the next run, with a warning naming who holds it: a leftover never stops a restore."""
    dropped = []
    with maintenance_target(server).connect() as conn:
        for name in abandoned_scratch_databases(conn):
            try:
                drop_database(conn, name, end_sessions=True, seconds=lock_timeout_seconds)
            except DatabaseLocked as locked:
                log(f"could not drop scratch database {name} left behind by an ended run: {locked}")
                continue
            log(f"dropped scratch database {name} left behind by a run that ended without cleaning up")
            dropped.append(name)
    return dropped
