"""Client programs (pg_dump, pg_restore) run as children whose output we stream."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import subprocess
import threading
from collections.abc import Iterator

# Kept from a child's stderr for failure messages: its last lines say why it stopped.
STDERR_TAIL_BYTES = 8192
# Linux pipes hold 64 KiB: a child writing into one blocks every 64 KiB until we read. 1 MiB (the most an
# unprivileged process may ask for by default) lets pg_dump run ahead of our reads and uploads.
PIPE_BYTES = 1024 * 1024


class StderrTail(threading.Thread):
    """Drains a child's stderr (so the child never blocks on it) and keeps the last few KiB."""

    def __init__(self, stream):
        super().__init__(name="stderr-tail", daemon=True)
        self.stream = stream
        self.chunks: collections.deque[bytes] = collections.deque()
        self.size = 0
        self.start()

    def run(self) -> None:
        for line in self.stream:
            self.chunks.append(line)
            self.size += len(line)
            while self.size > STDERR_TAIL_BYTES and len(self.chunks) > 1:
                self.size -= len(self.chunks.popleft())

    def text(self) -> str:
        self.join()
        return b"".join(self.chunks).decode(errors="replace").strip()


@contextlib.contextmanager
def running(
    command: list[str], env: dict[str, str] | None = None, *, stdin: bool = False
) -> Iterator[tuple[subprocess.Popen, StderrTail]]:
    """The child with stdout (and stdin if asked) piped to us; killed if we leave before it ends, since it
    would otherwise block forever on a full pipe."""
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            # Not every kernel allows it (or has it); the default size works, only slower.
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    stderr = StderrTail(process.stderr)
    try:
        yield process, stderr
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        stderr.join()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
