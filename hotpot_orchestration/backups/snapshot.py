"""One consistent view of the database for the dump and its manifest.

A REPEATABLE READ transaction exports its snapshot (`pg_export_snapshot()`); pg_dump is started with
`--snapshot=<id>` while that transaction stays open, so the dump and the row counts taken here describe
the same instant, however much the database changes meanwhile. The counts can then run while pg_dump
streams (on their own connection), instead of before it.
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg import sql
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from hotpot_orchestration.backups.errors import database_error
from hotpot_orchestration.platform.pg import PgTarget

# Tables and sequences whose data pg_dump writes: everything outside the system schemas that is not part
# of an extension, plus an extension's configuration tables (pg_extension_config_dump), whose rows pg_dump
# dumps filtered by the extension's condition. Temporary relations of other sessions are not dumped.
_RELATIONS = """
SELECT n.nspname, c.relname, c.relkind::text, config.condition, c.oid
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN LATERAL (
    SELECT coalesce(e.extcondition[array_position(e.extconfig, c.oid)], '') AS condition
    FROM pg_extension e
    WHERE c.oid = ANY (e.extconfig)
) config ON true
WHERE c.relkind IN ('r', 'S')
  AND c.relpersistence <> 't'
  AND n.nspname <> 'information_schema'
  AND n.nspname NOT LIKE 'pg\\_%'
  AND (
      config.condition IS NOT NULL
      OR NOT EXISTS (
          SELECT 1 FROM pg_depend d
          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
      )
  )
ORDER BY n.nspname, c.relname
"""


@dataclass(frozen=True)
class Inventory:
    """What the snapshot holds, in the manifest's shapes."""

    tables: list[dict[str, Any]]
    sequences: list[dict[str, Any]]
    extensions: list[dict[str, Any]]
    large_objects: int
    # The dumped tables' data on disk (pg_table_size: heap + TOAST, no indexes): what the dump holds.
    table_data_bytes: int = 0

    @property
    def rows(self) -> int:
        return sum(table["rows"] for table in self.tables)


def read_inventory(conn) -> Inventory:
    """What `conn`'s snapshot holds: exact row counts of every table pg_dump dumps, sequence states,
    extensions, large objects and the tables' data size."""
    tables, sequences, table_data_bytes = [], [], 0
    for schema, name, kind, condition, oid in conn.execute(_RELATIONS).fetchall():
        relation = sql.Identifier(schema, name)
        if kind == "S":
            last_value, is_called = conn.execute(
                sql.SQL("SELECT last_value, is_called FROM {}").format(relation)
            ).fetchone()
            sequences.append(
                {"schema": schema, "name": name, "last_value": last_value, "is_called": is_called}
            )
            continue
        # ONLY: pg_dump copies each inheritance child on its own; `condition` is the extension's own
        # filter, text pg_dump runs verbatim too.
        count = sql.SQL("SELECT count(*) FROM ONLY {} ").format(relation) + sql.SQL(condition or "")
        tables.append({"schema": schema, "name": name, "rows": conn.execute(count).fetchone()[0]})
        # The data the dump holds: heap and TOAST (pg_table_size), no indexes. After the count, which
        # holds the table's lock until the snapshot ends: the size waits for no other lock.
        size = conn.execute("SELECT pg_table_size(%s::oid)", (oid,)).fetchone()[0]
        table_data_bytes += size or 0
    extensions = [
        {"name": name, "version": version}
        for name, version in conn.execute("SELECT extname, extversion FROM pg_extension ORDER BY 1")
    ]
    large_objects = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()[0]
    return Inventory(tables, sequences, extensions, large_objects, table_data_bytes)


def _transient(error: BaseException) -> bool:
    return getattr(error, "transient", False)


class ExportedSnapshot:
    """Context manager holding the exporting transaction open; its attributes describe the server."""

    def __init__(self, target: PgTarget, *, url_variable: str, connect_attempts: int = 5):
        self.target = target
        self.url_variable = url_variable
        self.connect_attempts = connect_attempts
        self._conn = None
        self._lock = threading.Lock()
        self.snapshot_id = ""
        self.created_at: datetime | None = None
        self.server_version = ""
        self.server_version_num = 0
        self.database_bytes = 0
        # The named WAL position of this snapshot ({"name", "lsn"}), for point-in-time drills; None when the
        # server cannot make one (wal_level=minimal, or the role may not run pg_create_restore_point).
        self.restore_point: dict[str, str] | None = None

    def __enter__(self) -> ExportedSnapshot:
        import psycopg

        @retry(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(self.connect_attempts),
            wait=wait_exponential(multiplier=1, max=30),
            reraise=True,
        )
        def connect():
            try:
                return self.target.connect(autocommit=True)
            except psycopg.OperationalError as error:
                raise database_error(str(error), self.target, self.url_variable) from None

        self._conn = connect()
        # The transaction idles while pg_dump works; a server-wide timeout must not end it under pg_dump.
        self._conn.execute("SET idle_in_transaction_session_timeout = 0")
        self._conn.execute("SET statement_timeout = 0")
        # The counts run beside pg_dump: parallel scan workers would take the cores its COPYs need.
        self._conn.execute("SET max_parallel_workers_per_gather = 0")
        self._conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        row = self._conn.execute(
            "SELECT pg_export_snapshot(), statement_timestamp(), current_setting('server_version'),"
            " current_setting('server_version_num')::int, pg_database_size(current_database())"
        ).fetchone()
        self.snapshot_id, self.created_at, version, self.server_version_num, self.database_bytes = row
        # Distribution builds append their own text ("18.1 (Debian 18.1-1.pgdg13+1)").
        self.server_version = version.split()[0]
        self._create_restore_point(psycopg)
        return self

    def _create_restore_point(self, psycopg) -> None:
        """Mark the snapshot's instant in the WAL, right after exporting it: recovery to this name replays
        exactly the commits the snapshot sees (barring one landing in the microseconds between the two)."""
        name = f"hotpot-backup-{self.created_at.astimezone(UTC):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(4)}"
        row = self._tolerated(
            psycopg,
            "no restore point for point-in-time drills",
            "SELECT pg_create_restore_point(%s)::text",
            (name,),
        )
        if row is None:
            return
        self.restore_point = {"name": name, "lsn": row[0]}
        # The point reaches the archive with its segment: switch now rather than at archive_timeout.
        self._tolerated(
            psycopg, "the restore point reaches the archive at archive_timeout", "SELECT pg_switch_wal()"
        )

    def _tolerated(self, psycopg, otherwise: str, sql: str, params: tuple = ()) -> tuple | None:
        """`sql`'s first row, or None and the warning `otherwise` when the server or the role refuses it. In a
        savepoint: a refusal must not end the exported snapshot's transaction."""
        self._conn.execute("SAVEPOINT tolerated")
        try:
            row = self._conn.execute(sql, params).fetchone()
        except psycopg.Error as error:
            self._conn.execute("ROLLBACK TO SAVEPOINT tolerated")
            logging.getLogger(__name__).warning(f"{otherwise}: {error}")
            return None
        self._conn.execute("RELEASE SAVEPOINT tolerated")
        return row

    def __exit__(self, *exc_info) -> None:
        self.release()

    def release(self) -> None:
        """Close the connection, ending the transaction and its snapshot; idempotent, from any thread."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()  # ends the read-only transaction; nothing to commit

    def cancel(self) -> None:
        """Stop a count running on another thread (thread-safe)."""
        conn = self._conn
        if conn is not None and not conn.closed:
            conn.cancel_safe()

    @property
    def server_major(self) -> int:
        return self.server_version_num // 10000

    def inventory(self) -> Inventory:
        """Exact row counts of every dumped table, sequence states, extensions, large objects and the
        tables' data size."""
        import psycopg

        try:
            return self._inventory()
        except psycopg.Error as error:
            raise database_error(f"reading the snapshot: {error}", self.target, self.url_variable) from None

    def _inventory(self) -> Inventory:
        return read_inventory(self._conn)
