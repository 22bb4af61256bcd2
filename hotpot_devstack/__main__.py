"""`python -m hotpot_devstack [--traffic-rate R] [--traffic-hours H] [--sample S] up | ui | run -- COMMAND...`

up   start the stack, write its environment to .devstack/env.sh, wait for Ctrl-C or SIGTERM, stop it.
ui   the same, with dagster-webserver and dagster-daemon on it (`make dev`): the full Dagster logs go to
     files beside the env file, warnings and errors also to the terminal.
run  the same as up, but run COMMAND with that environment and stop the stack when COMMAND exits.

Synthetic traffic goes through the stack's nginx at R requests per second until the stack stops, or for at
most H hours.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .dagster_services import CHECKOUT, DagsterServices, prepare_home
from .sample import SAMPLE_SIZES
from .stack import TRAFFIC_RATE, TRAFFIC_SECONDS, DevStack

# Termination signals, as bits of /proc/PID/status's SigCgt mask (bit N-1 is signal N).
_TERMINATING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_LEVEL = re.compile(r" - (WARNING|ERROR|CRITICAL) - ")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _default_env_file() -> Path:
    """.devstack/env.sh in the repository root when running from a checkout, else in the current directory."""
    root = CHECKOUT if (CHECKOUT / "pyproject.toml").exists() else Path.cwd()
    return root / ".devstack" / "env.sh"


def write_env_file(env: dict[str, str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created 0600 before anything is written: the file holds the database password.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as file:
        file.writelines(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())


def _positive(value: str) -> float:
    number = float(value)
    if not (number > 0 and math.isfinite(number)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return number


def _raise_system_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _caught_signals(pid: int) -> set[int]:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return set()
    mask = int(re.search(r"^SigCgt:\s*([0-9a-f]+)", status, re.MULTILINE)[1], 16)
    return {sig for sig in _TERMINATING if mask >> (sig - 1) & 1}


def wait_for_stop() -> None:
    """Return when our parent is going away; SIGINT/SIGTERM/SIGHUP to us raise out of the wait.

    GNU make, sent SIGINT alone (not from a terminal, which signals the whole group), does not pass it on:
    it resets its handler to the default and waits for its children to exit. So a parent that stops
    catching a termination signal it caught before, or that is gone, means "stop" as much as a signal does.
    """
    parent = os.getppid()
    caught = _caught_signals(parent)
    while os.getppid() == parent and _caught_signals(parent) >= caught:
        time.sleep(0.25)


def _echo_warnings(logs: list[Path], stop: threading.Event) -> None:
    """Copy the warnings and errors of Dagster's log files to the terminal; the rest stays in the files."""
    offsets = {path: path.stat().st_size if path.exists() else 0 for path in logs}
    while not stop.wait(0.5):
        for path in logs:
            try:
                with open(path, errors="replace") as file:
                    file.seek(offsets[path])
                    text = file.read()
                    offsets[path] = file.tell()
            except OSError:
                continue
            for line in text.splitlines():
                if _LEVEL.search(_ANSI.sub("", line)):
                    print(f"[{path.stem}] {line}", file=sys.stderr, flush=True)


def _banner(stack: DevStack, ui: DagsterServices, env_file: Path) -> str:
    return f"""
The Hot Pot Spot's operations pipeline is up.
  Dagster UI      {ui.url}
  API via nginx   {stack.nginx.url}   (curl -si {stack.nginx.url}/ : X-Track names the colour)
  environment     {env_file}   (`. {env_file}` for the dagster CLI; holds the database password)
  Dagster logs    {ui.log_dir / "webserver.log"}, {ui.log_dir / "daemon.log"}   (warnings also here)
First three things to do, in the UI:
  1. Jobs > nightly_backup_job > Materialize the latest partition: a verified backup in S3 (the nightly
     schedule takes one at 02:00 too; backup and drill schedules are on from the start).
  2. Jobs > restore_drill_job > Launch: the backup restored into a scratch database and every table checked.
  3. Jobs > build_image_job > Launch, then launch canary_release_job (or turn on new_image_tag_sensor):
     watch traffic move to the new colour through nginx, judged by Prometheus.
Ctrl-C (or SIGTERM) stops everything.
"""


def _run_command(argv: list[str], env: dict[str, str]) -> int:
    """Run `argv` with `env` added; SIGTERM is passed on, Ctrl-C reaches it directly from the terminal."""
    child = subprocess.Popen(argv, env={**os.environ, **env})
    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, _frame: child.send_signal(signum)),
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
    }
    try:
        code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hotpot_devstack", description=__doc__.split("\n")[0])
    parser.add_argument("--env-file", type=Path, default=_default_env_file(), help="default: %(default)s")
    parser.add_argument(
        "--traffic-rate",
        type=_positive,
        default=TRAFFIC_RATE,
        help="requests per second (default: %(default)g)",
    )
    parser.add_argument(
        "--sample",
        choices=SAMPLE_SIZES,
        default="small",
        help="sample database: a few hundred rows, or a restaurant's year (default: %(default)s)",
    )
    parser.add_argument(
        "--traffic-hours",
        type=_positive,
        default=TRAFFIC_SECONDS / 3600,
        help="synthetic traffic stops after this long (default: %(default)g)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the stack and wait for Ctrl-C")
    ui = commands.add_parser("ui", help="start the stack and the Dagster UI and daemon, wait for Ctrl-C")
    ui.add_argument(
        "--port", type=int, default=3000, help="the UI's port on 127.0.0.1 (default: %(default)s)"
    )
    ui.add_argument(
        "--dagster-home",
        type=Path,
        default=CHECKOUT / ".dagster_home",
        help="run history (default: %(default)s)",
    )
    run = commands.add_parser("run", help="start the stack, run COMMAND with its environment, stop")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="command and its arguments")
    args = parser.parse_args(argv)
    command = getattr(args, "cmd", [])
    if command[:1] == ["--"]:
        command = command[1:]
    if args.command == "run" and not command:
        parser.error("run needs a command: run -- COMMAND [ARGS...]")

    # SIGTERM and SIGHUP unwind like Ctrl-C so the `with` block below stops every service. SIGINT gets its
    # handler back explicitly: a shell starting us in the background (`make dev &`) hands it down ignored.
    signal.signal(signal.SIGTERM, _raise_system_exit)
    signal.signal(signal.SIGHUP, _raise_system_exit)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(
        "starting PostgreSQL, S3, registry, the sample app (blue and green), nginx and Prometheus "
        "on 127.0.0.1 ...",
        file=sys.stderr,
        flush=True,
    )
    # The Dagster instance's home is prepared meanwhile: the services mostly wait (Prometheus for its first
    # scrape), and its schema takes a Python process of its own.
    home_ready = _in_background(prepare_home, args.dagster_home) if args.command == "ui" else None
    try:
        with DevStack(
            traffic_rate=args.traffic_rate,
            traffic_seconds=args.traffic_hours * 3600,
            sample_size=args.sample,
        ) as stack:
            write_env_file(stack.env(), args.env_file)
            print(stack.summary(), file=sys.stderr)
            print(f"environment (with the database password): {args.env_file}", file=sys.stderr, flush=True)
            try:
                if args.command == "run":
                    return _run_command(command, stack.env())
                if args.command == "ui":
                    _serve_ui(stack, args, home_ready)
                else:
                    print("Ctrl-C stops the stack.", file=sys.stderr, flush=True)
                    wait_for_stop()
            except KeyboardInterrupt:
                pass
            finally:
                _stopping()
                args.env_file.unlink(missing_ok=True)  # its services are about to be gone
                print("stopping the stack ...", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        return 130
    finally:
        if _stop_began:
            print(f"stopped in {time.monotonic() - _stop_began[0]:.1f} s", file=sys.stderr, flush=True)
    return 0


_stop_began: list[float] = []


def _stopping() -> None:
    """From here on the services are being stopped: a second signal (make passes SIGTERM on to us after
    the group already had it) must not cut that short and leave processes behind."""
    for signum in _TERMINATING:
        signal.signal(signum, signal.SIG_IGN)
    if not _stop_began:
        _stop_began.append(time.monotonic())


def _in_background(function: Callable[..., object], *args: object) -> Future:
    pool = ThreadPoolExecutor(1)
    future = pool.submit(function, *args)
    pool.shutdown(wait=False)  # the call still runs to its end
    return future


def _serve_ui(stack: DevStack, args: argparse.Namespace, home_ready: Future) -> None:
    print("starting dagster-webserver and dagster-daemon ...", file=sys.stderr, flush=True)
    logs = args.env_file.parent / "logs"
    home_ready.result()
    ui = DagsterServices(stack.env(), home=args.dagster_home, port=args.port, logs=logs, home_prepared=True)
    with ui:
        stop_echo = threading.Event()
        echo = threading.Thread(
            target=_echo_warnings,
            args=([logs / "webserver.log", logs / "daemon.log"], stop_echo),
            daemon=True,
        )
        echo.start()
        print(_banner(stack, ui, args.env_file), file=sys.stderr, flush=True)
        try:
            wait_for_stop()
        finally:
            _stopping()
            stop_echo.set()
            print("stopping Dagster and the stack ...", file=sys.stderr, flush=True)
            # Side by side: Dagster's grace and the services' shutdowns would otherwise add up.
            with ThreadPoolExecutor(2) as pool:
                for future in [pool.submit(ui.stop), pool.submit(stack.stop)]:
                    future.result()


if __name__ == "__main__":
    sys.exit(main())
