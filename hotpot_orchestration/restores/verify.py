"""Compare a restored database with the manifest written when its backup was taken.

Every difference is one line naming the object, so a failed drill says exactly what did not come back.
"""

from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from psycopg import errors as pg_errors
from psycopg import sql

from hotpot_orchestration.platform.pg import PgTarget


@dataclass
class ContentCheck:
    differences: list[str] = field(default_factory=list)
    tables: int = 0
    rows: int = 0


def _qualified(entry: dict) -> str:
    return f"{entry['schema']}.{entry['name']}"


# Rows of an extension's configuration table that pg_dump dumps: those its extension's condition selects
# (the rest the extension's own script creates). The backup counted them the same way.
_CONFIG_CONDITIONS = """
SELECT n.nspname, c.relname, coalesce(e.extcondition[cfg.position], '')
FROM pg_extension e
CROSS JOIN LATERAL unnest(e.extconfig) WITH ORDINALITY AS cfg(oid, position)
JOIN pg_class c ON c.oid = cfg.oid
JOIN pg_namespace n ON n.oid = c.relnamespace
"""


def _count_rows(conn, table: dict, condition: str) -> int | None:
    """Exact row count, or None when the table does not exist. ONLY: each inheritance child and partition
    is a manifest table of its own."""
    query = sql.SQL("SELECT count(*) FROM ONLY {} ").format(sql.Identifier(table["schema"], table["name"]))
    try:
        return conn.execute(query + sql.SQL(condition)).fetchone()[0]
    except pg_errors.UndefinedTable:
        return None


def check_tables(target: PgTarget, tables: list[dict], *, jobs: int) -> ContentCheck:
    """Every manifest table exists with exactly its row count. `jobs` sessions count in parallel, each taking
    the largest table not yet counted, so one big table does not start last and set the pace."""
    with target.connect() as conn:
        conditions = {(schema, name): cond for schema, name, cond in conn.execute(_CONFIG_CONDITIONS)}
    pending: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in sorted(range(len(tables)), key=lambda i: tables[i]["rows"], reverse=True):
        pending.put(index)
    counts: dict[int, int | None] = {}

    def count_until_done() -> None:
        with target.connect() as conn:
            while True:
                try:
                    index = pending.get_nowait()
                except queue.Empty:
                    return
                table = tables[index]
                counts[index] = _count_rows(conn, table, conditions.get((table["schema"], table["name"]), ""))

    workers = max(1, min(jobs, len(tables)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for worker in [pool.submit(count_until_done) for _ in range(workers)]:
            worker.result()
    result = ContentCheck()
    for index, table in sorted(enumerate(tables), key=lambda pair: _qualified(pair[1])):
        name, restored = _qualified(table), counts[index]
        if restored is None:
            result.differences.append(f"table {name}: missing from the restored database")
        elif restored != table["rows"]:
            result.differences.append(
                f"table {name}: {restored} rows restored, the manifest says {table['rows']}"
            )
        else:
            result.tables += 1
            result.rows += restored
    return result


def check_catalog(conn, manifest: dict) -> list[str]:
    """Sequences with their values, extensions with their versions, and the number of large objects."""
    differences = []
    for seq in manifest.get("sequences", []):
        name = _qualified(seq)
        query = sql.SQL("SELECT last_value, is_called FROM {}").format(
            sql.Identifier(seq["schema"], seq["name"])
        )
        try:
            last_value, is_called = conn.execute(query).fetchone()
        except pg_errors.UndefinedTable:
            differences.append(f"sequence {name}: missing from the restored database")
            continue
        if (last_value, is_called) != (seq["last_value"], seq["is_called"]):
            differences.append(
                f"sequence {name}: last_value={last_value} is_called={is_called} restored, the manifest says "
                f"last_value={seq['last_value']} is_called={seq['is_called']}"
            )
    installed = dict(conn.execute("SELECT extname, extversion FROM pg_extension").fetchall())
    for extension in manifest.get("extensions", []):
        name, version = extension["name"], extension["version"]
        if name not in installed:
            differences.append(f"extension {name}: missing from the restored database")
        elif installed[name] != version:
            differences.append(
                f"extension {name}: version {installed[name]} restored, the manifest says {version}"
            )
    (large_objects,) = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
    if large_objects != manifest.get("large_objects", 0):
        differences.append(
            f"large objects: {large_objects} restored, the manifest says {manifest.get('large_objects', 0)}"
        )
    return differences
