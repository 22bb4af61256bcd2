"""A barman-cloud base backup unpacked into a data directory, several parts at a time.

barman-cloud-backup writes the data directory as tar archives of at most `--max-archive-size` each
(`data.tar.snappy`, `data_0001.tar.snappy`, ...), every file whole in one of them. barman-cloud-restore
reads them one after the other through Python's tarfile. Here each part streams from S3 through its
decompressor into GNU tar, PARTS_AT_ONCE of them side by side, largest first. Each part must be whole: its
compressed stream ends where the object ends, the tar ends with its end-of-archive blocks, and tar exits 0.
Each tar writes into a directory of its own, moved into the data directory once it is done: two tars
creating the same directory at once make GNU tar fail ("Cannot open: No such file or directory").
"""

from __future__ import annotations

import bz2
import os
import re
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from hotpot_orchestration.pitr.barman import BarmanCloud
from hotpot_orchestration.platform import proc

PARTS_AT_ONCE = 4
CHUNK_BYTES = 1024 * 1024
# A tar archive ends with two 512-byte blocks of zeros (then padding, zeros too).
_END_OF_ARCHIVE = bytes(1024)
# What the data directory's parts are called: data.tar[.ext], data_0001.tar[.ext], ...; a tablespace's
# parts are named by its oid instead of "data".
_PART = re.compile(r"^(?P<base>data|\d+)(?:_(?P<number>\d{4}))?\.tar(?:\.(?P<extension>gz|bz2|snappy|lz4))?$")
_COMPRESSION = {None: None, "gz": "gzip", "bz2": "bzip2", "snappy": "snappy", "lz4": "lz4"}
PROGRESS_SECONDS = 10.0


class UnpackError(RuntimeError):
    """A part of the base backup is missing, damaged or could not be written."""


@dataclass(frozen=True)
class Part:
    key: str
    size: int
    compression: str | None
    number: int  # data.tar is 0, data_0001.tar 1, ...

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[1]


def base_backup_parts(client, barman: BarmanCloud, backup_id: str) -> list[Part]:
    """The data directory's parts of `backup_id`, largest first. A backup with tablespaces is refused: a
    scratch recovery has nowhere of its own to put them."""
    prefix = f"{barman.server_prefix}base/{backup_id}/"
    parts, tablespaces, info = [], set(), False
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=barman.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            name = item["Key"][len(prefix) :]
            info = info or name == "backup.info"
            match = _PART.match(name)
            if match is None:
                continue
            if match["base"] != "data":
                tablespaces.add(match["base"])
                continue
            number = int(match["number"] or 0)
            parts.append(Part(item["Key"], item["Size"], _COMPRESSION[match["extension"]], number))
    where = f"s3://{barman.bucket}/{prefix}"
    if not info:
        raise UnpackError(f"base backup {backup_id} is not in the object store: no {where}backup.info")
    if not parts:
        raise UnpackError(f"base backup {backup_id} has no data.tar part in {where}")
    if tablespaces:
        raise UnpackError(
            f"base backup {backup_id} holds tablespaces (oids {', '.join(sorted(tablespaces))}): recover it "
            "with barman-cloud-restore --tablespace NAME:LOCATION onto a server of its own"
        )
    numbers = {part.number for part in parts}
    missing = [number for number in range(max(numbers) + 1) if number not in numbers]
    if missing:
        names = ", ".join("data.tar" if n == 0 else f"data_{n:04d}.tar" for n in missing[:5])
        raise UnpackError(f"base backup {backup_id} lacks parts of its data directory in {where}: {names}")
    return sorted(parts, key=lambda part: part.size, reverse=True)


class _Decompressor:
    """One part's stream decompressed chunk by chunk; `finish` says whether the stream ended whole."""

    def __init__(self, compression: str | None):
        self.compression = compression
        if compression == "gzip":
            self._codec = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        elif compression == "bzip2":
            self._codec = bz2.BZ2Decompressor()
        elif compression == "snappy":
            import snappy  # python-snappy: barman's own snappy codec (the `snappy` extra)

            self._codec = snappy.StreamDecompressor()
        elif compression is not None:
            raise UnpackError(
                f"{compression}-compressed base backups cannot be unpacked here: take them with "
                "snappy or gzip"
            )
        else:
            self._codec = None

    def __call__(self, data: bytes) -> bytes:
        return data if self._codec is None else self._codec.decompress(data)

    def finish(self) -> bool:
        if self.compression in ("gzip", "bzip2"):
            return self._codec.eof and not self._codec.unused_data
        if self.compression == "snappy":
            return not self._codec.remains
        return True


class _Stopped(Exception):
    """Another part failed: this one stops where it is."""


def _staging(data: Path, part: Part) -> Path:
    return data / f".unpacking-{part.number:04d}"


def _unpack_part(client, bucket: str, part: Part, data: Path, stop: threading.Event) -> None:
    decompress = _Decompressor(part.compression)
    staging = _staging(data, part)
    staging.mkdir()
    with proc.spawn(
        ["tar", "--extract", "--file=-", f"--directory={staging}", "--no-same-owner"],
        stdin=proc.PIPE,
        stdout=proc.DEVNULL,
    ) as tar:
        tail = b""
        try:
            body = client.get_object(Bucket=bucket, Key=part.key)["Body"]
            for chunk in body.iter_chunks(CHUNK_BYTES):
                if stop.is_set():
                    raise _Stopped
                out = decompress(chunk)
                tar.stdin.write(out)
                tail = (tail + out[-len(_END_OF_ARCHIVE) :])[-len(_END_OF_ARCHIVE) :]
            tar.stdin.close()
        except BrokenPipeError:
            pass  # tar stopped reading: its exit status and message say why
        except _Stopped:
            raise
        except Exception as error:
            raise UnpackError(f"{part.name} could not be read: {error}") from None
        returncode = tar.wait()
        if returncode != 0:
            raise UnpackError(f"tar could not unpack {part.name} (exit {returncode}): {tar.tail()}")
        if not (decompress.finish() and tail == _END_OF_ARCHIVE):
            raise UnpackError(f"{part.name} ends early: the object is truncated or damaged in the store")


def _move_into(source: Path, target: Path) -> None:
    """Every entry of `source` into `target`, then `source` removed: what `target` lacks moves whole, a
    directory it has already is merged."""
    with os.scandir(source) as entries:
        for entry in entries:
            destination = target / entry.name
            if entry.is_dir(follow_symlinks=False) and destination.is_dir() and not destination.is_symlink():
                _move_into(Path(entry.path), destination)
            else:
                os.replace(entry.path, destination)
    source.rmdir()


def unpack_base_backup(
    client, barman: BarmanCloud, backup_id: str, data: Path, *, log: Callable[[str], None] = print
) -> int:
    """Every part of the data directory of `backup_id` into `data`; the bytes read from the store. On any
    failure the others stop within a chunk and UnpackError names the part."""
    parts = base_backup_parts(client, barman, backup_id)
    total = sum(part.size for part in parts)
    stop = threading.Event()
    done, last_report = 0, time.monotonic()
    with ThreadPoolExecutor(PARTS_AT_ONCE) as pool:
        futures = {pool.submit(_unpack_part, client, barman.bucket, part, data, stop): part for part in parts}
        try:
            for future in as_completed(futures):
                future.result()
                _move_into(_staging(data, futures[future]), data)  # one at a time, on this thread
                done += futures[future].size
                if time.monotonic() - last_report >= PROGRESS_SECONDS:
                    last_report = time.monotonic()
                    log(f"base backup {backup_id}: {done / 1e6:,.0f} of {total / 1e6:,.0f} MB unpacked")
        except BaseException:
            stop.set()
            raise
    return total
