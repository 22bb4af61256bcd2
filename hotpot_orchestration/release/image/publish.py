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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotpot_orchestration.platform.registry import RegistryClient, RegistryError, sha256_digest
from hotpot_orchestration.release.image.builders import BuildRequest
from hotpot_orchestration.release.image.gates import GATES_FILE, Gate, GateResult, load_gates, run_gates
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


@dataclass(frozen=True)
class PushOutcome:
    digest: str
    pushed_tags: tuple[str, ...]
    uploaded_blobs: int


def push_image(registry: RegistryClient, repository: str, image: OciImage, tag: str) -> PushOutcome:
    """Push under the immutable `tag`, then `latest`; a no-op if `tag` already names this digest."""
    existing = registry.manifest_digest(repository, tag)
    if existing == image.digest:
        return PushOutcome(image.digest, (), 0)
    if existing is not None:
        raise ImmutableTagError(
            f"{registry.registry}/{repository}:{tag} already names {existing}, but this build of the same "
            f"commit is {image.digest}: commit tags are immutable, so nothing was pushed (was the build not "
            f"reproducible, or was the tag pushed by something else?)"
        )
    uploaded = sum(
        registry.upload_blob(repository, blob["digest"], image.blob_path(blob["digest"]))
        for blob in image.blobs
    )
    for name in (tag, LATEST):
        registry.put_manifest(repository, name, image.manifest, image.media_type)
    stored = registry.manifest_digest(repository, tag)
    if stored != image.digest:
        raise RegistryError(
            f"{registry.registry}/{repository}:{tag} reads back as {stored}, pushed {image.digest}"
        )
    return PushOutcome(image.digest, (tag, LATEST), uploaded)


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


def image_labels(snapshot: SourceSnapshot) -> dict[str, str]:
    labels = {"org.opencontainers.image.revision": snapshot.commit}
    if snapshot.remote_url and "@" not in snapshot.remote_url:  # never leak credentials of a remote URL
        labels["org.opencontainers.image.source"] = snapshot.remote_url
    return labels


def build_and_publish(
    *,
    source: Path,
    registry: RegistryClient,
    repository: str,
    builder,
    gates_file: str = GATES_FILE,
    sha_length: int = DEFAULT_SHA_LENGTH,
    work_root: Path | None = None,
    log: Callable[[str], None] = print,
    on_gate: Callable[[GateResult], None] | None = None,
    gates: Sequence[Gate] | None = None,
) -> ImageBuild:
    """The whole of `api_image`: snapshot, gates (raising `GateFailed`), build, immutable push.

    `gates` replaces the source's gates file when given."""
    builder.check()
    if work_root is not None:
        work_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="hotpot-image-", dir=work_root))
    try:
        snapshot = snapshot_source(source, scratch / "source", sha_length)
        log(f"source {snapshot.origin} at {snapshot.commit} (tag {snapshot.tag})")
        if snapshot.dirty:
            log("the checkout has uncommitted changes under the source: they are not part of this build")
        if gates is None:
            gates = load_gates(snapshot.workspace, gates_file)
        results = run_gates(gates, snapshot.workspace, on_result=on_gate)
        started = time.monotonic()
        request = BuildRequest(
            context=snapshot.workspace,
            output=scratch / "oci",
            timestamp=snapshot.timestamp,
            labels=image_labels(snapshot),
        )
        if getattr(builder, "builds_remotely", False):
            outcome = builder.build_and_push(request, snapshot, registry, repository, log=log)
            build_seconds = time.monotonic() - started
            digest, size, pushed_tags = outcome.digest, outcome.size_bytes, outcome.pushed_tags
        else:
            builder.build(request, log=log)
            build_seconds = time.monotonic() - started
            image = read_layout(request.output)
            log(f"built {image.digest} ({image.size_bytes} bytes) in {build_seconds:.1f} s")
            pushed = push_image(registry, repository, image, snapshot.tag)
            digest, size, pushed_tags = image.digest, image.size_bytes, pushed.pushed_tags
        if pushed_tags:
            log(f"pushed {registry.registry}/{repository} tags {', '.join(pushed_tags)} -> {digest}")
        else:
            log(f"{registry.registry}/{repository}:{snapshot.tag} already is {digest}: nothing pushed")
        return ImageBuild(
            registry=registry.registry,
            repository=repository,
            tag=snapshot.tag,
            digest=digest,
            size_bytes=size,
            build_seconds=round(build_seconds, 3),
            commit=snapshot.commit,
            commit_time=snapshot.timestamp,
            builder=builder.name,
            pushed_tags=tuple(pushed_tags),
            dirty_checkout=snapshot.dirty,
            gates=tuple(results),
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
