"""Image builders chosen by HOTPOT_IMAGE_BUILDER.

- `buildah` (the local default, daemonless) and `docker` (buildx) build on this machine into an OCI image
  layout; `publish.py` then pushes that layout itself, so the digest is known before any tag moves.
- `kaniko` builds inside a Kubernetes Job (see `kaniko.py`) and pushes from there.

Builds are reproducible: the image creation time and file times come from the commit time
(`--timestamp` / SOURCE_DATE_EPOCH), so rebuilding a commit gives the same digest.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hotpot_orchestration.platform.proc import CommandFailed, last_lines, run

LOCAL_TAG = "localhost/hotpot-build:latest"
# As long as a build in a kaniko Job may take (KanikoSettings.timeout_seconds' default).
BUILD_TIMEOUT_SECONDS = 1800


class BuilderUnavailable(RuntimeError):
    """The chosen builder cannot run here (missing binary, no engine, no cluster access)."""


class BuildFailed(RuntimeError):
    """The builder ran and failed."""


@dataclass(frozen=True)
class BuildRequest:
    context: Path
    output: Path  # OCI image layout directory to create
    timestamp: int  # SOURCE_DATE_EPOCH
    dockerfile: str = "Dockerfile"
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)  # on the manifest (OCI)
    build_args: Mapping[str, str] = field(default_factory=dict)
    platform: str = "linux/amd64"


def _run(
    command: Sequence[str], log: Callable[[str], None], what: str, env: Mapping[str, str] | None = None
) -> None:
    log("$ " + " ".join(command))
    try:
        run(command, timeout=BUILD_TIMEOUT_SECONDS, env=env, merge_stderr=True)
    except CommandFailed as failed:
        raise BuildFailed(f"{what} failed ({failed.how}):\n{last_lines(failed.tail)}") from None


class BuildahBuilder:
    """`buildah build` into private storage under a temporary directory, then `buildah push` to `oci:`.

    As root it uses the vfs storage driver and chroot isolation (no overlay mounts or user namespaces
    needed); every build gets its own storage root and run root, so concurrent builds never collide.
    """

    name = "buildah"

    def __init__(self, binary: str = "buildah", storage_parent: Path | None = None):
        self.binary = binary
        self.storage_parent = storage_parent

    def check(self) -> None:
        if shutil.which(self.binary) is None:
            raise BuilderUnavailable(
                f"HOTPOT_IMAGE_BUILDER=buildah but `{self.binary}` is not on PATH"
                " (Debian: apt-get install buildah)"
            )

    def storage_args(self, storage: Path) -> list[str]:
        return ["--root", str(storage / "root"), "--runroot", str(storage / "run"), "--storage-driver", "vfs"]

    def build_command(self, request: BuildRequest, storage: Path) -> list[str]:
        command = [self.binary, *self.storage_args(storage), "build", "--isolation", "chroot"]
        command += ["--format", "oci", "--identity-label=false", "--timestamp", str(request.timestamp)]
        command += [
            "--platform",
            request.platform,
            "--pull=never",
            "-f",
            str(request.context / request.dockerfile),
        ]
        for key, value in sorted(request.labels.items()):
            command += ["--label", f"{key}={value}"]
        for key, value in sorted(request.annotations.items()):
            command += ["--annotation", f"{key}={value}"]
        for key, value in sorted(request.build_args.items()):
            command += ["--build-arg", f"{key}={value}"]
        return [*command, "-t", LOCAL_TAG, str(request.context)]

    def push_command(self, request: BuildRequest, storage: Path) -> list[str]:
        return [self.binary, *self.storage_args(storage), "push", "--format", "oci", "--quiet", LOCAL_TAG,
                f"oci:{request.output}:latest"]  # fmt: skip

    def build(self, request: BuildRequest, log: Callable[[str], None] = print) -> None:
        self.check()
        parent = self.storage_parent
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        storage = Path(tempfile.mkdtemp(prefix="buildah-", dir=parent))
        try:
            _run(self.build_command(request, storage), log, "buildah build")
            _run(self.push_command(request, storage), log, "buildah push to an OCI layout")
        finally:
            shutil.rmtree(storage, ignore_errors=True)


class DockerBuilder:
    """`docker buildx build` with the OCI exporter (a tarball of an OCI layout), timestamps rewritten to
    SOURCE_DATE_EPOCH, no provenance or SBOM attestations (they would change the digest on every build).
    Needs a Docker engine with buildx; fails clearly when there is none."""

    name = "docker"

    def __init__(self, binary: str = "docker"):
        self.binary = binary

    def check(self) -> None:
        if shutil.which(self.binary) is None:
            raise BuilderUnavailable(f"HOTPOT_IMAGE_BUILDER=docker but `{self.binary}` is not on PATH")
        for probe, need in (
            (["buildx", "version"], "the buildx plugin"),
            (["info", "--format", "{{.ID}}"], "an engine"),
        ):
            try:
                run([self.binary, *probe], timeout=30, merge_stderr=True)
            except CommandFailed as failed:
                raise BuilderUnavailable(
                    f"HOTPOT_IMAGE_BUILDER=docker needs {need}:"
                    f" `{self.binary} {' '.join(probe)}` failed: {last_lines(failed.tail, 5)}"
                ) from None

    def build_command(self, request: BuildRequest, archive: Path) -> list[str]:
        command = [self.binary, "buildx", "build", "--platform", request.platform]
        command += ["--file", str(request.context / request.dockerfile), "--provenance=false", "--sbom=false"]
        command += ["--build-arg", f"SOURCE_DATE_EPOCH={request.timestamp}"]
        for key, value in sorted(request.labels.items()):
            command += ["--label", f"{key}={value}"]
        for key, value in sorted(request.annotations.items()):
            command += ["--annotation", f"manifest:{key}={value}"]
        for key, value in sorted(request.build_args.items()):
            command += ["--build-arg", f"{key}={value}"]
        command += ["--output", f"type=oci,dest={archive},rewrite-timestamp=true"]
        return [*command, str(request.context)]

    def build(self, request: BuildRequest, log: Callable[[str], None] = print) -> None:
        import os

        self.check()
        archive = request.output.with_suffix(".tar")
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(request.timestamp), "DOCKER_BUILDKIT": "1"}
        _run(self.build_command(request, archive), log, "docker buildx build", env=env)
        request.output.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(request.output, filter="data")
        archive.unlink()
