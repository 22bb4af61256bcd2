"""A release's image, pushed for real to a test registry."""

from __future__ import annotations

import uuid

from hotpot_orchestration.release.image.resource import ReleaseImageResource


def pushed_release_image(registry, tag: str = "v2") -> ReleaseImageResource:
    """An image pushed under `tag` to a repository of its own in `registry`, as a release is given it."""
    repository = f"thehotpotspot/api-{uuid.uuid4().hex[:8]}"
    return ReleaseImageResource(
        tag=tag,
        digest=registry.push_test_image(repository, tag),
        repository=repository,
        registry=registry.host,
    )
