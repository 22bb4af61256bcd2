"""Point-in-time recovery against the logical drill, on generated 1 GB and 3 GB databases in one run.

For each size, on one archiving PostgreSQL (archive_timeout 60 s) and one S3 (moto):

  logical   restore_drill through Dagster: download, pg_restore --jobs, exact verification, scratch dropped.
  pitr      pitr_drill through Dagster: the newest base backup (its parts unpacked side by side) and WAL
            into a scratch server, replayed to the logical backup's restore point (every table's row count
            checked), then to the archive's end and promoted; the RPO against a writer committing twice a
            second.
  anchor    pgBackRest (Debian package, a local posix repository, 2 processes): restore of a full backup
            taken at the same time, started and promoted (recovery to the end of its WAL).

Measured pitr, anchor, then logical: the logical drill last, since the WAL of its restore (into a database
of the same server) is archived and would add a backlog to the others' replay and to the RPO.
Targets: pitr <= 0.4x logical at 3 GB; RPO <= 60 s. The WAL of the data generation itself is not archived
(the archive starts with the base backup), which keeps the setup short and changes no measured step.

    .venv/bin/python bench/pitr_rto.py [--sizes 1,3]
"""

import argparse
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import dagster as dg
from restore_rto import BUCKET, DATABASE, PREFIX, checkpoint, drill, generate

from hotpot_devstack import Postgres, S3Server, free_port
from hotpot_devstack.backups import take_verified_backup
from hotpot_devstack.postgres import WalArchive
from hotpot_orchestration.pitr.archive import archiver_status, next_segment
from hotpot_orchestration.pitr.assets import PitrResource, build_pitr_assets
from hotpot_orchestration.pitr.physical import take_base_backup
from hotpot_orchestration.platform.pg import PgTarget
from hotpot_orchestration.platform.resources import BackupStorageResource, PostgresResource
from hotpot_orchestration.settings import load_settings

SERVER_NAME = "bench"
# Debian 12's pgBackRest (2.45) reads PostgreSQL up to 15: every way runs on the system's PostgreSQL 15.
SERVER_BIN_DIR = "/usr/lib/postgresql/15/bin"


def set_archive_command(postgres: Postgres, command: str | None) -> None:
    with postgres.connect() as conn:
        if command is None:
            conn.execute("ALTER SYSTEM RESET archive_command")
        else:
            conn.execute(f"ALTER SYSTEM SET archive_command = '{command}'")
        conn.execute("SELECT pg_reload_conf()")


def wait_archived(postgres: Postgres, timeout: float = 300) -> None:
    """Until every finished WAL segment is in the archive."""
    target = PgTarget.from_url(postgres.url)
    deadline = time.monotonic() + timeout
    while (status := archiver_status(target)).last_archived_wal is None or (
        next_segment(status.last_archived_wal[:24], 16 * 1024 * 1024) < status.current_wal
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"WAL not archived within {timeout:.0f} s: {status}")
        time.sleep(0.5)


class Heartbeat:
    """Commits a row twice a second on the source: the newest commit the RPO is measured against."""

    def __init__(self, postgres: Postgres):
        self.postgres = postgres
        self.stop_event = threading.Event()
        with postgres.connect(DATABASE) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS bench_heartbeat (at timestamptz NOT NULL)")
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        with self.postgres.connect(DATABASE) as conn:
            for _ in range(20_000):  # bounded: at most ~3 h
                if self.stop_event.wait(0.5):
                    return
                conn.execute("INSERT INTO bench_heartbeat VALUES (now())")

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join()


def pitr_drill(postgres: Postgres, s3: S3Server, prefix: str) -> tuple[float, dict]:
    *_, asset = build_pitr_assets(load_settings({}))
    resources = {
        "postgres": PostgresResource(url=postgres.url_for(DATABASE), pg_bin_dir=str(postgres.bin_dir)),
        "backup_storage": BackupStorageResource(
            bucket=BUCKET, prefix=PREFIX, endpoint_url=s3.endpoint_url, region=s3.region
        ),
        "pitr": PitrResource(
            bucket=BUCKET, prefix=prefix, server_name=SERVER_NAME, endpoint_url=s3.endpoint_url
        ),
    }
    started = time.perf_counter()
    result = dg.materialize([asset], resources=resources, instance=dg.DagsterInstance.ephemeral())
    seconds = time.perf_counter() - started
    (materialization,) = result.asset_materializations_for_node("pitr_drill")
    return seconds, {key: value.value for key, value in materialization.metadata.items()}


class PgBackRest:
    """A posix pgBackRest repository beside the server, run as the server's OS user."""

    def __init__(self, postgres: Postgres, work: Path):
        self.postgres = postgres
        self.work = work / f"pgbackrest-{postgres.port}"  # one per server (size) of the run
        self.work.mkdir()
        self.conf = self.work / "pgbackrest.conf"
        data = postgres.tmp / "data"
        self.conf.write_text(
            "[global]\n"
            f"repo1-path={self.work / 'repo'}\nlog-path={self.work}\nlock-path={self.work}\n"
            f"spool-path={self.work}\nprocess-max=2\nstart-fast=y\nlog-level-console=warn\n"
            f"[bench]\npg1-path={data}\npg1-port={postgres.port}\npg1-socket-path={postgres.tmp}\n"
            "pg1-user=postgres\n"
        )
        self._chown(self.work)

    def _chown(self, path: Path) -> None:
        if self.postgres.os_user:
            account = pwd.getpwnam(self.postgres.os_user)
            for item in [path, *path.rglob("*")]:
                os.chown(item, account.pw_uid, account.pw_gid)

    def command(self, *args: str) -> list[str]:
        argv = ["pgbackrest", f"--config={self.conf}", "--stanza=bench", *args]
        if self.postgres.os_user:
            argv = ["runuser", "-u", self.postgres.os_user, "--", *argv]
        return argv

    def run(self, *args: str) -> None:
        env = {**os.environ, "PGPASSWORD": self.postgres.password}
        done = subprocess.run(self.command(*args), env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pgbackrest {args[0]} failed: {done.stdout}{done.stderr}")

    @property
    def archive_push(self) -> str:
        return f"pgbackrest --config={self.conf} --stanza=bench archive-push %p"

    def restore_and_promote(self) -> float:
        """Restore into a new directory, start on a free port, wait until promoted; seconds taken."""
        target = self.work / f"restore-{time.time_ns()}"
        target.mkdir(mode=0o700)
        self._chown(target)
        started = time.perf_counter()
        self.run("restore", f"--pg1-path={target}", "--type=default")
        port = str(free_port())
        server = subprocess.Popen(
            self._as_user(
                [
                    str(self.postgres.bin_dir / "postgres"),
                    "-D",
                    str(target),
                    "-c",
                    f"port={port}",
                    "-c",
                    "listen_addresses=",
                    "-c",
                    f"unix_socket_directories={self.work}",
                    "-c",
                    "archive_mode=off",
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            env = {**os.environ, "PGPASSWORD": self.postgres.password}
            psql = str(self.postgres.bin_dir / "psql")
            query = self._as_user(
                [
                    psql,
                    "-h",
                    str(self.work),
                    "-p",
                    port,
                    "-U",
                    "postgres",
                    "-Atc",
                    "SELECT pg_is_in_recovery()",
                ]
            )
            for _ in range(36_000):
                out = subprocess.run(query, capture_output=True, text=True, env=env)
                if out.stdout.strip() == "f":
                    return time.perf_counter() - started
                if server.poll() is not None:
                    raise RuntimeError("the pgBackRest restore's server stopped")
                time.sleep(0.1)
            raise RuntimeError("the pgBackRest restore was not promoted within an hour")
        finally:
            server.terminate()
            server.wait()
            shutil.rmtree(target, ignore_errors=True)

    def _as_user(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.postgres.os_user, "--", *argv] if self.postgres.os_user else argv


def measure(gigabytes: float, s3: S3Server, work: Path) -> dict:
    # An archive per size: the drill must not mistake the other server's backups for this one's.
    prefix = f"pitr-{gigabytes:g}gb/"
    archive = WalArchive(s3, BUCKET, prefix=prefix, server_name=SERVER_NAME, timeout_seconds=60)
    with Postgres(bin_dir=SERVER_BIN_DIR, wal_archive=archive) as postgres:
        with postgres.connect() as conn:
            command = conn.execute("SHOW archive_command").fetchone()[0]
        set_archive_command(postgres, "/bin/true")  # the generation's WAL is not part of any measurement
        print(f"[{gigabytes:g} GB] generating ...", flush=True)
        size = generate(postgres, gigabytes)
        backrest = PgBackRest(postgres, work)
        set_archive_command(postgres, f"{command} && {backrest.archive_push}".replace("'", "''"))
        backrest.run("stanza-create")
        target = PgTarget.from_url(postgres.url)
        # Commits all along, as on a live database: the RPO is measured against the newest one.
        heartbeat = Heartbeat(postgres)
        try:
            base = take_base_backup(
                archive.barman(), target, s3.client(), label="bench", env={"AWS_DEFAULT_REGION": s3.region}
            )
            print(
                f"[{gigabytes:g} GB] {size / 1e9:.2f} GB; base backup {base.stored_bytes / 1e6:.0f} MB in "
                f"{base.seconds:.0f} s",
                flush=True,
            )
            started = time.perf_counter()
            backrest.run("backup", "--type=full")
            print(
                f"[{gigabytes:g} GB] pgBackRest backup in {time.perf_counter() - started:.0f} s", flush=True
            )
            take_verified_backup(postgres, s3, BUCKET, DATABASE, PREFIX)
            wait_archived(postgres)  # as the 04:30 drill finds the nightly backup's restore point
            # The logical drill goes last: it restores into a database of the archived server, whose WAL
            # (as much as the database) the other two would otherwise download and replay after it.
            checkpoint(postgres)
            pitr_seconds, pitr = pitr_drill(postgres, s3, prefix)
            print(f"[{gigabytes:g} GB] pitr drill {pitr_seconds:.1f} s: {pitr}", flush=True)
            checkpoint(postgres)
            anchor_seconds = backrest.restore_and_promote()
            print(f"[{gigabytes:g} GB] pgBackRest restore+promote {anchor_seconds:.1f} s", flush=True)
            checkpoint(postgres)
            logical_seconds, logical = drill(postgres, s3)
            print(f"[{gigabytes:g} GB] logical drill {logical_seconds:.1f} s", flush=True)
        finally:
            heartbeat.stop()
    return {
        "size": size,
        "logical": logical_seconds,
        "pitr": pitr_seconds,
        "pitr_rto": pitr["rto_seconds"],
        "rpo": pitr.get("rpo_seconds"),
        "anchor": anchor_seconds,
        "rows": logical["rows_verified"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,3", help="database sizes in GB, comma-separated (default 1,3)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hotpot-pitr-bench-"))
    os.chmod(work, 0o755)
    results = {}
    try:
        with S3Server() as s3:
            os.environ.update(s3.env())
            for gigabytes in (float(size) for size in args.sizes.split(",")):
                results[gigabytes] = measure(gigabytes, s3, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    for r in results.values():
        print(
            f"{r['size'] / 1e9:.2f} GB ({r['rows']:,} rows): logical drill {r['logical']:.1f} s, "
            f"pitr drill {r['pitr']:.1f} s ({r['pitr'] / r['logical']:.2f}x; open at the restore point after "
            f"{r['pitr_rto']:.1f} s), RPO {r['rpo']} s, pgBackRest restore+promote {r['anchor']:.1f} s"
        )
    largest = results[max(results)]
    print(f"target pitr <= 0.40x logical at the largest size: {largest['pitr'] / largest['logical']:.2f}x")
    print(f"target RPO <= 60 s with archive_timeout=60s: {largest['rpo']} s")


if __name__ == "__main__":
    main()
