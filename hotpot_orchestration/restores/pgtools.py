"""pg_restore and pg_dump as a restore needs them: the archive's table of contents, the roles it names,
version compatibility, and a pg_restore run whose every error is collected and judged.

Passwords reach the child processes only through `PgTarget.env()`; everything they print is redacted before
it is logged or returned.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hotpot_orchestration.platform.pg import PgTarget, tool_major_version
from hotpot_orchestration.platform.proc import LONG_RUNNING_SECONDS, CommandFailed, run, spawn
from hotpot_orchestration.restores.errors import RestoreSetupError

# TOC entries that carry data, not schema: `pg_dump --schema-only` of the restored database has none of them.
# Large objects are checked by count, sequence values and row counts against the manifest.
DATA_ENTRIES = (
    "TABLE DATA",
    "SEQUENCE SET",
    "BLOB",
    "BLOBS",
    "BLOB METADATA",
    "LARGE OBJECT",
    "MATERIALIZED VIEW DATA",
    "STATISTICS DATA",
)
PRIVILEGE_ENTRIES = ("ACL", "DEFAULT ACL")
_TOC_LINE = re.compile(r"^\d+; \d+ \d+ (?P<entry>.+)$")
_IDENTIFIER = r'("(?:[^"]|"")+"|[^\s;,]+)'
# Statements pg_dump writes at the start of a line. A function body with such a line at column 0 would add
# a role the restore does not need: a false alarm that names the role, never a missed one.
_ROLE_REFERENCES = tuple(
    re.compile(pattern + _IDENTIFIER, re.MULTILINE)
    for pattern in (
        r"^ALTER .* OWNER TO ",
        r"^GRANT .* TO ",
        r"^REVOKE .* FROM ",
        r"^ALTER DEFAULT PRIVILEGES FOR ROLE ",
    )
)
# pg_restore's messages kept for judging: thousands of errors fit; a restore printing more has failed anyway.
PG_RESTORE_MESSAGE_BYTES = 16 * 1024 * 1024
_UNKNOWN_SETTING = re.compile(r'unrecognized configuration parameter "(?P<name>[^"]+)"')
# Reading a table of contents or a schema takes seconds even for large databases: a hang ends here.
SCHEMA_TIMEOUT_SECONDS = 900


def major_of(version: str) -> int:
    """18 for "18.6", 9 for "9.6.24", 18 for "18beta1" (the first number is the major since PostgreSQL 10)."""
    match = re.match(r"\d+", version.strip())
    if not match:
        raise ValueError(f"not a PostgreSQL version: {version!r}")
    return int(match.group())


def check_pg_restore_can_read(bin_dir: Path, pg_dump_version: str) -> int:
    """pg_restore cannot read archives written by a newer pg_dump; say which binaries to use instead."""
    restore_major = tool_major_version(bin_dir / "pg_restore")
    dump_major = major_of(pg_dump_version)
    if restore_major < dump_major:
        raise RestoreSetupError(
            f"the backup was written by pg_dump {pg_dump_version}, but {bin_dir / 'pg_restore'} is version "
            f"{restore_major} and cannot read it: set HOTPOT_PG_BIN_DIR to the bin directory of PostgreSQL "
            f"{dump_major} or newer"
        )
    return restore_major


def _toc_entries(listing: str, *, exclude: tuple[str, ...]) -> Counter:
    """TOC lines without dump ids, catalog OIDs and owner (ownership is checked separately, if at all):
    what remains, "TYPE schema name", is the same for an object however often it was dumped."""
    entries: Counter = Counter()
    prefixes = tuple(kind + " " for kind in exclude)
    for line in listing.splitlines():
        match = _TOC_LINE.match(line)
        if match and not match["entry"].startswith(prefixes):
            entries[match["entry"].rsplit(" ", 1)[0]] += 1
    return entries


def archive_schema(bin_dir: Path, archive: Path, *, with_privileges: bool) -> Counter:
    """Schema entries of a custom-format archive, from `pg_restore --list`."""
    try:
        listing = run([str(bin_dir / "pg_restore"), "--list", str(archive)], timeout=SCHEMA_TIMEOUT_SECONDS)
    except CommandFailed as failed:
        raise RestoreSetupError(f"pg_restore --list cannot read the dump: {failed.tail}") from None
    exclude = DATA_ENTRIES if with_privileges else DATA_ENTRIES + PRIVILEGE_ENTRIES
    return _toc_entries(listing.text, exclude=exclude)


def database_schema(bin_dir: Path, target: PgTarget, *, with_privileges: bool) -> Counter:
    """Schema entries of a live database, as pg_dump reads them from its catalog: the same representation
    as `archive_schema`, so the two compare entry for entry."""
    dump = [str(bin_dir / "pg_dump"), "--format=custom", "--schema-only"]
    if not with_privileges:
        dump.append("--no-privileges")
    with spawn(dump, env=target.env(), timeout=SCHEMA_TIMEOUT_SECONDS) as pg_dump:
        listing = run(
            [str(bin_dir / "pg_restore"), "--list"],
            stdin=pg_dump.stdout,
            timeout=SCHEMA_TIMEOUT_SECONDS,
            check=False,
        )
        pg_dump.stdout.close()  # pg_restore alone reads it: pg_dump must not block if it stopped early
        dumped = pg_dump.wait()
    if dumped != 0 or listing.returncode != 0:
        errors = "\n".join(tail for tail in (pg_dump.tail(), listing.tail) if tail)
        raise RestoreSetupError(f"cannot read the schema of {target.display}: {errors}")
    exclude = DATA_ENTRIES if with_privileges else DATA_ENTRIES + PRIVILEGE_ENTRIES
    return _toc_entries(listing.text, exclude=exclude)


def schema_differences(archived: Counter, restored: Counter) -> list[str]:
    missing = archived - restored
    unexpected = restored - archived
    return [
        f"schema: {entry} is in the backup but not in the restored database" for entry in sorted(missing)
    ] + [f"schema: {entry} is in the restored database but not in the backup" for entry in sorted(unexpected)]


def roles_in_script(script: str) -> set[str]:
    """Roles a restore script names as owners, grantees or default-privilege holders."""
    roles = set()
    for pattern in _ROLE_REFERENCES:
        for name in pattern.findall(script):
            roles.add(name[1:-1].replace('""', '"') if name.startswith('"') else name)
    roles.discard("PUBLIC")
    return roles


def referenced_roles(bin_dir: Path, archive: Path) -> set[str]:
    """Roles the archive's DDL needs to exist when restored with its owners and privileges."""
    try:
        script = run(
            [str(bin_dir / "pg_restore"), "--schema-only", "--file=-", str(archive)],
            timeout=SCHEMA_TIMEOUT_SECONDS,
        )
    except CommandFailed as failed:
        raise RestoreSetupError(f"pg_restore cannot read the dump's schema: {failed.tail}") from None
    return roles_in_script(script.text)


def missing_roles(target: PgTarget, roles: set[str]) -> list[str]:
    with target.connect() as conn:
        present = {name for (name,) in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
    return sorted(roles - present)


@dataclass
class RestoreRun:
    returncode: int
    seconds: float
    errors: list[str] = field(default_factory=list)  # each one fails the restore
    tolerated: list[str] = field(default_factory=list)  # harmless, reported as warnings


def _error_blocks(stderr: str) -> list[str]:
    """pg_restore's messages, each joined with its continuation lines ("Command was: ...")."""
    blocks: list[list[str]] = []
    for line in stderr.splitlines():
        if line.startswith("pg_restore: "):
            blocks.append([line.removeprefix("pg_restore: ")])
        elif blocks and line.strip():
            blocks[-1].append(line.strip())
    return [" ".join(block) for block in blocks]


def judge_stderr(stderr: str, *, server_major: int, restore_major: int) -> tuple[list[str], list[str], int]:
    """Split pg_restore's messages into errors, tolerated errors and the "errors ignored" count.

    The one error tolerated: pg_restore opens every session with SETs of its own version's settings (18
    sends `SET transaction_timeout = 0`), which an older server rejects as an unknown parameter. That error
    says nothing about the restored data, and the manifest checks that follow prove the restore complete.
    """
    errors, tolerated, ignored = [], [], 0
    for block in _error_blocks(stderr):
        if block.startswith("warning: errors ignored on restore:"):
            ignored = int(block.rsplit(":", 1)[1])
            continue
        if not block.startswith("error:"):
            continue
        unknown = _UNKNOWN_SETTING.search(block)
        if (
            unknown
            and server_major < restore_major
            and re.search(rf"Command was: SET {re.escape(unknown['name'])} = ", block)
        ):
            tolerated.append(
                f"pg_restore {restore_major} set {unknown['name']}, which the PostgreSQL {server_major} "
                "server does not have (harmless: the setting only exists on newer servers)"
            )
        else:
            errors.append("pg_restore " + block)
    return errors, sorted(set(tolerated)), ignored


def run_pg_restore(
    bin_dir: Path,
    target: PgTarget,
    archive: Path,
    *,
    jobs: int,
    keep_owners_and_privileges: bool,
    server_major: int,
    restore_major: int,
) -> RestoreRun:
    """Restore `archive` into the (empty) database `target`, to the end: every error is collected rather
    than stopping at the first (--exit-on-error would also stop at the harmless SET an older server rejects,
    see `judge_stderr`). Nothing reads a scratch database that did not restore cleanly.

    Session settings that only speed up a load into a fresh database: commits need not wait for the WAL
    flush (a crash mid-restore fails the restore either way), and index builds get more sort memory.
    """
    argv = [str(bin_dir / "pg_restore"), f"--jobs={jobs}", f"--dbname={target.dbname}"]
    if not keep_owners_and_privileges:
        # Drill servers rarely have production's roles, and a restore run by a maintenance role should not
        # need them: objects end up owned by the restoring role, without the archive's GRANTs.
        argv += ["--no-owner", "--no-privileges"]
    argv.append(str(archive))
    env = target.env()
    env["PGOPTIONS"] = "-c synchronous_commit=off -c maintenance_work_mem=256MB"
    started = time.monotonic()
    # Every message is judged, not only the last few: a drill lists each error, and a harmless SET that an
    # older server rejects (tolerated, once per session) must not hide a real error printed before it.
    result = run(
        argv, env=env, timeout=LONG_RUNNING_SECONDS, check=False, tail_bytes=PG_RESTORE_MESSAGE_BYTES
    )
    seconds = time.monotonic() - started
    stderr = result.tail
    errors, tolerated, ignored = judge_stderr(stderr, server_major=server_major, restore_major=restore_major)
    if result.returncode != 0 and not errors and not tolerated:
        errors.append(f"pg_restore exited with code {result.returncode}: {stderr.strip() or '(no output)'}")
    if ignored and not errors and not tolerated:
        errors.append(f"pg_restore reported {ignored} errors ignored on restore")
    return RestoreRun(result.returncode, seconds, errors, tolerated)
