"""Shared plumbing for the devstack services: free ports, programs, managed subprocesses, readiness waits."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

INSTALL_HINT = "(make dev / make test do this)"


class MissingProgram(RuntimeError):
    """A program (or library) a service needs is not installed."""

    def __init__(self, program: str, how_to_install: str):
        super().__init__(f"{program} not found: {how_to_install}")
        self.program = program


class ServiceError(RuntimeError):
    """A service did not come up in time, died, or refused a change."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def find_program(program: str, debian_package: str) -> str:
    """Absolute path of `program` (a name looked up on PATH, or a path), or MissingProgram."""
    path = shutil.which(program)
    if path is None:
        raise MissingProgram(program, f"install the Debian package `{debian_package}` {INSTALL_HINT}")
    return path


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


class Service:
    """Base of every devstack service: a private temp dir, child processes, idempotent stop.

    Subclasses implement `_start()` (spawn, then `_wait_until` ready) and may extend `_stop()`.
    `stop()` is also registered with atexit so an interpreter that exits without calling it leaks nothing.
    """

    name = "service"
    startup_timeout = 60.0
    # Time a process gets to exit after its stop signal before it is killed.
    stop_grace = 10.0

    def __init__(self) -> None:
        self._tmp: Path | None = None
        self._procs: list[tuple[subprocess.Popen, Path]] = []

    @property
    def running(self) -> bool:
        return self._tmp is not None

    @property
    def tmp(self) -> Path:
        if self._tmp is None:
            raise ServiceError(f"{self.name} is not running")
        return self._tmp

    def start(self) -> Self:
        if self.running:
            return self
        self._tmp = Path(tempfile.mkdtemp(prefix=f"hotpot-{self.name}-"))
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if not self.running:
            return
        atexit.unregister(self.stop)
        try:
            self._stop()
        finally:
            for proc, _ in reversed(self._procs):
                terminate(proc, grace=self.stop_grace)
            self._procs.clear()
            shutil.rmtree(self.tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        """Service-specific graceful shutdown; the processes are terminated after it in any case."""

    @property
    def log_dir(self) -> Path:
        """Where the children's output goes: the temp dir, unless a service keeps its logs elsewhere."""
        return self.tmp

    def _spawn(self, argv: Sequence[str], log_name: str = "server.log", **popen_kwargs) -> subprocess.Popen:
        log_path = self.log_dir / log_name
        with open(log_path, "ab") as log:
            # A session of its own: Ctrl-C in a terminal reaches only us, and we stop services in order.
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=popen_kwargs.pop("cwd", self.tmp),
                start_new_session=True,
                **popen_kwargs,
            )
        self._procs.append((proc, log_path))
        return proc

    def _wait_until(self, check: Callable[[], object], what: str, timeout: float | None = None) -> None:
        """Poll `check` (exceptions mean "not yet") until it returns truthy; fail early if a child died."""
        deadline = time.monotonic() + (self.startup_timeout if timeout is None else timeout)
        last_error: BaseException | None = None
        while True:
            for proc, log_path in self._procs:
                if proc.poll() is not None:
                    raise ServiceError(
                        f"{self.name}: {proc.args[0]} exited with code {proc.returncode} while waiting for "
                        f"{what}; last lines of {log_path}:\n{log_tail(log_path)}"
                    )
            try:
                if check():
                    return
            except Exception as exc:  # the service is not ready yet; keep the reason for the error
                last_error = exc
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        logs = "\n".join(f"--- {path}:\n{log_tail(path)}" for _, path in self._procs)
        reason = f" (last error: {last_error!r})" if last_error else ""
        raise ServiceError(f"{self.name}: timed out waiting for {what}{reason}\n{logs}")


def terminate(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Send `sig`, wait up to `grace` seconds, then SIGKILL the process's whole process group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    # Also reached after a clean exit: grandchildren left in the group must not outlive the service.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
