"""Faults of point-in-time recovery: S3 down under archive_command, a killed drill, leftovers of one.

Real PostgreSQL archiving with real barman-cloud into real moto; "S3 down" is a forwarder in front of moto
that refuses connections (the data stays in moto), so the same endpoint comes back.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.pitr import (
    SwitchableS3,
    archive_everything,
    archiving_server,
    barman_of,
    env_of,
    logical_backup,
    scratch_root,
)
from support.waiting import wait_until

from hotpot_devstack import seed_sample
from hotpot_orchestration.pitr.archive import archived_wal, archiver_status, evaluate, first_gap
from hotpot_orchestration.pitr.drill import run_drill
from hotpot_orchestration.pitr.physical import take_base_backup
from hotpot_orchestration.pitr.scratch import OWNER_FILE, remove_leftovers
from hotpot_orchestration.platform.pg import PgTarget

pytestmark = pytest.mark.slow

# The wal_archive check's interval (wal_archive_check_schedule runs every 5 minutes).
CHECK_INTERVAL = 300


@pytest.fixture
def root():
    path = scratch_root()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def drill(server, root):
    return run_drill(
        barman=barman_of(server),
        client=server.wal_archive.s3.client(),
        backup_bucket=server.wal_archive.bucket,
        backup_prefix=f"{server.wal_archive.prefix}database/",
        source=PgTarget.from_url(server.url_for("app")),
        bin_dir=server.bin_dir,
        env=env_of(server),
        log=lambda _: None,
        root=root,
    )


def test_s3_down_fails_the_wal_archive_check_and_nothing_is_lost_when_it_returns(s3, root):
    with SwitchableS3(s3) as switch, archiving_server(switch) as server:
        seed_sample(server, "app")
        barman = barman_of(server)
        target = PgTarget.from_url(server.url)
        take_base_backup(barman, target, switch.client(), label="test", env=switch.env())
        logical_backup(server, "app")
        archive_everything(server)

        def check():
            from botocore.config import Config

            client = switch.client(config=Config(retries={"total_max_attempts": 1}, connect_timeout=2))
            return evaluate(target, client, barman, max_age_seconds=300, now=datetime.now(UTC))[0]

        assert check().passed
        switch.down()
        with server.connect("app") as conn:
            conn.execute("CREATE TABLE during_outage (n int)")
            conn.execute("INSERT INTO during_outage SELECT generate_series(1, 1000)")
            conn.execute("SELECT pg_switch_wal()")

        def failing():
            verdict = check()
            return verdict if "archive_command is failing" in verdict.description else None

        verdict = wait_until(
            failing,
            CHECK_INTERVAL,
            "the wal_archive check to fail while S3 is down",
        )
        assert "archive_command is failing" in verdict.description
        assert "cannot be listed" in verdict.description
        with server.connect("app") as conn:
            conn.execute("INSERT INTO during_outage VALUES (1001)")
            newest = conn.execute("SELECT timestamp FROM pg_last_committed_xact()").fetchone()[0]

        switch.up()
        # The archiver retries on its own (at the latest a minute after its last failed round).
        archive_everything(server, timeout=240)
        assert check().passed
        status = archiver_status(target)
        assert status.failed_count > 0 and not status.failing
        archived = archived_wal(switch.client(), barman)
        first = min(archived.segments)
        assert first_gap(archived, first, 16 * 1024 * 1024) is None  # every segment, none skipped

        result = drill(server, root)
        # Every commit made while S3 was down came back (and archive_everything's own, after it).
        assert result.recovered_last_commit >= newest and result.rpo_seconds == 0


CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from hotpot_orchestration.pitr.barman import BarmanCloud
    from hotpot_orchestration.pitr.drill import run_drill
    from hotpot_orchestration.platform.pg import PgTarget
    import boto3
    args = json.loads(sys.argv[1])
    run_drill(
        barman=BarmanCloud(**args["barman"]),
        client=boto3.client("s3", endpoint_url=args["barman"]["endpoint_url"]),
        backup_bucket=args["barman"]["bucket"],
        backup_prefix=args["backup_prefix"],
        source=PgTarget.from_url(args["source"]),
        bin_dir=Path(args["bin_dir"]),
        env=dict(__import__("os").environ),
        log=lambda line: print(line, flush=True),
        root=Path(args["root"]),
    )
    """
)


def _servers_under(root: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if str(root).encode() in cmdline and b"postgres" in cmdline and b"-D" in cmdline:
                pids.append(int(proc.name))
    return pids


@pytest.fixture
def source(archiving_postgres, s3):
    server = archiving_postgres
    seed_sample(server, "app")
    take_base_backup(
        barman_of(server), PgTarget.from_url(server.url), s3.client(), label="test", env=s3.env()
    )
    logical_backup(server, "app")
    archive_everything(server)
    yield server


def test_a_killed_drill_leaves_no_scratch_server_or_directory(source, root):
    import json

    barman = barman_of(source)
    args = {
        "barman": {
            "bucket": barman.bucket,
            "prefix": barman.prefix,
            "server_name": barman.server_name,
            "endpoint_url": barman.endpoint_url,
        },
        "backup_prefix": f"{source.wal_archive.prefix}database/",
        "source": source.url_for("app"),
        "bin_dir": str(source.bin_dir),
        "root": str(root),
    }
    env = {**os.environ, **env_of(source), "PYTHONPATH": os.getcwd()}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(args)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        # Killed while its scratch server runs (restored, replaying or paused at the restore point).
        wait_until(lambda: _servers_under(root), 240, "the drill's scratch server to start")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    wait_until(lambda: not _servers_under(root), 60, lambda: f"scratch servers left: {_servers_under(root)}")
    wait_until(lambda: not any(root.iterdir()), 60, lambda: f"left in {root}: {list(root.iterdir())}")


def test_the_next_drill_removes_what_a_killed_one_left_when_its_janitor_died_too(root):
    root.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = root / f"{dead.pid}-deadbeef"
    (leftover / "data").mkdir(parents=True)
    (leftover / OWNER_FILE).write_text(f"{dead.pid} 12345\n")
    alive = root / f"{os.getpid()}-cafecafe"
    alive.mkdir()
    from hotpot_orchestration.pitr.scratch import process_start_time

    (alive / OWNER_FILE).write_text(f"{os.getpid()} {process_start_time(os.getpid())}\n")

    assert remove_leftovers(root) == [str(leftover)]
    assert not leftover.exists() and alive.exists()  # a running drill's directory is not touched
