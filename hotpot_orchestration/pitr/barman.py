"""barman-cloud command lines: the object layout CloudNativePG reads and writes.

`s3://BUCKET/PREFIX/SERVER/base/<backup id>/...` holds base backups (snappy-compressed tar parts) and
`.../SERVER/wals/<timeline+log>/...` the WAL (gzip), both encrypted by S3 (AES256, or SSE-KMS with a key).
The programs come from barman's PyPI package (`barman[cloud,snappy]`); AWS credentials and the region
reach them through boto3's own chain (the environment), never a command line. Every failure names the
program and ends with its output.
"""

from __future__ import annotations

import json
import shlex
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from hotpot_orchestration.platform import proc
from hotpot_orchestration.platform.pg import PgTarget

# Base backups: snappy, the fastest data compression CloudNativePG 1.25 offers. barman compresses gzip at
# zlib's level 9, about 4 MB/s a core: a 1 GB cluster took 207 s to back up, where snappy took 25 s (and
# stores 1.7x the bytes). Parts of at most BASE_BACKUP_PART_SIZE let a restore unpack several at once.
BASE_BACKUP_COMPRESSION = "snappy"
BASE_BACKUP_PART_SIZE = "128MB"
# WAL: gzip, a 16 MB segment at a time (the drill's prefetch unpacks it in-process).
WAL_COMPRESSION = "gzip"
# What barman-cloud prints on failure is short; more than this is noise in a step's error.
_OUTPUT_TAIL = 2000


class BarmanError(RuntimeError):
    """A barman-cloud program failed."""


@dataclass(frozen=True)
class BarmanCloud:
    """One barman-cloud server's place in the object store, and how its objects are written."""

    bucket: str
    prefix: str  # "pitr/" (a trailing slash, or empty)
    server_name: str
    endpoint_url: str | None = None
    kms_key_id: str | None = None
    bin_dir: Path | None = None  # None: beside this interpreter (the package's scripts), else on PATH

    @property
    def destination(self) -> str:
        return f"s3://{self.bucket}/{self.prefix.rstrip('/')}".rstrip("/")

    @property
    def server_prefix(self) -> str:
        """The S3 key prefix of this server's objects."""
        return f"{self.prefix}{self.server_name}/"

    def program(self, name: str) -> str:
        bin_dir = self.bin_dir or Path(sysconfig.get_path("scripts"))
        return str(bin_dir / name) if (bin_dir / name).exists() else name

    def _cloud_options(self) -> list[str]:
        options = ["--cloud-provider", "aws-s3"]
        if self.endpoint_url:
            options += ["--endpoint-url", self.endpoint_url]
        return options

    def _encryption(self) -> list[str]:
        if self.kms_key_id:
            return ["--encryption", "aws:kms", "--sse-kms-key-id", self.kms_key_id]
        return ["--encryption", "AES256"]

    def _argv(self, program: str, *args: str) -> list[str]:
        return [self.program(program), *self._cloud_options(), *args]

    # --- what a PostgreSQL server runs -------------------------------------------------------------------

    def archive_command(self) -> str:
        """`archive_command`: each finished WAL segment, gzip-compressed and encrypted, into the store."""
        argv = self._argv("barman-cloud-wal-archive", f"--{WAL_COMPRESSION}", *self._encryption())
        return shlex.join([*argv, self.destination, self.server_name]) + " %p"

    def restore_command(self) -> str:
        """`restore_command` of a server recovering from this archive."""
        argv = self._argv("barman-cloud-wal-restore")
        return shlex.join([*argv, self.destination, self.server_name]) + " %f %p"

    # --- what we run -------------------------------------------------------------------------------------

    def backup_argv(self, target: PgTarget, *, name: str) -> list[str]:
        """A base backup of the server `target` reaches (its data directory must be readable here)."""
        return self._argv(
            "barman-cloud-backup",
            f"--{BASE_BACKUP_COMPRESSION}",
            "--max-archive-size",
            BASE_BACKUP_PART_SIZE,
            *self._encryption(),
            "--immediate-checkpoint",
            "--jobs",
            "2",
            "--host",
            target.host,
            "--port",
            str(target.port),
            "--user",
            target.user,
            "--dbname",
            target.dbname,
            "--name",
            name,
            self.destination,
            self.server_name,
        )

    def delete_argv(self, recovery_window_days: int) -> list[str]:
        policy = f"RECOVERY WINDOW OF {recovery_window_days} DAYS"
        return self._argv(
            "barman-cloud-backup-delete", "--retention-policy", policy, self.destination, self.server_name
        )

    def list_backups(self, env: dict[str, str] | None = None) -> list[dict]:
        """Every base backup of the server, oldest first, as barman-cloud-backup-list's JSON describes it."""
        out = run(
            self._argv("barman-cloud-backup-list", "--format", "json", self.destination, self.server_name),
            env=env,
        )
        backups = json.loads(out)["backups_list"]
        return sorted(backups, key=lambda backup: backup.get("end_time_iso") or "")


def run(
    argv: list[str], *, env: dict[str, str] | None = None, timeout: float = proc.LONG_RUNNING_SECONDS
) -> str:
    """Run a barman-cloud program; its stdout, or BarmanError naming it with the end of its output. The
    default deadline is a long one: a base backup or restore of a large cluster takes hours."""
    try:
        result = proc.run(argv, env=env, timeout=timeout, check=False)
    except FileNotFoundError:
        raise BarmanError(
            f"{argv[0]} not found: install the Python package `barman[cloud]` (a project dependency)"
        ) from None
    except proc.CommandTimedOut:
        raise BarmanError(f"{Path(argv[0]).name} did not finish within {timeout:.0f} s") from None
    if result.returncode != 0:
        output = (result.tail or result.text.strip())[-_OUTPUT_TAIL:]
        raise BarmanError(f"{Path(argv[0]).name} failed (exit {result.returncode}): {output}")
    return result.text
