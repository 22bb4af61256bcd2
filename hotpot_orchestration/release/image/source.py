"""The source checkout to build: which commit it is, and a clean copy of that commit to build from.

Builds never run in the checkout itself. For a git checkout, the committed tree of the source directory at
HEAD is exported (`git archive HEAD:<dir>`) into a fresh workspace, so the image tagged with a commit's SHA
holds exactly that commit (uncommitted edits are left out, and reported), and two builds never share build
outputs. A directory outside git is copied as it is and named by a hash of its content instead of a commit.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from hotpot_orchestration.platform.proc import CommandFailed, run

DEFAULT_SHA_LENGTH = 12
# git on a local checkout; `git archive` of a large tree included.
GIT_TIMEOUT_SECONDS = 300


class SourceError(RuntimeError):
    """The source cannot be built: not a directory, no Dockerfile, or git failed."""


@dataclass(frozen=True)
class SourceSnapshot:
    origin: Path  # the checkout (HOTPOT_APP_SOURCE)
    workspace: Path  # the clean copy that gates and builds run in
    commit: str  # full commit SHA, or "tree:<sha256>" outside git
    tag: str  # the image tag: the commit's short SHA
    timestamp: int  # commit time (epoch seconds): image creation time and file times, for reproducible builds
    dirty: bool  # the checkout has uncommitted changes under the source directory (not built)
    remote_url: str | None  # `origin` remote of the checkout, if any
    subdir: str = ""  # the source's directory inside its repository ("" at the top)
    branch: str | None = None  # checked-out branch, if any


def _git(cwd: Path, *args: str, binary: bool = False):
    try:
        result = run(["git", *args], cwd=cwd, timeout=GIT_TIMEOUT_SECONDS)
    except CommandFailed as failed:
        raise SourceError(f"git {' '.join(args)} failed in {cwd}: {failed.tail}") from None
    return result.stdout if binary else result.text.strip()


def _is_git_checkout(path: Path) -> bool:
    if shutil.which("git") is None:
        return False
    result = run(
        ["git", "rev-parse", "--is-inside-work-tree"], cwd=path, timeout=GIT_TIMEOUT_SECONDS, check=False
    )
    return result.returncode == 0 and result.text.strip() == "true"


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and ".git" not in p.relative_to(root).parts):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def snapshot_source(source: Path, workspace: Path, sha_length: int = DEFAULT_SHA_LENGTH) -> SourceSnapshot:
    """Export the source at its current commit into `workspace` (created, must not exist yet)."""
    source = source.resolve()
    if not source.is_dir():
        raise SourceError(f"source {source} is not a directory")
    workspace.mkdir(parents=True)
    if _is_git_checkout(source):
        commit = _git(source, "rev-parse", "HEAD")
        prefix = _git(source, "rev-parse", "--show-prefix")
        top = Path(_git(source, "rev-parse", "--show-toplevel"))
        try:
            archive = _git(
                top, "archive", "--format=tar", f"HEAD:{prefix}" if prefix else "HEAD", binary=True
            )
        except SourceError as error:
            raise SourceError(f"{source} is not committed at HEAD ({error})") from None
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(workspace, filter="data")
        timestamp = int(_git(source, "log", "-1", "--format=%ct", "HEAD"))
        dirty = bool(_git(source, "status", "--porcelain", "--untracked-files=no", "--", "."))
        try:
            remote_url: str | None = _git(source, "remote", "get-url", "origin") or None
        except SourceError:
            remote_url = None
        tag = commit[:sha_length]
        branch = _git(source, "rev-parse", "--abbrev-ref", "HEAD")
        branch = None if branch == "HEAD" else branch
    else:
        shutil.copytree(source, workspace, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git"))
        tree = _tree_digest(workspace)
        commit, tag, dirty, remote_url = f"tree:{tree}", f"tree-{tree[:sha_length]}", False, None
        prefix, branch = "", None
        timestamp = int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0)
    if not (workspace / "Dockerfile").is_file():
        raise SourceError(f"{source} has no committed Dockerfile at its top")
    return SourceSnapshot(
        source, workspace, commit, tag, timestamp, dirty, remote_url, prefix.rstrip("/"), branch
    )
