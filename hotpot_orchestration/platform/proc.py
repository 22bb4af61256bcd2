"""Every client program the product runs (pg_dump, pg_restore, barman-cloud, buildah, git, nginx, gates)
runs through here, under the same rules:

- a deadline: past it the child's whole process group is killed and `CommandTimedOut` raised;
- a process group of its own (a new session), killed as a whole when the command ends, fails, times out or
  its caller leaves early, so no grandchild outlives it;
- on Linux, SIGKILL when the thread that started it dies (PR_SET_PDEATHSIG, set by util-linux's `setpriv`,
  which then execs the program under the same pid): a killed run leaves no pg_restore writing into a
  scratch database the next run drops. The signal follows the starting *thread*, so a child must not
  outlive the thread that spawned it (every `with spawn(...)` block ensures that). A program that switches
  users itself (runuser, su) loses it: the kernel clears it on a credential change, and only the group kill
  reaches what such a program starts. No Python code runs between fork and exec (no `preexec_fn`): that
  would make every fork take the interpreter's fork-time locks (logging's, the import lock), which can
  deadlock a process whose other threads hold them, such as one running several in-process runs;
- the last few KiB of its stderr kept (read on a thread, so the child never blocks on a full pipe), with
  secrets redacted: URL passwords, the values the caller names, and the child's secret-looking environment
  variables (PGPASSWORD, *_SECRET_*, ...);
- a non-zero exit is `CommandFailed`, naming the program, its exit code or signal and that tail; callers
  translate it into their own domain's errors.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import os
import pwd
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import quote, unquote, urlsplit

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
# Kept from a child's stderr for failure messages: its last lines say why it stopped.
TAIL_BYTES = 8192
# What a failure message shows of a long output (build and gate logs).
TAIL_LINES = 40
# Linux pipes hold 64 KiB: a child writing into one blocks every 64 KiB until we read. 1 MiB (the most an
# unprivileged process may ask for by default) lets pg_dump run ahead of our reads and uploads.
PIPE_BYTES = 1024 * 1024
# The deadline of a long-lived child whose caller bounds it otherwise (stall watchdogs, a server stopped by
# its owner): the longest a backup run may be configured to last (HOTPOT_BACKUP_TIMEOUT_SECONDS' maximum).
LONG_RUNNING_SECONDS = 172800.0

_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@")
_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL", re.IGNORECASE)

# Without setpriv (not Linux, or a system without util-linux) children lack only the death signal.
_SETPRIV = shutil.which("setpriv", path="/usr/bin:/bin")
_DIE_WITH_PARENT = [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []


def _check_exists(program: str, environment: Mapping[str, str], cwd: str | os.PathLike | None) -> None:
    """FileNotFoundError, as Popen raises it, for a program that is not there: run through setpriv it would
    otherwise be setpriv's failure (exit 127), and callers say what to install on FileNotFoundError."""
    if os.sep in program:
        found = (Path(cwd or ".") / program).exists()
    else:
        found = shutil.which(program, path=environment.get("PATH", os.defpath)) is not None
    if not found:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


class CommandFailed(RuntimeError):
    """A program exited non-zero or was killed; `tail` is the end of its stderr, redacted."""

    def __init__(self, argv: Sequence[str], returncode: int, tail: str):
        self.program = Path(argv[0]).name
        self.returncode = returncode
        self.tail = tail
        super().__init__(f"{self.program} {self.how}: {tail or '(no output)'}")

    @property
    def signal(self) -> int | None:
        return -self.returncode if self.returncode < 0 else None

    @property
    def how(self) -> str:
        if self.signal is not None:
            return f"was killed by signal {self.signal}"
        return f"exited with code {self.returncode}"


class CommandTimedOut(CommandFailed):
    """A program ran past its deadline; its process group was killed."""

    def __init__(self, argv: Sequence[str], returncode: int, tail: str, timeout: float):
        self.timeout = timeout
        super().__init__(argv, returncode, tail)

    @property
    def how(self) -> str:
        return f"did not finish within {self.timeout:g} s"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without URL passwords nor any of `secrets` (nor their URL-quoted forms)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***").replace(quote(secret, safe=""), "***")
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


def env_secrets(env: Mapping[str, str]) -> list[str]:
    """Values of secret-looking variables, and passwords inside URL values."""
    secrets = [value for name, value in env.items() if _SECRET_NAME.search(name)]
    for value in env.values():
        if "://" in value:
            with contextlib.suppress(ValueError):
                password = urlsplit(value).password
                if password:
                    secrets.append(unquote(password))
    return secrets


def last_lines(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


class _Tail(threading.Thread):
    """Drains a stream (so the child never blocks on it) and keeps its last `limit` bytes."""

    def __init__(self, stream: IO[bytes], limit: int):
        super().__init__(name="stderr-tail", daemon=True)
        self.stream = stream
        self.limit = limit
        self.chunks: collections.deque[bytes] = collections.deque()
        self.size = 0
        self.start()

    def run(self) -> None:
        for line in self.stream:
            self.chunks.append(line)
            self.size += len(line)
            while self.size > self.limit and len(self.chunks) > 1:
                self.size -= len(self.chunks.popleft())

    def text(self) -> str:
        self.join()
        return b"".join(self.chunks)[-self.limit :].decode(errors="replace").strip()


class Child:
    """A running program (see `spawn`); a context manager that kills its group and reaps it on exit."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None,
        stdin: int | IO | None,
        stdout: int | IO | None,
        merge_stderr: bool,
        secrets: Iterable[str],
        cwd: str | os.PathLike | None,
        user: str | None,
        tail_bytes: int = TAIL_BYTES,
    ):
        self.argv = [str(arg) for arg in argv]
        self.timeout = timeout
        environment = dict(os.environ if env is None else env)
        self.secrets = [*secrets, *env_secrets(environment)]
        self.timed_out = False
        self._lock = threading.Lock()
        account = pwd.getpwnam(user) if user else None
        _check_exists(self.argv[0], environment, cwd)
        self.process = subprocess.Popen(
            # Python switches user before the exec, so the death signal setpriv sets survives the switch.
            [*_DIE_WITH_PARENT, *self.argv],
            stdin=DEVNULL if stdin is None else stdin,
            stdout=stdout,
            stderr=subprocess.STDOUT if merge_stderr else PIPE,
            env=environment,
            cwd=cwd,
            start_new_session=True,
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,
        )
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                # Not every kernel allows it (or has it); the default size works, only slower.
                with contextlib.suppress(OSError, AttributeError):
                    fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        merged_into_pipe = merge_stderr and stdout == PIPE
        tailed = self.process.stdout if merged_into_pipe else self.process.stderr
        self._tail = _Tail(tailed, tail_bytes) if tailed is not None else None
        self.stdout = None if merged_into_pipe else self.process.stdout
        self.stdin = self.process.stdin
        self._deadline = threading.Timer(timeout, self._expire)
        self._deadline.daemon = True
        self._deadline.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _expire(self) -> None:
        self.timed_out = True
        self.kill()

    def kill(self) -> None:
        """SIGKILL the whole process group (no-op once the program was reaped: its pid may be reused)."""
        with self._lock:
            if self.process.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.process.pid, signal.SIGKILL)

    def poll(self) -> int | None:
        """The exit status once the program ended (its group then killed), else None."""
        try:
            ended = os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped already
            ended = True
        return self._reap() if ended else None

    def wait(self) -> int:
        """Wait for the program to end; its exit status. Raises CommandTimedOut past the deadline."""
        # Not reaped yet, its pid still names its group: what it started goes with it.
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOWAIT)
        returncode = self._reap()
        if self.timed_out:
            raise CommandTimedOut(self.argv, returncode, self.tail(), self.timeout)
        return returncode

    def ended_within(self, seconds: float) -> bool:
        """Whether the program ends within `seconds` (then reaped, its group killed), for a stop that
        escalates from a polite signal."""
        deadline = time.monotonic() + seconds
        while self.poll() is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def _reap(self) -> int:
        self.kill()
        with self._lock:
            returncode = self.process.wait()
        self._deadline.cancel()
        return returncode

    def check(self) -> None:
        """Wait; CommandFailed (or CommandTimedOut) unless the program exited 0."""
        returncode = self.wait()
        if returncode != 0:
            raise CommandFailed(self.argv, returncode, self.tail())

    def tail(self) -> str:
        """The end of its stderr (of its output when merged), redacted; waits for the stream to close."""
        return redact(self._tail.text(), self.secrets) if self._tail is not None else ""

    def close(self) -> None:
        """Kill the group if still running, reap, close our ends of the pipes."""
        self._reap()
        if self._tail is not None:
            self._tail.join()
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def spawn(
    argv: Sequence[str],
    *,
    timeout: float = LONG_RUNNING_SECONDS,
    env: Mapping[str, str] | None = None,
    stdin: int | IO | None = None,
    stdout: int | IO | None = PIPE,
    merge_stderr: bool = False,
    secrets: Iterable[str] = (),
    cwd: str | os.PathLike | None = None,
    user: str | None = None,
    tail_bytes: int = TAIL_BYTES,
) -> Child:
    """Start `argv` (stdin: /dev/null, PIPE or a file; stdout: PIPE, a file or DEVNULL; stderr tailed, or
    merged into stdout; `tail_bytes` of it kept). Use it as a context manager: leaving the block kills
    whatever still runs."""
    return Child(
        argv,
        timeout=timeout,
        env=env,
        stdin=stdin,
        stdout=stdout,
        merge_stderr=merge_stderr,
        secrets=secrets,
        cwd=cwd,
        user=user,
        tail_bytes=tail_bytes,
    )


def start_watcher(argv: Sequence[str]) -> subprocess.Popen:
    """A process meant to outlive us, to clean up after a killed run: a session of its own (a signal to our
    group does not reach it), no output, and neither a deadline nor death with the parent. It must end on
    its own; the caller may wait for it."""
    return subprocess.Popen(list(argv), stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL, start_new_session=True)


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: bytes  # empty when stderr was merged into the tail
    tail: str  # the end of stderr (or of the merged output), redacted

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    stdin: int | IO | None = None,
    merge_stderr: bool = False,
    secrets: Iterable[str] = (),
    cwd: str | os.PathLike | None = None,
    check: bool = True,
    tail_bytes: int = TAIL_BYTES,
) -> Finished:
    """Run `argv` to completion: its stdout and stderr tail. CommandFailed on a non-zero exit when `check`;
    CommandTimedOut past `timeout` in any case."""
    with spawn(
        argv,
        timeout=timeout,
        env=env,
        stdin=stdin,
        merge_stderr=merge_stderr,
        secrets=secrets,
        cwd=cwd,
        tail_bytes=tail_bytes,
    ) as child:
        stdout = child.stdout.read() if child.stdout is not None else b""
        returncode = child.wait()
        finished = Finished(returncode, stdout, child.tail())
    if check and returncode != 0:
        raise CommandFailed(child.argv, returncode, finished.tail)
    return finished
