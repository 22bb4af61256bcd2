"""`make dev` as an operator runs it: the banner once everything is up, and a stop within 10 s that leaves
nothing running, whichever way it is told to stop (SIGINT or SIGTERM, to make, to the stack's own process or
to the whole process group, as a terminal, a service manager or `timeout` would send them)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.waiting import wait_until

from hotpot_devstack import free_port

ROOT = Path(__file__).resolve().parents[1]
STARTUP_SECONDS = 300  # the first start on a fresh machine also generates the sample year
STOP_SECONDS = 10

pytestmark = [pytest.mark.slow, pytest.mark.timeout(STARTUP_SECONDS + 120)]


def descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command name may hold spaces and parentheses: the fields after the last ')' are fixed.
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    left = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":  # a zombie has exited; only its parent's wait is pending
            left.add(pid)
    return left


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
    except OSError:
        return "(gone)"


@pytest.fixture
def make_dev(tmp_path, request):
    """`make dev` from the checkout on a free port; env file, logs and run history under tmp_path.

    The sample is the year of orders an operator gets, unless a test asks for the small one."""
    out = tmp_path / "make-dev.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HOTPOT_", "DAGSTER_"))},
        "HOTPOT_DEV_SAMPLE": getattr(request, "param", "year"),
        "HOTPOT_DEV_PORT": str(free_port()),
        "HOTPOT_DEVSTACK_DIR": str(tmp_path / "devstack"),
        "HOTPOT_DEV_DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    with open(out, "wb") as log:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "dev"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal's job would be
        )
    up: dict[int, str] = {}
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while "Ctrl-C (or SIGTERM) stops everything." not in out.read_text(errors="replace"):
            assert make.poll() is None, f"make dev exited with {make.returncode}:\n{out.read_text()}"
            assert time.monotonic() < deadline, f"no banner after {STARTUP_SECONDS} s:\n{out.read_text()}"
            time.sleep(0.5)
        up = {pid: command_line(pid) for pid in descendants(make.pid)}
        yield make, out, env
    finally:
        # The services run in process groups of their own, and one whose parent dies is no longer its
        # descendant: every process is known before anything stops, and whatever outlives the stop is killed.
        started = {**up, **{pid: command_line(pid) for pid in descendants(make.pid)}}
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGTERM)  # as an operator's Ctrl-C ends a test that sent nothing
            deadline = time.monotonic() + 30
            while alive(set(started) | {make.pid}) and time.monotonic() < deadline:
                time.sleep(0.2)
        for pid in alive(set(started)):
            if command_line(pid) == started[pid]:  # not a new process that got the pid since
                os.kill(pid, signal.SIGKILL)
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
        make.wait()


def test_the_banner_names_the_ui_nginx_the_env_file_and_the_first_steps(make_dev):
    make, out, env = make_dev
    text = out.read_text()
    banner = text[text.index("pipeline is up") :]
    ui = re.search(r"Dagster UI\s+(http://127\.0\.0\.1:(\d+))", banner)
    assert ui and ui[2] == env["HOTPOT_DEV_PORT"], banner
    assert re.search(r"API via nginx\s+http://127\.0\.0\.1:\d+", banner), banner
    env_file = Path(env["HOTPOT_DEVSTACK_DIR"]) / "env.sh"
    assert f"environment     {env_file}" in banner and env_file.exists()
    for step in ("nightly_backup_job", "restore_drill_job", "build_image_job"):
        assert step in banner
    logs = Path(env["HOTPOT_DEVSTACK_DIR"]) / "logs"
    assert str(logs / "daemon.log") in banner
    # The daemon's output goes to the file the banner names (its first lines may come after the banner).
    wait_until(lambda: (logs / "daemon.log").stat().st_size > 0, 60, "the daemon writes to daemon.log")
    # dagster dev's warnings (a dagster.yaml "not used", "use dg dev") are avoided, not filtered.
    assert "will not be used" not in text and "dg dev" not in text
    assert "will not be used" not in (logs / "webserver.log").read_text(errors="replace")


@pytest.mark.parametrize("make_dev", ["small"], indirect=True)  # how it stops does not depend on the data
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("target", ["make", "stack", "group"])
def test_a_signal_stops_everything_within_ten_seconds(make_dev, target, signum):
    make, out, _ = make_dev
    processes = descendants(make.pid)
    [stack] = [pid for pid in processes if "-m hotpot_devstack" in command_line(pid)]
    assert len(processes) > 10, [command_line(pid) for pid in processes]  # the services, Dagster, its servers
    if target == "make":
        os.kill(make.pid, signum)
    elif target == "stack":
        os.kill(stack, signum)
    else:
        os.killpg(make.pid, signum)
    deadline = time.monotonic() + STOP_SECONDS
    while (left := alive(processes | {make.pid})) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, "still running {} s after {} to {}:\n{}\n{}".format(
        STOP_SECONDS,
        signal.Signals(signum).name,
        target,
        "\n".join(map(command_line, left)),
        out.read_text()[-3000:],
    )
    assert "stopped in" in out.read_text()
