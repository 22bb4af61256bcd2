"""Scratch databases that restores write into, and the cleanup of ones a crashed run left behind.

A scratch database is recognised by two marks, never by one: its name starts with a scratch prefix
(`hotpot_drill_` or `hotpot_restore_`, followed by a UTC timestamp and random hex, so two runs never pick the
same name and no real database is named like that by accident), and `COMMENT ON DATABASE` carries
`SCRATCH_MARKER`. Only a database with both marks is ever dropped by the cleanup.

Liveness: while a run uses a scratch database it keeps a session open whose application_name is
`hotpot-scratch:<name>`. PostgreSQL closes that session when the run's process dies, however it dies
(SIGKILL, OOM, a lost pod), so "no such session in pg_stat_activity" means "its owner is gone" on every
database of the server, with no age guess that a slow restore could outlive.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime

from psycopg import errors as pg_errors
from psycopg import sql

from hotpot_orchestration.platform.pg import PgTarget
from hotpot_orchestration.restores.errors import RestoreSetupError

_log = logging.getLogger(__name__)

PREFIXES = {"drill": "hotpot_drill_", "restore": "hotpot_restore_"}
SCRATCH_MARKER = "hotpot-orchestration scratch database"
HOLDER_PREFIX = "hotpot-scratch:"
TEMPLATE_DATABASES = ("template0", "template1")


def scratch_name(kind: str) -> str:
    """`hotpot_drill_20260105_040000_9f3a1c2b`: lowercase so it never needs quoting in psql by hand."""
    return f"{PREFIXES[kind]}{datetime.now(UTC):%Y%m%d_%H%M%S}_{secrets.token_hex(4)}"


def is_scratch_name(name: str) -> bool:
    return name.startswith(tuple(PREFIXES.values()))


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
    ):
        self.name = scratch_name(kind)
        self.log = log
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
                # WITH (FORCE): a pg_restore worker that outlived an interrupted run must not keep it alive.
                self._holder.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
                )
        except Exception as error:
            # The restore's own outcome stands; the next run finds the database abandoned and drops it.
            self.log(f"could not drop scratch database {self.name} ({error}); the next restore run will")
        finally:
            self._close()

    def keep_as(self, new_name: str, comment: str, *, replacing: bool, owner: str | None = None) -> None:
        """Turn the scratch database into the real `new_name`, dropping the existing one first when
        `replacing`. The result is stripped of the scratch marker, so no cleanup will ever touch it."""
        name = sql.Identifier(new_name)
        if replacing:
            # FORCE ends the sessions still connected to it: replacing was explicitly confirmed.
            self._holder.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        self._holder.execute(
            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(self.name), name)
        )
        self.kept_as = new_name
        self._holder.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(name, sql.Literal(comment)))
        if owner:
            self._holder.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(name, sql.Identifier(owner)))

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


def drop_abandoned(server: PgTarget, log: Callable[[str], None] = _log.info) -> list[str]:
    """Drop every scratch database whose run is gone; returns their names."""
    dropped = []
    with maintenance_target(server).connect() as conn:
        for name in abandoned_scratch_databases(conn):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            log(f"dropped scratch database {name} left behind by a run that ended without cleaning up")
            dropped.append(name)
    return dropped
