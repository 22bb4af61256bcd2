"""The subprocess helper, with real processes: deadlines, process groups, death with the parent, tails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hotpot_orchestration.platform import proc
from hotpot_orchestration.platform.proc import CommandFailed, CommandTimedOut

# Spawns `sleep` through the helper (as argv[1]'s OS user if given), prints the sleep's pid, then waits.
PARENT = """
import sys
from hotpot_orchestration.platform import proc
with proc.spawn(["sleep", "600"], user=sys.argv[1] or None) as child:
    print(child.pid, flush=True)
    child.wait()
"""


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until_gone(pids: list[int], seconds: float = 10.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    return [pid for pid in pids if alive(pid)]


def test_run_returns_stdout_and_the_stderr_tail():
    finished = proc.run(["sh", "-c", "echo out; echo err >&2"], timeout=30)
    assert (finished.returncode, finished.text, finished.tail) == (0, "out\n", "err")


def test_a_non_zero_exit_names_the_program_its_code_and_its_stderr():
    with pytest.raises(CommandFailed) as failed:
        proc.run(["/bin/sh", "-c", "echo 'no such table' >&2; exit 3"], timeout=30)
    assert (failed.value.program, failed.value.returncode, failed.value.signal) == ("sh", 3, None)
    assert str(failed.value) == "sh exited with code 3: no such table"


def test_a_killed_program_names_the_signal():
    with pytest.raises(CommandFailed) as failed:
        proc.run(["sh", "-c", "kill -TERM $$"], timeout=30)
    assert failed.value.signal == signal.SIGTERM
    assert str(failed.value) == f"sh was killed by signal {signal.SIGTERM.value}: (no output)"


def test_the_deadline_kills_the_whole_group_grandchild_included(tmp_path):
    pids = tmp_path / "pids"
    started = time.monotonic()
    with pytest.raises(CommandTimedOut) as timed_out:
        proc.run(
            ["sh", "-c", f"sleep 600 & echo $! > {pids}; echo started >&2; sleep 600"],
            timeout=1,
        )
    assert time.monotonic() - started < 10
    assert timed_out.value.signal == signal.SIGKILL
    assert str(timed_out.value) == "sh did not finish within 1 s: started"
    grandchild = int(pids.read_text())
    assert wait_until_gone([grandchild]) == []


def test_leaving_a_spawn_block_early_kills_the_group(tmp_path):
    pids = tmp_path / "pids"
    with proc.spawn(["sh", "-c", f"sleep 600 & echo $! > {pids}; echo $$ >> {pids}; wait"]) as child:
        deadline = time.monotonic() + 10
        while len(pids.read_text().split() if pids.exists() else []) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert child.process.returncode == -signal.SIGKILL
    assert wait_until_gone([int(pid) for pid in pids.read_text().split()]) == []


def test_what_a_finished_command_left_running_is_killed_with_it(tmp_path):
    pids = tmp_path / "pids"
    proc.run(["sh", "-c", f"sleep 600 > /dev/null 2>&1 & echo $! > {pids}"], timeout=30)
    assert wait_until_gone([int(pids.read_text())]) == []


@pytest.mark.parametrize(
    "user",
    [
        "",
        pytest.param(
            "nobody", marks=pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
        ),
    ],
)
def test_the_child_dies_when_its_parent_is_killed(user):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, user], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.kill()
        parent.wait(timeout=30)
        assert wait_until_gone([child]) == [], f"sleep {child} outlived its killed parent"
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()


def test_the_stderr_tail_is_bounded_to_its_last_lines():
    script = "for i in $(seq 1 5000); do echo line $i >&2; done; exit 1"
    with pytest.raises(CommandFailed) as failed:
        proc.run(["sh", "-c", script], timeout=60)
    tail = failed.value.tail
    assert len(tail.encode()) <= proc.TAIL_BYTES
    assert tail.endswith("line 5000") and "line 1\n" not in tail
    assert proc.last_lines(tail, 3) == "line 4998\nline 4999\nline 5000"


def test_a_missing_program_is_file_not_found_as_popen_says():
    """Callers turn FileNotFoundError into 'install X' (barman-cloud, buildah): not a CommandFailed."""
    with pytest.raises(FileNotFoundError, match="no-such-program"):
        proc.run(["no-such-program", "--version"], timeout=10)
    with pytest.raises(FileNotFoundError):
        proc.spawn(["/nonexistent/bin/tool"])


def test_a_caller_that_judges_every_message_keeps_them_all():
    """pg_restore's messages are all judged (restores/pgtools): the first error of thousands is kept."""
    script = "for i in $(seq 1 5000); do echo line $i >&2; done"
    finished = proc.run(["sh", "-c", script], timeout=60, tail_bytes=1024 * 1024)
    assert finished.tail.startswith("line 1\n") and finished.tail.endswith("line 5000")
    assert len(finished.tail.splitlines()) == 5000


def test_secrets_are_redacted_from_the_tail():
    env = {
        "PATH": os.environ["PATH"],
        "PGPASSWORD": "pg-s3cret",
        "AWS_SECRET_ACCESS_KEY": "aws/s3cret+key",
        "HOTPOT_DATABASE_URL": "postgresql://app:url%20s3cret@db:5432/app",
    }
    script = (
        'echo "auth $PGPASSWORD failed for postgresql://bob:hunter2@db/x" >&2; '
        'echo "key $AWS_SECRET_ACCESS_KEY pass url s3cret, registry pw R3g1stry" >&2; exit 2'
    )
    with pytest.raises(CommandFailed) as failed:
        proc.run(["sh", "-c", script], timeout=30, env=env, secrets=["R3g1stry"])
    message = str(failed.value)
    for secret in ("pg-s3cret", "hunter2", "aws/s3cret+key", "url s3cret", "R3g1stry"):
        assert secret not in message
    assert json.dumps(message) == json.dumps(
        "sh exited with code 2: auth *** failed for postgresql://bob:***@db/x\n"
        "key *** pass ***, registry pw ***"
    )


def test_merged_output_is_kept_in_the_tail():
    finished = proc.run(["sh", "-c", "echo out; echo err >&2"], timeout=30, merge_stderr=True)
    assert (finished.stdout, finished.tail) == (b"", "out\nerr")


def test_a_server_logs_to_a_file_and_stops_on_a_polite_signal(tmp_path):
    log = tmp_path / "server.log"
    server_script = "trap 'echo stopping >&2; exit 0' TERM; echo up; while :; do sleep 0.1; done"
    with (
        open(log, "ab") as out,
        proc.spawn(["sh", "-c", server_script], stdout=out, merge_stderr=True) as server,
    ):
        deadline = time.monotonic() + 10
        while "up" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        server.process.send_signal(signal.SIGTERM)
        assert server.ended_within(10)
    assert (server.process.returncode, log.read_text()) == (0, "up\nstopping\n")
