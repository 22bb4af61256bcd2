"""`build_image_job` end to end: the sample app's gates, a real buildah build, pushes to a real registry."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import dagster as dg
import pytest

from hotpot_devstack.sample_api import SAMPLE_APP_DIR
from hotpot_orchestration.definitions import build_definitions
from hotpot_orchestration.platform.registry import RegistryClient, RepositoryNotFound
from hotpot_orchestration.settings import load_settings

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("buildah") is None, reason="buildah is not installed"),
]

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Hot Pot CI",
    "GIT_AUTHOR_EMAIL": "ci@thehotpotspot.example",
    "GIT_COMMITTER_NAME": "Hot Pot CI",
    "GIT_COMMITTER_EMAIL": "ci@thehotpotspot.example",
    "GIT_AUTHOR_DATE": "2026-01-02T03:04:05Z",
    "GIT_COMMITTER_DATE": "2026-01-02T03:04:05Z",
}


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def app_checkout(tmp_path) -> Path:
    """A git checkout of the sample app (one commit), as HOTPOT_APP_SOURCE would name."""
    checkout = tmp_path / "api"
    shutil.copytree(SAMPLE_APP_DIR, checkout, ignore=shutil.ignore_patterns("hotpot-api", "__pycache__"))
    git(checkout, "init", "-q", "-b", "main")
    git(checkout, "add", "-A")
    git(checkout, "commit", "-q", "-m", "sample api")
    return checkout


def run_build(registry_host: str, repository: str, source: Path | None = None, **settings_changes):
    settings = load_settings({})
    settings = settings.model_copy(
        update={"registry": registry_host, "image_repository": repository, **settings_changes}
    )
    if source is not None:
        settings = settings.model_copy(update={"app_source": source})
    defs = build_definitions(settings)
    job = defs.resolve_job_def("build_image_job")
    return job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)


def metadata_of(result) -> dict:
    [materialization] = result.asset_materializations_for_node("api_image")
    return {key: getattr(value, "value", value) for key, value in materialization.metadata.items()}


def gate_observations(result) -> list[tuple[str, str]]:
    events = [e for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    observations = [e.event_specific_data.asset_observation.metadata for e in events]
    return [(o["gate"].value, o["status"].value) for o in observations]


def test_default_sample_app_builds_and_pushes_commit_tag_and_latest(registry):
    repository = f"test/api-{uuid.uuid4().hex[:8]}"
    result = run_build(registry.host, repository, source=SAMPLE_APP_DIR)  # as make dev sets HOTPOT_APP_SOURCE
    assert result.success, result.all_events
    metadata = metadata_of(result)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=SAMPLE_APP_DIR, capture_output=True, text=True)
    assert metadata["commit"] == commit.stdout.strip()
    tag = metadata["commit"][:12]
    assert metadata["tag"] == tag
    with RegistryClient(registry.host) as client:
        assert sorted(client.list_tags(repository)) == sorted([tag, "latest"])
        assert client.manifest_digest(repository, tag) == metadata["digest"]
        assert client.manifest_digest(repository, "latest") == metadata["digest"]
        top, config = client.image_config(repository, tag)
    assert top.json["annotations"]["org.opencontainers.image.revision"] == metadata["commit"]
    assert "org.opencontainers.image.created" in top.json["annotations"]
    assert metadata["image"] == f"{registry.host}/{repository}:{tag}@{metadata['digest']}"
    assert metadata["size_bytes"] > 100_000  # a static binary
    assert metadata["build_seconds"] > 0 and metadata["pushed"] is True
    assert config["config"]["Entrypoint"] == ["/hotpot-api"]
    assert config["config"]["Labels"]["org.opencontainers.image.revision"] == metadata["commit"]
    assert gate_observations(result) == [
        ("format", "passed"),
        ("lint", "passed"),
        ("compile", "passed"),
        ("smoke-test", "passed"),
    ]


def test_same_commit_again_is_a_no_op_and_a_different_image_under_the_tag_fails(registry, app_checkout):
    repository = f"test/api-{uuid.uuid4().hex[:8]}"
    first = run_build(registry.host, repository, app_checkout)
    assert first.success
    digest, tag = metadata_of(first)["digest"], metadata_of(first)["tag"]
    assert tag == git(app_checkout, "rev-parse", "HEAD")[:12]

    second = run_build(registry.host, repository, app_checkout)
    assert second.success
    again = metadata_of(second)
    assert again["digest"] == digest and again["pushed"] is False

    # Someone pushed another image under the next commit's tag: the build of that commit must fail.
    (app_checkout / "README.md").write_text("changed\n")
    git(app_checkout, "commit", "-q", "-am", "docs")
    next_tag = git(app_checkout, "rev-parse", "HEAD")[:12]
    foreign = registry.push_test_image(repository, next_tag, b"not the build of this commit")
    third = run_build(registry.host, repository, app_checkout)
    assert not third.success
    failure = third.failure_data_for_node("api_image").error
    assert "immutable" in failure.message and foreign in failure.message
    with RegistryClient(registry.host) as client:
        assert client.manifest_digest(repository, next_tag) == foreign  # untouched
        assert client.manifest_digest(repository, "latest") == digest  # not moved


def test_a_failing_gate_blocks_the_build_and_shows_its_output(registry, app_checkout):
    repository = f"test/api-{uuid.uuid4().hex[:8]}"
    source = app_checkout / "src" / "server.c"
    source.write_text(source.read_text().replace("int main(void) {", "int main(void) {   "))
    git(app_checkout, "commit", "-q", "-am", "bad formatting")
    result = run_build(registry.host, repository, app_checkout)
    assert not result.success
    assert gate_observations(result) == [
        ("format", "failed"),
        ("lint", "not run"),
        ("compile", "not run"),
        ("smoke-test", "not run"),
    ]
    failure = result.failure_data_for_node("api_image").user_failure_data
    assert "trailing blanks" in failure.metadata["output_tail"].value
    assert failure.metadata["gate"].value == "format"
    with RegistryClient(registry.host) as client, pytest.raises(RepositoryNotFound):
        client.list_tags(repository)  # nothing was pushed


def test_docker_builder_fails_clearly_without_an_engine(registry, app_checkout):
    repository = f"test/api-{uuid.uuid4().hex[:8]}"
    result = run_build(registry.host, repository, app_checkout, image_builder="docker")
    if result.success:
        pytest.skip("a Docker engine with buildx is available here")
    message = result.failure_data_for_node("api_image").error.message
    assert "HOTPOT_IMAGE_BUILDER=docker" in message


def test_an_unset_build_context_fails_naming_the_variable(registry):
    result = run_build(registry.host, f"test/api-{uuid.uuid4().hex[:8]}")  # HOTPOT_APP_SOURCE unset
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "HOTPOT_APP_SOURCE is not set" in failure.event_specific_data.error.message
