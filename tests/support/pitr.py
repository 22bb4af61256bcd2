"""Point-in-time recovery helpers: an archiving server, its barman-cloud place, logical backups of it."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from datetime import timedelta
from pathlib import Path

from hotpot_devstack import Postgres, S3Server, free_port
from hotpot_devstack.postgres import WalArchive
from hotpot_orchestration.backups.backup import BackupResult, take_backup
from hotpot_orchestration.pitr.archive import archiver_status, segment_of
from hotpot_orchestration.pitr.barman import BarmanCloud
from hotpot_orchestration.pitr.recover import lsn_value
from hotpot_orchestration.platform.pg import PgTarget

from .waiting import wait_until

BUCKET = "hotpot-pitr-tests"
LOGICAL_PREFIX = "database/"


def archiving_server(s3: S3Server, *, timeout_seconds: int = 60) -> Postgres:
    """A (not yet started) server archiving to a prefix of its own in BUCKET of `s3`."""
    prefix = f"pitr-{uuid.uuid4().hex[:8]}/"
    return Postgres(wal_archive=WalArchive(s3, BUCKET, prefix, "hotpot", timeout_seconds))


def barman_of(server: Postgres) -> BarmanCloud:
    return server.wal_archive.barman()


def env_of(server: Postgres) -> dict[str, str]:
    """What the product's process has: the AWS chain for the server's S3, the source's libpq variables."""
    return {**PgTarget.from_url(server.url).env(), **server.wal_archive.s3.env()}


def logical_backup(server: Postgres, dbname: str) -> BackupResult:
    s3 = server.wal_archive.s3
    return take_backup(
        target=PgTarget.from_url(server.url_for(dbname)),
        url_variable="HOTPOT_DATABASE_URL",
        bin_dir=server.bin_dir,
        connect_s3=s3.client,
        endpoint=s3.endpoint_url,
        bucket=BUCKET,
        prefix=f"{server.wal_archive.prefix}{LOGICAL_PREFIX}",
        partition="2026-03-01",
        encryption={"ServerSideEncryption": "AES256"},
        log=lambda _: None,
        stall_seconds=300,
        orphans_older_than=timedelta(hours=12),
    )


def archive_everything(server: Postgres, timeout: float = 120) -> str:
    """Switch to a new WAL segment and wait until every finished one is archived; the last one's name."""
    with server.connect() as conn:
        # A commit record first: pg_switch_wal does not switch a segment holding only unimportant records.
        conn.execute("SELECT pg_current_xact_id()")
        segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
    target = PgTarget.from_url(server.url)

    def archived():
        status = archiver_status(target)
        return status.last_archived_wal is not None and status.last_archived_wal >= segment

    wait_until(archived, timeout, lambda: f"WAL segment {segment} archived: {archiver_status(target)}")
    return segment


def wait_archived_through(server: Postgres, lsn: str, timeout: float = 60) -> str:
    """Until the WAL segment holding `lsn` (of timeline 1) is archived; its name."""
    segment = segment_of(lsn_value(lsn), "00000001", 16 * 1024 * 1024)
    target = PgTarget.from_url(server.url)
    wait_until(
        lambda: (archiver_status(target).last_archived_wal or "") >= segment,
        timeout,
        lambda: f"WAL segment {segment} (holding {lsn}) archived: {archiver_status(target)}",
    )
    return segment


def scratch_root() -> Path:
    """A scratch root the server's unprivileged user can reach (pytest's tmp_path is private to root)."""
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"hotpot-pitr-test-{uuid.uuid4().hex[:8]}"


class SwitchableS3(S3Server):
    """A TCP forwarder on a fixed loopback port in front of another S3Server, that can be taken down
    (connections refused, open ones cut, as when S3 is unreachable) and brought back on the same port, with
    everything stored upstream intact. Uses the upstream's credentials and region."""

    name = "s3-switch"

    def __init__(self, upstream: S3Server):
        super().__init__(region=upstream.region)
        self.upstream = upstream
        self.access_key, self.secret_key = upstream.access_key, upstream.secret_key
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()

    def _start(self) -> None:
        self.port = free_port()
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._connections.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # taken down
            upstream = socket.create_connection((self.upstream.host, self.upstream.port))
            with self._lock:
                self._connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def _stop(self) -> None:
        self.down()
