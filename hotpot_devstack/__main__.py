"""`python -m hotpot_devstack [--traffic-rate R] [--traffic-hours H] up | run -- COMMAND...`

up   start the stack, write its environment to .devstack/env.sh, wait for Ctrl-C or SIGTERM, stop it.
run  the same, but run COMMAND with that environment and stop the stack when COMMAND exits (`make dev`).

Synthetic traffic goes through the stack's nginx at R requests per second until the stack stops, or for at
most H hours.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from .stack import TRAFFIC_RATE, TRAFFIC_SECONDS, DevStack


def _default_env_file() -> Path:
    """.devstack/env.sh in the repository root when running from a checkout, else in the current directory."""
    checkout = Path(__file__).resolve().parents[2]
    root = checkout if (checkout / "pyproject.toml").exists() else Path.cwd()
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
        "--traffic-hours",
        type=_positive,
        default=TRAFFIC_SECONDS / 3600,
        help="synthetic traffic stops after this long (default: %(default)g)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the stack and wait for Ctrl-C")
    run = commands.add_parser("run", help="start the stack, run COMMAND with its environment, stop")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="command and its arguments")
    args = parser.parse_args(argv)
    command = getattr(args, "cmd", [])
    if command[:1] == ["--"]:
        command = command[1:]
    if args.command == "run" and not command:
        parser.error("run needs a command: run -- COMMAND [ARGS...]")

    # SIGTERM unwinds like Ctrl-C so the `with` block below stops every service. SIGINT gets its handler
    # back explicitly: a shell starting us in the background (`make dev &`) hands it down ignored.
    signal.signal(signal.SIGTERM, _raise_system_exit)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(
        "starting PostgreSQL, S3, registry, the sample app (blue and green), nginx and Prometheus "
        "on 127.0.0.1 ...",
        file=sys.stderr,
        flush=True,
    )
    try:
        with DevStack(traffic_rate=args.traffic_rate, traffic_seconds=args.traffic_hours * 3600) as stack:
            write_env_file(stack.env(), args.env_file)
            print(stack.summary(), file=sys.stderr)
            print(f"environment (with the database password): {args.env_file}", file=sys.stderr, flush=True)
            try:
                if args.command == "run":
                    return _run_command(command, stack.env())
                print("Ctrl-C stops the stack.", file=sys.stderr, flush=True)
                signal.pause()
            except KeyboardInterrupt:
                pass
            finally:
                args.env_file.unlink(missing_ok=True)  # its services are about to be gone
                print("stopping the stack ...", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
