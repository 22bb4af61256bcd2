"""A scratch PostgreSQL server recovered from the archive: restored, started, verified, removed.

Each scratch server lives in a directory of its own under `root` (data, socket, log), started on a free
loopback port as an unprivileged OS user (see runas) with only the local socket open to it (trust over a
socket in a directory only that user and root can enter). Whatever ends the drill, nothing stays behind:
- an exception or an interrupted step stops the server and deletes the directory (`close`);
- a killed drill process cannot clean up itself, so each scratch directory has a janitor, a small process
  in a session of its own that waits for the drill process to vanish, then kills the server and deletes
  the directory;
- a directory whose owner and janitor both died (a rebooted machine) is removed by the next drill
  (`remove_leftovers`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from hotpot_orchestration.pitr.barman import BarmanCloud
from hotpot_orchestration.pitr.runas import barman_bin_dir, can_execute, server_os_user
from hotpot_orchestration.pitr.unpack import UnpackError, unpack_base_backup
from hotpot_orchestration.platform.pg import PgTarget
from hotpot_orchestration.platform.proc import Child, spawn, start_watcher

DEFAULT_ROOT = Path(tempfile.gettempdir()) / "hotpot-pitr-scratch"
OWNER_FILE = "owner"
# A scratch server's fast shutdown that takes longer than this is finished with an immediate one.
STOP_GRACE_SECONDS = 30.0

# The janitor: argv = owner pid, owner start time, scratch directory. Polls twice a second; when the owner
# is gone (or is another process under a reused pid) it kills the postmaster and deletes the directory.
_JANITOR = r"""
import os, shutil, signal, sys, time
pid, started, directory = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def start_time(p):
    try:
        with open(f"/proc/{p}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None
while os.path.isdir(directory) and start_time(pid) == started:
    time.sleep(0.5)
try:
    with open(os.path.join(directory, "data", "postmaster.pid")) as f:
        os.kill(int(f.readline()), signal.SIGKILL)
except (OSError, ValueError):
    pass
time.sleep(0.5)
shutil.rmtree(directory, ignore_errors=True)
"""

_RESTORED = re.compile(r'restored log file "(?P<segment>[0-9A-F]{24})" from archive')


class ScratchError(RuntimeError):
    """The scratch server could not be restored, started or recovered."""


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat): tells a live owner from a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_alive(directory: Path) -> bool:
    try:
        pid, started = (directory / OWNER_FILE).read_text().split()
    except (OSError, ValueError):
        return False
    return process_start_time(int(pid)) == started


def _kill_postmaster(data: Path) -> None:
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if str(data).encode() in cmdline:  # the pid file's server, not another process under a reused pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remove_leftovers(root: Path = DEFAULT_ROOT) -> list[str]:
    """Stop and delete the scratch servers of drills that died with their janitors; what was removed."""
    removed = []
    if not root.is_dir():
        return removed
    for directory in sorted(root.iterdir()):
        if not directory.is_dir() or _owner_alive(directory):
            continue
        _kill_postmaster(directory / "data")
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(str(directory))
    return removed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ScratchServer:
    """Context manager: a private directory for one recovered server, removed on exit whatever happens."""

    def __init__(
        self,
        bin_dir: Path,
        barman: BarmanCloud,
        *,
        root: Path = DEFAULT_ROOT,
        env: dict[str, str] | None = None,
        log: Callable[[str], None] = print,
        startup_timeout: float = 3600.0,
    ):
        self.bin_dir = bin_dir
        self.barman = barman
        self.root = root
        self.env = dict(os.environ if env is None else env)
        self.log = log
        self.startup_timeout = startup_timeout
        self.os_user = server_os_user()
        self.directory: Path | None = None
        self.port = 0
        self._postmaster: Child | None = None
        self._janitor: subprocess.Popen | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------

    def __enter__(self) -> ScratchServer:
        for leftover in remove_leftovers(self.root):
            self.log(f"removed the scratch server a killed drill left behind: {leftover}")
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        directory = self.root / f"{os.getpid()}-{secrets.token_hex(4)}"
        directory.mkdir(mode=0o700)
        self.directory = directory
        started = process_start_time(os.getpid())
        (directory / OWNER_FILE).write_text(f"{os.getpid()} {started}\n")
        self._janitor = start_watcher(
            [sys.executable, "-c", _JANITOR, str(os.getpid()), str(started), str(directory)]
        )
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server and delete the directory; idempotent."""
        self.stop()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
        if self._janitor is not None:
            # It exits within a poll once the directory is gone; a late one must not hide the drill's error.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._janitor.wait(timeout=10)
            self._janitor = None

    @property
    def data(self) -> Path:
        if self.directory is None:
            raise ScratchError("the scratch server is not open")
        return self.directory / "data"

    @property
    def server_log(self) -> Path:
        return self.data.parent / "server.log"

    # --- restore -----------------------------------------------------------------------------------------

    def restore(self, client, backup_id: str) -> None:
        """The base backup's data directory, owned by the server's user."""
        self.data.mkdir(mode=0o700)
        try:
            unpack_base_backup(client, self.barman, backup_id, self.data, log=self.log)
        except UnpackError as error:
            raise ScratchError(str(error)) from None
        # Each part was read whole; these two say the backup is a data directory at all (backup_label is
        # the last file barman-cloud-backup writes).
        missing = [name for name in ("global/pg_control", "backup_label") if not (self.data / name).is_file()]
        if missing:
            raise ScratchError(
                f"base backup {backup_id} in {self.barman.destination} came back incomplete (no "
                f"{', '.join(missing)}): a part of it is missing from the object store"
            )
        (self.data / "pg_wal").mkdir(exist_ok=True)  # barman leaves pg_wal's contents out, sometimes itself
        if self.os_user:
            account = pwd.getpwnam(self.os_user)
            for path in [self.data.parent, *self.data.rglob("*"), self.data]:
                os.lchown(path, account.pw_uid, account.pw_gid)
        os.chmod(self.data, 0o700)

    def prefetched(self, name: str) -> bool:
        return (self.data.parent / "wal" / name).is_file()

    def prefetch_wal(self, client, keys: dict[str, str], *, threads: int = 4) -> int:
        """Download the segments recovery will ask for (segment -> object key), several at a time, so that
        restore_command copies them instead of starting barman-cloud-wal-restore (a Python process and an
        S3 round trip) per segment, one after the other. Gzip objects only: others are left to barman.
        Returns the number prefetched."""
        import gzip
        from concurrent.futures import ThreadPoolExecutor

        directory = self.data.parent / "wal"
        directory.mkdir(exist_ok=True)

        def fetch(item: tuple[str, str]) -> None:
            segment, key = item
            body = client.get_object(Bucket=self.barman.bucket, Key=key)["Body"].read()
            path = directory / segment
            path.write_bytes(gzip.decompress(body) if key.endswith(".gz") else body)
            os.chmod(path, 0o644)

        wanted = [(segment, key) for segment, key in sorted(keys.items()) if key.endswith((".gz", segment))]
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(fetch, wanted))
        os.chmod(directory, 0o755)
        return len(wanted)

    def configure(
        self,
        *,
        target_name: str | None = None,
        target_time: datetime | None = None,
        pause_at_target: bool,
        archive_prefetched: bool = False,
    ) -> None:
        """Recovery settings: WAL from the archive, to the named restore point, to the last commit at or
        before `target_time`, or to the archive's end. `archive_prefetched`: every segment and history
        file the archive holds has been prefetched, so a file that is not there is not in the archive
        either and recovery ends at once (instead of a barman-cloud-wal-restore process, a Python start and
        an S3 request, for each file PostgreSQL probes at the end: the next segment, newer timelines)."""
        bin_dir = barman_bin_dir(self.os_user)
        restore_command = BarmanCloud(
            bucket=self.barman.bucket,
            prefix=self.barman.prefix,
            server_name=self.barman.server_name,
            endpoint_url=self.barman.endpoint_url,
            bin_dir=bin_dir,
        ).restore_command()
        prefetched = self.data.parent / "wal"
        if archive_prefetched:
            restore_command = f"cp '{prefetched}/%f' '%p'"
        elif prefetched.is_dir():  # a prefetched segment is copied; anything else comes from the archive
            restore_command = f"cp '{prefetched}/%f' '%p' 2>/dev/null || {restore_command}"
        targets = {
            "recovery_target_name": target_name or "",
            "recovery_target_time": target_time.isoformat() if target_time else "",
        }
        settings = {
            "restore_command": restore_command,
            # Cleared targets first: PostgreSQL refuses a target that is cleared after another one was set
            # ("multiple recovery targets specified").
            **dict(sorted(targets.items(), key=lambda item: bool(item[1]))),
            "recovery_target_action": "pause" if pause_at_target else "promote",
            # A scratch copy must never write into the production archive.
            "archive_mode": "off",
            # Nor survive a crash: it is deleted after use. Without fsync, startup skips syncing every file
            # of the data directory just unpacked, and restartpoints and promotion write without waiting.
            "fsync": "off",
            "archive_command": "",
            "track_commit_timestamp": "on",
            "hot_standby": "on",
        }
        # Appended: the last setting wins over the restored postgresql.conf and postgresql.auto.conf.
        with open(self.data / "postgresql.auto.conf", "a") as conf:
            conf.write("\n# point-in-time drill\n")
            for name, value in settings.items():
                conf.write(f"{name} = '{value.replace(chr(39), chr(39) * 2)}'\n")
        (self.data / "recovery.signal").touch()
        for stale in ("postmaster.pid", "standby.signal"):
            with contextlib.suppress(FileNotFoundError):
                (self.data / stale).unlink()
        hba = self.data.parent / "pg_hba.conf"
        hba.write_text("local all all trust\n")
        if self.os_user:
            account = pwd.getpwnam(self.os_user)
            for path in (self.data / "postgresql.auto.conf", self.data / "recovery.signal", hba):
                os.chown(path, account.pw_uid, account.pw_gid)

    # --- server ------------------------------------------------------------------------------------------

    def _postgres(self) -> str:
        program = self.bin_dir / "postgres"
        if not program.is_file():
            raise ScratchError(
                f"{program} not found: HOTPOT_PG_BIN_DIR must hold the PostgreSQL server (postgres) of the "
                "backed-up major version for a point-in-time drill"
            )
        if not can_execute(self.os_user, program):
            raise ScratchError(f"the OS user {self.os_user!r} cannot execute {program}")
        return str(program)

    def start(self) -> None:
        """Start the server; it replays WAL from the archive until its target (or the archive's end)."""
        postgres = self._postgres()
        self.port = _free_port()
        options = {
            # pg_hba lets in only the socket (a directory only root and the server's user enter): nothing on
            # the port can log in to a copy of production data.
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.data.parent),
            "hba_file": str(self.data.parent / "pg_hba.conf"),
            "logging_collector": "off",
        }
        argv = [postgres, "-D", str(self.data)]
        argv += [arg for name, value in options.items() for arg in ("-c", f"{name}={value}")]
        env = {**self.env, "HOME": str(self.data.parent)}
        with open(self.server_log, "ab") as log:
            # Its deadline is spawn's long default: startup_timeout and `stop` end it sooner.
            self._postmaster = spawn(
                argv, stdout=log, merge_stderr=True, cwd=self.data.parent, env=env, user=self.os_user
            )
        if self.os_user:
            shutil.chown(self.server_log, self.os_user)

    def target(self, dbname: str, user: str) -> PgTarget:
        """Where to connect: the server's socket, as `user` (a role of the restored cluster)."""
        return PgTarget(host=str(self.data.parent), port=self.port, user=user, password=None, dbname=dbname)

    def wait(self, user: str, *, promoted: bool) -> None:
        """Until the server accepts queries and is promoted (or paused at its target, still in recovery)."""
        import psycopg

        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._postmaster is None or self._postmaster.poll() is not None:
                raise ScratchError(self._failure("the scratch server stopped while recovering"))
            with (
                contextlib.suppress(psycopg.OperationalError),
                self.target("postgres", user).connect(connect_timeout=5) as conn,
            ):
                in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
                if not promoted and in_recovery:
                    state = conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0]
                    if state == "paused":
                        return
                elif promoted and not in_recovery:
                    return
            if time.monotonic() > deadline:
                raise ScratchError(
                    self._failure(f"recovery did not finish within {self.startup_timeout:.0f} s")
                )
            time.sleep(0.2)

    def _failure(self, what: str) -> str:
        try:
            log = self.server_log.read_text(errors="replace")
        except OSError:
            log = ""
        restored = _RESTORED.findall(log)
        where = f"; the last WAL segment restored was {restored[-1]}" if restored else ""
        tail = "\n".join(line for line in log.splitlines() if " LOG: " not in line or "FATAL" in line)[-3000:]
        return f"{what}{where}; server log {self.server_log} ends:\n{tail or log[-3000:]}"

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        """Fast shutdown, then immediate, then SIGKILL to the server's process group; idempotent."""
        postmaster, self._postmaster = self._postmaster, None
        if postmaster is None:
            return
        with postmaster:  # leaving kills whatever is left
            for sig, grace in ((signal.SIGINT, STOP_GRACE_SECONDS), (signal.SIGQUIT, 10.0)):
                with contextlib.suppress(ProcessLookupError):
                    postmaster.process.send_signal(sig)
                if postmaster.ended_within(grace):
                    break
