"""Dagster resources of the image concern: the registry, the build settings, the tag policy and the image a
release run is about. Thin wrappers: the work is in `hotpot_orchestration.platform.registry` and the plain
modules beside this one."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from hotpot_orchestration.release.image.policy import COMMIT_TAGS, ORDERS, TagPolicy
from hotpot_orchestration.release.image.source import DEFAULT_SHA_LENGTH
from hotpot_orchestration.settings import DEFAULTS


class RegistryNotConfigured(RuntimeError):
    """HOTPOT_REGISTRY is unset."""


class RegistryResource(dg.ConfigurableResource):
    """The OCI registry holding the API image (HOTPOT_REGISTRY / HOTPOT_IMAGE_REPOSITORY).

    Credentials, when the registry needs them, come from HOTPOT_REGISTRY_USERNAME and
    HOTPOT_REGISTRY_PASSWORD through `EnvVar` (basic auth, or the login for a bearer-token service).
    """

    registry: str = Field(default="", description="HOST[:PORT] of the registry; empty: not configured")
    repository: str = Field(default=DEFAULTS.image_repository, description="repository of the API image")
    username: str | None = Field(default=None, description="from HOTPOT_REGISTRY_USERNAME")
    password: str | None = Field(default=None, description="from HOTPOT_REGISTRY_PASSWORD")
    plain_http: bool | None = Field(
        default=None, description="plain HTTP instead of HTTPS; unset: only for loopback registries"
    )
    page_size: int = Field(default=100, description="tags asked for per page (`n`)")
    max_attempts: int = Field(default=5, description="attempts on 429, 5xx and connection errors")
    timeout_seconds: float = 30.0

    def client(self):
        from hotpot_orchestration.platform.registry import RegistryClient

        if not self.registry:
            raise RegistryNotConfigured(
                "HOTPOT_REGISTRY is not set: give the registry as HOST[:PORT] (for a local stack, the"
                " devstack registry's host)"
            )
        return RegistryClient(
            self.registry,
            username=self.username or None,
            password=self.password if self.username else None,
            plain_http=self.plain_http,
            page_size=self.page_size,
            max_attempts=self.max_attempts,
            timeout=self.timeout_seconds,
        )


class ImageBuildResource(dg.ConfigurableResource):
    """How `api_image` builds: the source (HOTPOT_APP_SOURCE) and the builder (HOTPOT_IMAGE_BUILDER)."""

    source: str = Field(
        description="checkout of the API's source, with a Dockerfile and gates.yaml at its top"
    )
    builder: str = Field(default=DEFAULTS.image_builder, description="buildah, docker or kaniko")
    sha_length: int = Field(default=DEFAULT_SHA_LENGTH, description="characters of the commit SHA in the tag")
    work_dir: str | None = Field(default=None, description="parent of build workspaces; unset: the temp dir")
    buildah_binary: str = "buildah"
    docker_binary: str = "docker"
    kaniko_namespace: str | None = Field(
        default=None, description="namespace of kaniko build Jobs (HOTPOT_K8S_BUILD_NAMESPACE)"
    )
    kaniko_image: str = Field(default="gcr.io/kaniko-project/executor:v1.23.2")
    kaniko_registry_secret: str | None = Field(
        default=None,
        description="kubernetes.io/dockerconfigjson Secret with push credentials, in the build namespace "
        "(HOTPOT_KANIKO_REGISTRY_SECRET)",
    )
    kaniko_context: str | None = Field(
        default=None,
        description="kaniko build context (git://, s3://...); unset: the checkout's origin at the commit",
    )
    kaniko_timeout_seconds: int = 1800

    def make_builder(self, plain_http: bool):
        from hotpot_orchestration.release.image.builders import BuildahBuilder, DockerBuilder

        if self.builder == "buildah":
            storage = Path(self.work_dir) / "buildah" if self.work_dir else None
            return BuildahBuilder(self.buildah_binary, storage_parent=storage)
        if self.builder == "docker":
            return DockerBuilder(self.docker_binary)
        if self.builder == "kaniko":
            from hotpot_orchestration.release.image.builders import BuilderUnavailable
            from hotpot_orchestration.release.image.kaniko import KanikoBuilder, KanikoSettings

            if not self.kaniko_namespace or not self.kaniko_registry_secret:
                raise BuilderUnavailable(
                    "HOTPOT_IMAGE_BUILDER=kaniko needs HOTPOT_K8S_BUILD_NAMESPACE (where build Jobs run) and "
                    "HOTPOT_KANIKO_REGISTRY_SECRET (the push credentials' Secret there)"
                )
            return KanikoBuilder(
                KanikoSettings(
                    namespace=self.kaniko_namespace,
                    registry_secret=self.kaniko_registry_secret,
                    image=self.kaniko_image,
                    context=self.kaniko_context,
                    timeout_seconds=self.kaniko_timeout_seconds,
                    insecure_registry=plain_http,
                )
            )
        raise ValueError(
            f"HOTPOT_IMAGE_BUILDER={self.builder!r} is not valid: expected buildah, docker or kaniko"
        )


class ImageTagPolicyResource(dg.ConfigurableResource):
    """Which tags `new_image_tag_sensor` considers, and how it picks the newest (see `policy.py`)."""

    pattern: str = Field(default=COMMIT_TAGS, description="regex a tag must match in full")
    order: str = Field(default="created", description="semver, or created (image config creation time)")
    allow_prerelease: bool = Field(
        default=False, description="semver order: consider 1.2.3-rc.1 and the like"
    )
    immutable_tags: bool = Field(
        default=True, description="a tag, once resolved to a digest, never changes (saves a request per tick)"
    )

    def policy(self) -> TagPolicy:
        if self.order not in ORDERS:
            raise ValueError(
                f"image tag order {self.order!r} is not valid: expected one of {', '.join(ORDERS)}"
            )
        return TagPolicy(self.pattern, self.order, self.allow_prerelease)


class ReleaseImageResource(dg.ConfigurableResource):
    """The image a release run is about. `new_image_tag_sensor` fills it through run config
    (`resources.release_image.config`); empty in runs started by hand without it."""

    tag: str = ""
    digest: str = ""
    repository: str = ""
    registry: str = ""

    @property
    def is_set(self) -> bool:
        return bool(self.digest and self.repository and self.registry)

    @property
    def reference(self) -> str:
        """`registry/repository@digest`: what deployments pin (a tag could move)."""
        return f"{self.registry}/{self.repository}@{self.digest}"

    @property
    def tagged_reference(self) -> str:
        return f"{self.registry}/{self.repository}:{self.tag}@{self.digest}"
