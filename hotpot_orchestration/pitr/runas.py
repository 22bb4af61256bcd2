"""Running PostgreSQL and the barman-cloud programs it calls as an unprivileged OS user.

PostgreSQL refuses to run as root. When this process is root, a scratch server runs as `postgres` (else
`nobody`), and so do the `restore_command` / `archive_command` it runs: barman-cloud programs from this
interpreter's environment. That user often cannot execute this interpreter (a pyenv build under /root, say).
Then the programs run from a world-readable copy of the interpreter and its standard library (made once per
interpreter and shared), with this environment's site-packages on the path: the same barman code, reachable.
Not root (a Kubernetes pod): everything runs as ourselves, straight from our environment.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from hotpot_orchestration.platform.proc import run

# Standard-library parts barman never imports: left out of the copy.
_UNUSED_STDLIB = ("site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3")

BARMAN_MODULES = {
    "barman-cloud-backup": "barman.clients.cloud_backup",
    "barman-cloud-backup-delete": "barman.clients.cloud_backup_delete",
    "barman-cloud-backup-list": "barman.clients.cloud_backup_list",
    "barman-cloud-backup-show": "barman.clients.cloud_backup_show",
    "barman-cloud-wal-archive": "barman.clients.cloud_walarchive",
    "barman-cloud-wal-restore": "barman.clients.cloud_walrestore",
}


class RunAsError(RuntimeError):
    """The unprivileged user cannot run what it has to."""


def server_os_user() -> str | None:
    """The OS user PostgreSQL runs as: None when we are not root (it runs as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RunAsError(
        "running as root, and neither a `postgres` nor a `nobody` OS user exists to run PostgreSQL"
    )


def can_execute(user: str | None, path: str | os.PathLike) -> bool:
    if user is None:
        return os.access(path, os.X_OK)
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    return run([runuser, "-u", user, "--", "test", "-x", str(path)], timeout=30, check=False).returncode == 0


def _own_bin_dir() -> Path:
    return Path(sysconfig.get_path("scripts"))


def _interpreter_copy() -> Path:
    """A world-readable copy of this interpreter (bin, shared library, standard library), reused while
    intact. Only a copy root made and nobody else can write to is trusted: the server runs its programs."""
    base = Path(sys.base_prefix)
    real = Path(os.path.realpath(sys.executable))
    key = hashlib.sha256(f"{real}:{real.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    copy = Path(tempfile.gettempdir()) / f"hotpot-python-{key}"
    if copy.exists():
        info = copy.stat()
        if info.st_uid == os.geteuid() and not info.st_mode & 0o022 and (copy / "bin" / real.name).exists():
            return copy
        shutil.rmtree(copy)
    staging = Path(tempfile.mkdtemp(prefix="hotpot-python-staging-"))
    (staging / "bin").mkdir()
    shutil.copy2(real, staging / "bin" / real.name)
    libdir = Path(sysconfig.get_config_var("LIBDIR") or base / "lib")
    (staging / "lib").mkdir()
    for library in libdir.glob("libpython*.so*"):
        shutil.copy2(library, staging / "lib" / library.name, follow_symlinks=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    shutil.copytree(
        stdlib,
        staging / "lib" / stdlib.name,
        symlinks=True,
        ignore=lambda d, names: _ignored(stdlib, d, names),
    )
    for directory, _, _ in os.walk(staging):
        os.chmod(directory, 0o755)
    try:
        staging.rename(copy)
    except OSError:  # another process put its copy there first: use that one
        shutil.rmtree(staging, ignore_errors=True)
    return copy


def _ignored(stdlib: Path, directory: str, names: list[str]) -> list[str]:
    return [name for name in names if name in _UNUSED_STDLIB] if Path(directory) == stdlib else []


def barman_bin_dir(user: str | None) -> Path:
    """A directory holding the barman-cloud programs, each executable by `user` (None: ourselves)."""
    own = _own_bin_dir()
    if can_execute(user, own / "barman-cloud-wal-restore") and can_execute(user, Path(sys.executable)):
        return own
    copy = _interpreter_copy()
    python = copy / "bin" / Path(os.path.realpath(sys.executable)).name
    site_packages = sysconfig.get_paths()["purelib"]
    # One set of wrappers per environment, never rewritten: running servers call them at any moment.
    wrappers = copy / f"barman-bin-{hashlib.sha256(site_packages.encode()).hexdigest()[:12]}"
    if wrappers.is_dir():
        return wrappers
    staging = Path(tempfile.mkdtemp(prefix="barman-bin-", dir=copy))
    for program, module in BARMAN_MODULES.items():
        script = staging / program
        script.write_text(
            "#!/bin/sh\n"
            f"export PYTHONHOME='{copy}' PYTHONPATH='{site_packages}' LD_LIBRARY_PATH='{copy / 'lib'}'\n"
            f"exec '{python}' -m {module} \"$@\"\n"
        )
        script.chmod(0o755)
    staging.chmod(0o755)
    try:
        staging.rename(wrappers)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    if not can_execute(user, wrappers / "barman-cloud-wal-restore"):
        raise RunAsError(f"the OS user {user!r} cannot execute {wrappers}/barman-cloud-wal-restore")
    return wrappers
