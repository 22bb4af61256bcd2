"""Gated, immutable image publication: snapshot the source, run its gates, build, push `<sha>` and `latest`.

The commit tag is immutable. The image is built first (reproducibly) and its digest compared with what the
registry already holds under the tag:
- tag absent: push the blobs and the manifest under the commit tag, then `latest`;
- same digest: nothing is pushed (a re-run of a commit changes nothing in the registry, `latest` included);
- another digest: `ImmutableTagError`, and no tag moves.
Local builders hand over an OCI layout that this module pushes blob by blob through the registry client, so
the digest is known before anything is written. Kaniko pushes from its pod (see `kaniko.py`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hotpot_orchestration.platform.registry import RegistryClient, RegistryError, sha256_digest
from hotpot_orchestration.release.image.builders import BuildRequest
from hotpot_orchestration.release.image.gates import (
    GateResult,
    check_gate_results,
    iter_gates,
    load_gates,
)
from hotpot_orchestration.release.image.source import DEFAULT_SHA_LENGTH, SourceSnapshot, snapshot_source

LATEST = "latest"


class ImmutableTagError(RegistryError):
    """The commit's tag already names a different image."""


@dataclass(frozen=True)
class OciImage:
    """An image in a local OCI image layout (one manifest)."""

    layout: Path
    digest: str
    media_type: str
    manifest: bytes
    blobs: tuple[dict[str, Any], ...]  # config first, then layers

    @property
    def size_bytes(self) -> int:
        return len(self.manifest) + sum(int(blob["size"]) for blob in self.blobs)

    def blob_path(self, digest: str) -> Path:
        algorithm, hexdigest = digest.split(":", 1)
        return self.layout / "blobs" / algorithm / hexdigest


def read_layout(layout: Path) -> OciImage:
    index = json.loads((layout / "index.json").read_text())
    entries = index.get("manifests") or []
    if len(entries) != 1:
        raise RegistryError(f"OCI layout {layout} holds {len(entries)} manifests, expected exactly one")
    digest = entries[0]["digest"]
    algorithm, hexdigest = digest.split(":", 1)
    body = (layout / "blobs" / algorithm / hexdigest).read_bytes()
    if sha256_digest(body) != digest:
        raise RegistryError(f"OCI layout {layout}: manifest does not match its digest {digest}")
    manifest = json.loads(body)
    media_type = manifest.get("mediaType") or entries[0].get("mediaType")
    return OciImage(layout, digest, media_type, body, (manifest["config"], *manifest["layers"]))


def push_image(registry: RegistryClient, repository: str, image: OciImage, tag: str) -> tuple[str, ...]:
    """Push under the immutable `tag`, then `latest`; returns the tags pushed: none if `tag` already names
    this digest."""
    existing = registry.manifest_digest(repository, tag)
    if existing == image.digest:
        return ()
    if existing is not None:
        raise ImmutableTagError(
            f"{registry.registry}/{repository}:{tag} already names {existing}, but this build of the same "
            f"commit is {image.digest}: commit tags are immutable, so nothing was pushed (was the build not "
            f"reproducible, or was the tag pushed by something else?)"
        )
    for blob in image.blobs:
        registry.upload_blob(repository, blob["digest"], image.blob_path(blob["digest"]))
    for name in (tag, LATEST):
        registry.put_manifest(repository, name, image.manifest, image.media_type)
    stored = registry.manifest_digest(repository, tag)
    if stored != image.digest:
        raise RegistryError(
            f"{registry.registry}/{repository}:{tag} reads back as {stored}, pushed {image.digest}"
        )
    return (tag, LATEST)


@dataclass(frozen=True)
class ImageBuild:
    """What `api_image` records about a build."""

    registry: str
    repository: str
    tag: str
    digest: str
    size_bytes: int
    build_seconds: float
    commit: str
    commit_time: int
    builder: str
    pushed_tags: tuple[str, ...]
    dirty_checkout: bool
    gates: tuple[GateResult, ...] = field(default=())

    @property
    def reference(self) -> str:
        return f"{self.registry}/{self.repository}:{self.tag}@{self.digest}"

    @property
    def pushed(self) -> bool:
        return bool(self.pushed_tags)


def image_annotations(snapshot: SourceSnapshot) -> dict[str, str]:
    """Manifest annotations: the creation time there lets the new-tag sensor order builds by reading the
    manifest alone, without fetching each image's config."""
    created = datetime.fromtimestamp(snapshot.timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"org.opencontainers.image.created": created, "org.opencontainers.image.revision": snapshot.commit}


def image_labels(snapshot: SourceSnapshot) -> dict[str, str]:
    labels = {"org.opencontainers.image.revision": snapshot.commit}
    if snapshot.remote_url and "@" not in snapshot.remote_url:  # never leak credentials of a remote URL
        labels["org.opencontainers.image.source"] = snapshot.remote_url
    return labels


class BuildSession:
    """One build of the source: a scratch directory with a clean snapshot of the commit, the gates run in
    it, then the build and the immutable push. A context manager: the scratch directory goes on exit.
    """

    def __init__(
        self,
        *,
        source: Path,
        registry: RegistryClient,
        repository: str,
        builder,
        sha_length: int = DEFAULT_SHA_LENGTH,
        work_root: Path | None = None,
        log: Callable[[str], None] = print,
    ):
        self.source, self.registry, self.repository, self.builder = source, registry, repository, builder
        self.sha_length, self.work_root, self.log = sha_length, work_root, log
        self.scratch: Path | None = None
        self.snapshot: SourceSnapshot | None = None
        self.gate_results: list[GateResult] = []

    def __enter__(self) -> BuildSession:
        self.builder.check()
        if self.work_root is not None:
            self.work_root.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix="hotpot-image-", dir=self.work_root))
        try:
            self.snapshot = snapshot_source(self.source, self.scratch / "source", self.sha_length)
        except BaseException:
            shutil.rmtree(self.scratch, ignore_errors=True)
            raise
        snapshot = self.snapshot
        self.log(f"source {snapshot.origin} at {snapshot.commit} (tag {snapshot.tag})")
        if snapshot.dirty:
            self.log("the checkout has uncommitted changes under the source: they are not part of this build")
        return self

    def __exit__(self, *exc_info) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def gates(self) -> Iterator[GateResult]:
        """Run the snapshot's own gates.yaml, yielding each result as it comes."""
        assert self.snapshot is not None, "enter the session first"
        gates = load_gates(self.snapshot.workspace)
        for result in iter_gates(gates, self.snapshot.workspace):
            self.gate_results.append(result)
            yield result

    def build_and_push(self) -> ImageBuild:
        """Build and push; refuses to run unless every gate passed (raises `GateFailed` otherwise)."""
        assert self.snapshot is not None and self.scratch is not None, "enter the session first"
        check_gate_results(self.gate_results)
        snapshot, registry, repository = self.snapshot, self.registry, self.repository
        started = time.monotonic()
        request = BuildRequest(
            context=snapshot.workspace,
            output=self.scratch / "oci",
            timestamp=snapshot.timestamp,
            labels=image_labels(snapshot),
            annotations=image_annotations(snapshot),
        )
        if getattr(self.builder, "builds_remotely", False):
            outcome = self.builder.build_and_push(request, snapshot, registry, repository, log=self.log)
            build_seconds = time.monotonic() - started
            digest, size, pushed_tags = outcome.digest, outcome.size_bytes, outcome.pushed_tags
        else:
            self.builder.build(request, log=self.log)
            build_seconds = time.monotonic() - started
            image = read_layout(request.output)
            self.log(f"built {image.digest} ({image.size_bytes} bytes) in {build_seconds:.1f} s")
            pushed_tags = push_image(registry, repository, image, snapshot.tag)
            digest, size = image.digest, image.size_bytes
        if pushed_tags:
            self.log(f"pushed {registry.registry}/{repository} tags {', '.join(pushed_tags)} -> {digest}")
        else:
            self.log(f"{registry.registry}/{repository}:{snapshot.tag} already is {digest}: nothing pushed")
        return ImageBuild(
            registry=registry.registry,
            repository=repository,
            tag=snapshot.tag,
            digest=digest,
            size_bytes=size,
            build_seconds=round(build_seconds, 3),
            commit=snapshot.commit,
            commit_time=snapshot.timestamp,
            builder=self.builder.name,
            pushed_tags=tuple(pushed_tags),
            dirty_checkout=snapshot.dirty,
            gates=tuple(self.gate_results),
        )
