"""A byte stream of unknown length into one S3 object, through a multipart upload, with bounded memory.

boto3's `upload_fileobj` streams too, but it cannot hash what it sends or hold the completion back until
the producer (pg_dump) has exited successfully; this module does both and leaves retries of each request to
botocore.

Every part carries its SHA-256, which S3 checks on arrival and keeps: the object's checksum metadata is then
S3's SHA-256 of the parts' SHA-256s (`composite_sha256`). The SHA-256 of the whole stream is returned for the
manifest. (Object metadata is fixed when the upload starts, before the whole stream's hash is known; stamping
it in would take a server-side copy of every byte, for a 1 TB dump another 1 TB of S3 work.)

The object appears under its key only when `complete()` is called. Leaving the `with` block any other way
aborts the upload, so S3 keeps neither an object nor stored parts; the bucket's lifecycle rule
(`ensure_abort_incomplete_uploads`) removes parts left behind when even the abort could not reach S3.

A stalled upload is bounded: when neither the stream nor S3 makes progress for `stall_seconds`, `consume()`
raises `UploadStalled` without waiting for the stuck requests, and once any part failed no other part is
sent (not even botocore's retries of parts already in flight).
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

MiB = 1024 * 1024
S3_MAX_PARTS = 10_000
S3_MAX_PART_BYTES = 5 * 1024 * MiB
# S3's floor is 5 MiB; 8 MiB is boto3's own default and keeps the request count low on small dumps.
MIN_PART_BYTES = 8 * MiB
# Bytes of parts held at once (read ahead + in flight) when parts are small; large parts get one in flight.
BUFFER_BUDGET = 32 * MiB
READ_CHUNK = MiB

ABORT_RULE_ID_PREFIX = "hotpot-abort-incomplete-multipart-uploads"
# How often the watchdog looks for a stall.
WATCH_INTERVAL = 0.25


class UploadStalled(RuntimeError):
    """Neither the stream nor S3 made progress for the allowed time."""

    def __init__(self, message: str, part: int | None):
        super().__init__(message)
        self.part = part


class PartsCancelled(RuntimeError):
    """Raised inside a part's request once the upload stopped: no part is sent after one failed."""


def abort_rule_id(prefix: str) -> str:
    """The lifecycle rule ID of one backup prefix: each prefix in a bucket keeps a rule of its own."""
    return f"{ABORT_RULE_ID_PREFIX}-{hashlib.sha256(prefix.encode()).hexdigest()[:16]}"


def composite_sha256(part_digests: Sequence[bytes]) -> str:
    """S3's SHA-256 checksum of a multipart object, in S3's `BASE64-PARTS` form, from its parts' digests."""
    combined = hashlib.sha256(b"".join(part_digests)).digest()
    return f"{base64.b64encode(combined).decode()}-{len(part_digests)}"


def same_s3_checksum(stored: str, computed: str) -> bool:
    """Whether two of S3's checksums agree. S3 (and moto) add the "-PARTS" suffix in some responses and not in
    others; the digest covers the part count anyway."""
    return stored.split("-")[0] == computed.split("-")[0]


class PartHasher:
    """SHA-256 of a byte stream as a whole and of each `part_size` slice of it, fed in any chunk sizes."""

    def __init__(self, part_size: int):
        self.part_size = part_size
        self.whole = hashlib.sha256()
        self.part_digests: list[bytes] = []
        self._part = hashlib.sha256()
        self._part_filled = 0

    def update(self, data: bytes | memoryview) -> None:
        self.whole.update(data)
        view = memoryview(data)
        while view:
            take = view[: self.part_size - self._part_filled]
            self._part.update(take)
            self._part_filled += len(take)
            view = view[len(take) :]
            if self._part_filled == self.part_size:
                self._close_part()

    def composite(self) -> str:
        """`composite_sha256` of the parts so far, the last one possibly short."""
        if self._part_filled:
            self._close_part()
        return composite_sha256(self.part_digests)

    def _close_part(self) -> None:
        self.part_digests.append(self._part.digest())
        self._part = hashlib.sha256()
        self._part_filled = 0


def plan_part_size(expected_max_bytes: int) -> int:
    """The smallest whole-MiB part size, at least 8 MiB, that fits `expected_max_bytes` in 10,000 parts."""
    needed = -(-max(expected_max_bytes, 0) // S3_MAX_PARTS)
    size = max(MIN_PART_BYTES, -(-needed // MiB) * MiB)
    if size > S3_MAX_PART_BYTES:
        raise ValueError(f"{expected_max_bytes} bytes exceed what one S3 object can hold")
    return size


@dataclass(frozen=True)
class Progress:
    bytes: int
    seconds: float

    @property
    def bytes_per_second(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Uploaded:
    bucket: str
    key: str
    bytes: int
    sha256: str
    checksum_sha256: str  # S3's, see composite_sha256
    parts: int
    part_size: int


class MultipartUpload:
    """Context manager: `consume()` a stream into parts, then `complete()`; anything else aborts.

    The reading thread hashes each chunk as it arrives and hands full parts to a small pool of uploader
    threads, which hash their part for S3; at most `BUFFER_BUDGET` bytes (or one part in flight, if parts
    are bigger) wait in memory. `metadata` becomes the object's user metadata.
    """

    def __init__(
        self,
        client,
        bucket: str,
        key: str,
        *,
        part_size: int,
        extra_args: dict[str, str],
        metadata: dict[str, str] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        progress_interval: float = 10.0,
        stall_seconds: float = 300.0,
        on_stall: Callable[[], None] | None = None,
    ):
        if not MIN_PART_BYTES <= part_size <= S3_MAX_PART_BYTES:
            raise ValueError(f"part size {part_size} is outside {MIN_PART_BYTES}..{S3_MAX_PART_BYTES}")
        self.client = client
        self.bucket = bucket
        self.key = key
        self.part_size = part_size
        self.extra_args = {
            "ContentType": "application/octet-stream",
            "ChecksumAlgorithm": "SHA256",
            "Metadata": metadata or {},
            **extra_args,
        }
        self.on_progress = on_progress
        self.progress_interval = progress_interval
        self.in_flight = max(1, BUFFER_BUDGET // part_size - 1)
        self.upload_id: str | None = None
        self._sha256 = hashlib.sha256()
        self._bytes = 0
        self._parts: dict[int, tuple[str, bytes]] = {}  # part number: (ETag, SHA-256 digest)
        self._started = 0.0
        self._completed = False
        # `on_stall` runs on the watchdog's thread when a stall is found (the caller stops the producer, so
        # a read blocked on it returns).
        self.stall_seconds = stall_seconds
        self.on_stall = on_stall
        self._lock = threading.Lock()
        self._last_progress = 0.0
        self._reading_since: float | None = None
        self._in_flight: dict[int, float] = {}  # part number: when its upload started
        self._stalled: UploadStalled | None = None
        self._stopped = threading.Event()

    def __enter__(self) -> MultipartUpload:
        created = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key, **self.extra_args)
        self.upload_id = created["UploadId"]
        self._started = self._last_progress = time.monotonic()
        # Checked before every attempt of every part's request, botocore's retries included.
        self.client.meta.events.register(
            "before-send.s3.UploadPart", self._refuse_when_stopped, unique_id=f"stop-{self.upload_id}"
        )
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stopped.set()
        if self.upload_id is not None:
            self.client.meta.events.unregister(
                "before-send.s3.UploadPart", unique_id=f"stop-{self.upload_id}"
            )
        if self._completed or self.upload_id is None:
            return
        try:
            self.abort()
        except Exception as abort_error:
            if exc is None:
                raise
            # The failure that got us here matters more; say what remains and what will remove it.
            exc.add_note(
                f"aborting the multipart upload of s3://{self.bucket}/{self.key} failed too ({abort_error}); "
                "the bucket's lifecycle rule deletes its parts a day after it started"
            )

    def abort(self) -> None:
        """Drop the upload and its stored parts. Raises if S3 cannot be reached (the lifecycle rule stays)."""
        self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
        self.upload_id = None

    @property
    def progress(self) -> Progress:
        return Progress(self._bytes, time.monotonic() - self._started)

    def consume(self, stream: BinaryIO) -> None:
        """Read `stream` to its end, uploading it part by part. Raises the first part failure, or
        UploadStalled."""
        slots = threading.BoundedSemaphore(self.in_flight)
        failures: list[BaseException] = []
        next_report = time.monotonic() + self.progress_interval
        # The watchdog guards this method only: completing and the caller's work after it are not its
        # business (the caller's snapshot must outlive a slow completion).
        finished = threading.Event()
        threading.Thread(target=self._watch, args=(finished,), name="s3-stall-watchdog", daemon=True).start()
        # Not a `with`: after a failure, parts stuck inside S3 requests are not waited for.
        pool = ThreadPoolExecutor(max_workers=self.in_flight, thread_name_prefix="s3-part")
        try:
            part_number = 0
            while True:
                while not slots.acquire(timeout=WATCH_INTERVAL):
                    self._raise_if_stopped(failures)
                self._raise_if_stopped(failures)
                buffer = self._read_part(stream)
                # A part that failed (or a stall found) while reading: the part just read is not sent.
                self._raise_if_stopped(failures)
                if not buffer:
                    slots.release()
                    break
                part_number += 1
                if part_number > S3_MAX_PARTS:
                    raise RuntimeError(
                        f"the stream outgrew {S3_MAX_PARTS} parts of {self.part_size // MiB} MiB: plan a "
                        "larger part size from a larger expected size"
                    )
                with self._lock:
                    self._in_flight[part_number] = time.monotonic()
                future = pool.submit(self._upload_part, part_number, buffer)
                future.add_done_callback(
                    lambda done, n=part_number: self._part_done(done, n, slots, failures)
                )
                if self.on_progress and time.monotonic() >= next_report:
                    self.on_progress(self.progress)
                    next_report = time.monotonic() + self.progress_interval
            # Every part still in flight must be stored before completing.
            while True:
                with self._lock:
                    if not self._in_flight:
                        break
                self._raise_if_stopped(failures)
                time.sleep(WATCH_INTERVAL / 5)
            with self._lock:
                finished.set()
            # A stall declared before the watchdog was told to stop still counts.
            self._raise_if_stopped(failures)
        except BaseException:
            finished.set()
            self._stopped.set()
            raise
        finally:
            pool.shutdown(wait=not self._stopped.is_set(), cancel_futures=True)

    def _raise_if_stopped(self, failures: list[BaseException]) -> None:
        if self._stalled is not None:
            raise self._stalled
        if failures:
            self._stopped.set()
            raise failures[0]

    def _watch(self, finished: threading.Event) -> None:
        """Declares a stall when nothing moved for `stall_seconds`: no byte read from the stream and no part
        stored, while the reader waits for the stream or for S3."""
        while not finished.wait(WATCH_INTERVAL):
            with self._lock:
                waited = time.monotonic() - self._last_progress
                if finished.is_set() or waited < self.stall_seconds:
                    continue
                oldest = min(self._in_flight, key=self._in_flight.get, default=None)
                where = f"s3://{self.bucket}/{self.key}"
                if oldest is not None and self._reading_since is None:
                    message = f"S3 stored no part for {waited:.0f} s: part {oldest} of {where} stalled in S3"
                else:
                    message = f"the stream gave no bytes for {waited:.0f} s while uploading {where}"
                    oldest = None
                self._stalled = UploadStalled(message, oldest)
                self._stopped.set()
            if self.on_stall:
                self.on_stall()
            return

    def _read_part(self, stream: BinaryIO) -> bytearray:
        buffer = bytearray(self.part_size)
        view = memoryview(buffer)
        filled = 0
        self._reading_since = time.monotonic()
        while filled < self.part_size:
            got = stream.readinto(view[filled : filled + READ_CHUNK])
            if not got:
                break
            # hashlib releases the GIL on large updates, so hashing overlaps the uploads.
            self._sha256.update(view[filled : filled + got])
            filled += got
            self._bytes += got
            self._last_progress = time.monotonic()
        self._reading_since = None
        view.release()
        del buffer[filled:]
        return buffer

    def _refuse_when_stopped(self, request, **kwargs) -> None:
        from botocore.utils import percent_encode

        if self._stopped.is_set() and f"uploadId={percent_encode(self.upload_id or '')}" in request.url:
            raise PartsCancelled(f"the upload of s3://{self.bucket}/{self.key} stopped")

    def _upload_part(self, number: int, body: bytearray) -> None:
        digest = hashlib.sha256(body).digest()
        response = self.client.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=body,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=base64.b64encode(digest).decode(),
        )
        self._parts[number] = (response["ETag"], digest)

    def _part_done(
        self, done: Future, number: int, slots: threading.BoundedSemaphore, failures: list[BaseException]
    ) -> None:
        if done.cancelled():
            return
        with self._lock:
            self._in_flight.pop(number, None)
            if done.exception() is None:
                self._last_progress = time.monotonic()
        if done.exception() is not None:
            self._stopped.set()
            failures.append(done.exception())
        slots.release()

    def complete(self) -> Uploaded:
        """Make the object visible: S3 assembles the parts, checking each part's SHA-256 it was sent."""
        parts = sorted(self._parts.items())
        if not parts:
            # S3 rejects a multipart upload of no parts; an empty stream is never a valid archive anyway.
            raise RuntimeError("the stream was empty: nothing to upload")
        self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={
                "Parts": [
                    {"PartNumber": number, "ETag": etag, "ChecksumSHA256": base64.b64encode(digest).decode()}
                    for number, (etag, digest) in parts
                ]
            },
        )
        self._completed = True
        if self.on_progress:
            self.on_progress(self.progress)
        return Uploaded(
            bucket=self.bucket,
            key=self.key,
            bytes=self._bytes,
            sha256=self._sha256.hexdigest(),
            checksum_sha256=composite_sha256([digest for _, (_, digest) in parts]),
            parts=len(parts),
            part_size=self.part_size,
        )


def ensure_abort_incomplete_uploads(client, bucket: str, prefix: str, days: int = 1) -> bool:
    """Make sure a lifecycle rule aborts multipart uploads under `prefix` left incomplete for `days`.

    Idempotent: an existing rule that already covers the prefix as fast or faster is left alone, and other
    rules on the bucket are kept (S3 replaces the whole configuration on every put), those of other backup
    prefixes too: the rule's ID is derived from the prefix. Returns True if the
    configuration was changed.
    """
    from botocore.exceptions import ClientError

    try:
        rules = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
            raise
        rules = []
    for rule in rules:
        rule_prefix = rule.get("Filter", {}).get("Prefix", rule.get("Prefix", ""))
        abort_after = rule.get("AbortIncompleteMultipartUpload", {}).get("DaysAfterInitiation")
        if (
            rule.get("Status") == "Enabled"
            and prefix.startswith(rule_prefix)
            and abort_after is not None
            and abort_after <= days
        ):
            return False
    rule_id = abort_rule_id(prefix)
    rules = [rule for rule in rules if rule.get("ID") != rule_id]
    rules.append(
        {
            "ID": rule_id,
            "Status": "Enabled",
            "Filter": {"Prefix": prefix},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": days},
        }
    )
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
    return True
