"""Read a stored backup back in full and hold it against its manifest.

`pg_restore --list` reads only the archive's table of contents, which a truncated or corrupted archive still
has. Here the whole object is streamed from S3 through `pg_restore --file=-` (no database involved), which
decompresses every block and writes the SQL script a restore would run; the script's COPY data is counted
row by row and compared with the manifest's exact counts. The SHA-256 is recomputed over the same bytes, whole
(against the manifest) and part by part (against the checksum S3 keeps in the object's metadata).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotpot_orchestration.backups.catalog import Backup
from hotpot_orchestration.backups.errors import s3_error, s3_errors
from hotpot_orchestration.backups.stream import MiB, PartHasher, same_s3_checksum
from hotpot_orchestration.platform.proc import PIPE, spawn

# pg_dump writes a comment before every archive entry: "-- [Data for ]Name: x; Type: TABLE DATA; ...".
# Only lines inside entries of the right type are parsed, so SQL text inside a function body that happens
# to look like a COPY header is never mistaken for one.
_ENTRY = re.compile(rb"^-- (?:Data for )?Name: .*; Type: (?P<type>[A-Z ]+); Schema: ")
_IDENT = rb'(?:"(?:[^"]|"")*"|[^\s."(]+)'
_COPY = re.compile(
    rb"^COPY (?P<schema>" + _IDENT + rb")\.(?P<name>" + _IDENT + rb")(?: \(.*\))? +FROM stdin;$"
)
_SETVAL = re.compile(rb"^SELECT pg_catalog\.setval\('(?P<name>(?:[^']|'')*)', ")
_LO_OPEN = re.compile(rb"^SELECT pg_catalog\.lo_open\('(?P<oid>\d+)', ")
_QUALIFIED = re.compile(rb"(?P<schema>" + _IDENT + rb")\.(?P<name>" + _IDENT + rb")")
_END_OF_COPY = b"\\."
# At most this many differences are spelled out in a verdict.
MAX_REPORTED = 20
# pg_restore can spin forever on some corrupted compressed blocks; a healthy one never stays silent this long
# while its input is flowing or already complete.
STALL_SECONDS = 120.0


def _unquote(identifier: bytes) -> str:
    text = identifier.decode()
    return text[1:-1].replace('""', '"') if text.startswith('"') else text


@dataclass
class ArchiveContents:
    """What a restore script holds: rows per table, the sequences it sets, the large objects it writes."""

    tables: dict[tuple[str, str], int] = field(default_factory=dict)
    sequences: set[tuple[str, str]] = field(default_factory=set)
    large_objects: set[int] = field(default_factory=set)


def parse_restore_script(lines: Iterable[bytes]) -> ArchiveContents:
    """Parse the script pg_restore writes, given as lines without their newline."""
    contents = ArchiveContents()
    entry_type = b""
    copying: tuple[str, str] | None = None
    rows = 0
    for line in lines:
        if copying is not None:
            if line == _END_OF_COPY:
                contents.tables[copying] = rows
                copying = None
            else:
                rows += 1  # COPY's text format escapes newlines, so a row is one line
            continue
        if line.startswith(b"-- "):
            entry = _ENTRY.match(line)
            if entry:
                entry_type = entry["type"]
            continue
        if entry_type == b"TABLE DATA" and (copy := _COPY.match(line)):
            copying, rows = (_unquote(copy["schema"]), _unquote(copy["name"])), 0
        elif entry_type == b"SEQUENCE SET" and (setval := _SETVAL.match(line)):
            name = _QUALIFIED.fullmatch(setval["name"].replace(b"''", b"'"))
            if name:
                contents.sequences.add((_unquote(name["schema"]), _unquote(name["name"])))
        elif entry_type == b"BLOBS" and (lo_open := _LO_OPEN.match(line)):
            contents.large_objects.add(int(lo_open["oid"]))
    return contents


def compare(
    manifest: dict[str, Any],
    contents: ArchiveContents,
    *,
    sha256: str,
    size: int,
    s3_checksum: str,
    stored_s3_checksum: str | None,
) -> list[str]:
    """Every way the archive read back differs from its manifest (empty: it matches).

    `s3_checksum` is S3's form of SHA-256 (`stream.composite_sha256`) of the bytes read, `stored_s3_checksum`
    the one S3 keeps in the object's metadata.
    """
    problems = []
    if size != manifest["dump_bytes"]:
        problems.append(f"the object has {size:,} bytes, the manifest says {manifest['dump_bytes']:,}")
    if sha256 != manifest["sha256"]:
        problems.append(f"SHA-256 of the object is {sha256}, the manifest says {manifest['sha256']}")
    if stored_s3_checksum is None:
        problems.append("the object carries no SHA-256 checksum in its S3 metadata (x-amz-checksum-sha256)")
    elif not same_s3_checksum(stored_s3_checksum, s3_checksum):
        problems.append(
            f"the object's SHA-256 checksum in S3 is {stored_s3_checksum}, its bytes give {s3_checksum}"
        )
    expected = {(table["schema"], table["name"]): table["rows"] for table in manifest["tables"]}
    for table in sorted(expected.keys() - contents.tables.keys()):
        problems.append(f"table {'.'.join(table)} is in the manifest but has no data in the archive")
    for table in sorted(contents.tables.keys() - expected.keys()):
        problems.append(f"table {'.'.join(table)} has data in the archive but is not in the manifest")
    for table in sorted(expected.keys() & contents.tables.keys()):
        if expected[table] != contents.tables[table]:
            problems.append(
                f"table {'.'.join(table)}: {contents.tables[table]:,} rows in the archive, "
                f"{expected[table]:,} in the manifest"
            )
    for sequence in sorted(
        {(seq["schema"], seq["name"]) for seq in manifest["sequences"]} - contents.sequences
    ):
        problems.append(f"sequence {'.'.join(sequence)} is not set by the archive")
    if len(contents.large_objects) != manifest["large_objects"]:
        problems.append(
            f"{len(contents.large_objects)} large objects in the archive, {manifest['large_objects']} in the "
            "manifest"
        )
    return problems


class _Activity:
    """When the pipeline last moved, for the stall watchdog."""

    def __init__(self) -> None:
        self.at = time.monotonic()

    def touch(self) -> None:
        self.at = time.monotonic()


def _lines(stream, activity: _Activity) -> Iterator[bytes]:
    """Lines of `stream` without newlines, read in large chunks (far faster than line by line)."""
    rest = b""
    while chunk := stream.read1(MiB):
        activity.touch()
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


def _watch(process, activity: _Activity, stall_seconds: float, stalled: threading.Event) -> None:
    while process.poll() is None:
        if time.monotonic() - activity.at > stall_seconds:
            stalled.set()
            process.kill()
            return
        time.sleep(min(1.0, stall_seconds / 4))


@dataclass(frozen=True)
class Verdict:
    ok: bool
    detail: str
    tables: int
    rows: int
    seconds: float


def verify_backup(
    client, bucket: str, backup: Backup, *, bin_dir: Path, endpoint: str, stall_seconds: float = STALL_SECONDS
) -> Verdict:
    """Stream the dump through pg_restore and compare. A mismatch is a failed Verdict; being unable to read
    the object at all (S3 down) raises BackupError, since it says nothing about the backup itself."""
    started = time.monotonic()
    location = f"s3://{bucket}/{backup.dump_key}"
    with s3_errors(endpoint, f"reading {location}"):
        obj = client.get_object(Bucket=bucket, Key=backup.dump_key, ChecksumMode="ENABLED")
    hasher = PartHasher(backup.manifest["part_bytes"])
    size = 0
    feed_error: list[BaseException] = []
    activity = _Activity()
    stalled = threading.Event()

    def feed(stdin) -> None:
        nonlocal size
        try:
            for chunk in obj["Body"].iter_chunks(MiB):
                hasher.update(chunk)
                size += len(chunk)
                stdin.write(chunk)
                activity.touch()
        except BrokenPipeError:
            pass  # pg_restore stopped early; its exit status and stderr say why
        except BaseException as error:
            feed_error.append(error)
        finally:
            stdin.close()

    with spawn([str(bin_dir / "pg_restore"), "--file=-"], stdin=PIPE) as process:
        feeder = threading.Thread(target=feed, args=(process.stdin,), name="archive-feed", daemon=True)
        feeder.start()
        watchdog = threading.Thread(
            target=_watch,
            args=(process, activity, stall_seconds, stalled),
            name="pg_restore-watchdog",
            daemon=True,
        )
        watchdog.start()
        contents = parse_restore_script(_lines(process.stdout, activity))
        returncode = process.wait()
        feeder.join()
        watchdog.join()
    if feed_error:
        raise s3_error(feed_error[0], endpoint, f"reading {location}")

    problems = []
    if stalled.is_set():
        problems.append(f"pg_restore made no progress for {stall_seconds:.0f} s and was stopped")
    elif returncode != 0:
        problems.append(f"pg_restore could not read the archive (exit {returncode}): {process.tail()}")
    problems += compare(
        backup.manifest,
        contents,
        sha256=hasher.whole.hexdigest(),
        size=size,
        s3_checksum=hasher.composite(),
        stored_s3_checksum=obj.get("ChecksumSHA256"),
    )
    rows = sum(contents.tables.values())
    if problems:
        shown = problems[:MAX_REPORTED]
        if len(problems) > MAX_REPORTED:
            shown.append(f"... and {len(problems) - MAX_REPORTED} more differences")
        detail = "; ".join(shown)
    else:
        detail = (
            f"read {size:,} bytes in full: {len(contents.tables)} tables, {rows:,} rows, "
            f"{len(contents.sequences)} sequences and {len(contents.large_objects)} large objects as in the "
            f"manifest; SHA-256 {backup.manifest['sha256']} matches"
        )
    return Verdict(not problems, detail, len(contents.tables), rows, time.monotonic() - started)
