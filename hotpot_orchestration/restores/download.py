"""Download a backup's dump to a local file, hashing it on the way, and refuse it unless it matches the
manifest. pg_restore runs parallel jobs only from a seekable file, so the dump cannot be piped into it.

Work directories are private temp directories holding an exclusive `flock` for as long as their run lives;
the kernel drops the lock when the process dies, so the next run can tell an abandoned directory (a dump of
possibly many GB) from a live one and remove it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hotpot_orchestration.restores.errors import NotEnoughSpace

_log = logging.getLogger(__name__)

WORK_DIR_PREFIX = "hotpot-restore-"
CHUNK_BYTES = 8 * 1024 * 1024
# A directory this young may belong to a run that has not taken its lock yet.
LOCK_GRACE_SECONDS = 60
PROGRESS_EVERY_SECONDS = 10.0


class ChecksumMismatch(Exception):
    """The downloaded dump is not the one the manifest describes."""


@dataclass(frozen=True)
class Download:
    path: Path
    bytes: int
    sha256: str
    seconds: float


def _remove_abandoned_work_dirs(parent: Path, log: Callable[[str], None]) -> None:
    for candidate in parent.glob(WORK_DIR_PREFIX + "*"):
        try:
            if time.time() - candidate.stat().st_mtime < LOCK_GRACE_SECONDS:
                continue
            with open(candidate / ".lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # still locked by a live run, or not ours to inspect
        shutil.rmtree(candidate, ignore_errors=True)
        log(f"removed work directory {candidate} left behind by a run that ended without cleaning up")


@contextlib.contextmanager
def work_dir(parent: str | Path | None = None, log: Callable[[str], None] = _log.info) -> Iterator[Path]:
    """A private temp directory, removed on exit; abandoned ones under the same parent are removed first."""
    parent = Path(parent or tempfile.gettempdir())
    _remove_abandoned_work_dirs(parent, log)
    path = Path(tempfile.mkdtemp(prefix=WORK_DIR_PREFIX, dir=parent))
    lock = open(path / ".lock", "w")  # noqa: SIM115 - held open for the directory's whole life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield path
    finally:
        lock.close()
        shutil.rmtree(path, ignore_errors=True)


def _space_message(directory: Path, needed: int, free: int) -> str:
    return (
        f"the download directory {directory} has {free:,} bytes free and the dump needs {needed:,} bytes: "
        "free space there, or set work_dir in the run config to a directory on a larger filesystem"
    )


def check_free_space(directory: Path, needed: int) -> None:
    """NotEnoughSpace unless `directory`'s filesystem has `needed` bytes free for an unprivileged writer."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise NotEnoughSpace(_space_message(directory, needed, free))


def download_verified(
    client,
    bucket: str,
    key: str,
    dest: Path,
    *,
    sha256: str,
    size: int | None = None,
    log: Callable[[str], None] = _log.info,
) -> Download:
    """Stream s3://bucket/key into `dest`, hashing every byte as it arrives; raise ChecksumMismatch unless
    the size and SHA-256 equal the manifest's. Nothing reads `dest` before this returns. A full disk
    raises NotEnoughSpace naming the file and the sizes, and removes the partial file."""
    started = time.monotonic()
    digest = hashlib.sha256()
    received = 0
    last_report = started
    uri = f"s3://{bucket}/{key}"
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        with open(dest, "wb") as out:
            for chunk in body.iter_chunks(CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
                now = time.monotonic()
                if now - last_report >= PROGRESS_EVERY_SECONDS:
                    log(f"downloaded {received / 1e6:.1f} MB ({received / 1e6 / (now - started):.1f} MB/s)")
                    last_report = now
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        dest.unlink(missing_ok=True)
        free = shutil.disk_usage(dest.parent).free
        needed = size if size is not None else received
        raise NotEnoughSpace(
            f"no space left writing {dest} after {received:,} of {needed:,} bytes of {uri} (the partial file "
            "was removed); " + _space_message(dest.parent, needed, free)
        ) from None
    seconds = time.monotonic() - started
    actual = digest.hexdigest()
    if size is not None and received != size:
        raise ChecksumMismatch(f"{uri}: downloaded {received} bytes, the manifest says {size}")
    if actual != sha256:
        raise ChecksumMismatch(f"{uri}: SHA-256 {actual} does not match the manifest's {sha256}")
    log(f"downloaded {uri}: {received / 1e6:.1f} MB in {seconds:.1f}s, SHA-256 matches the manifest")
    return Download(path=dest, bytes=received, sha256=actual, seconds=seconds)
