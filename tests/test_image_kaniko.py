"""The `kaniko` builder with the settings of deploy/k8s/config.yaml, as the service account deploy/k8s/
creates for build runs.

No Kubernetes API server runs here. The Job manifest is checked against the real Kubernetes schemas
(kubernetes-validate, strict); the submission (create the Job, poll its status, read the digest from the
pod's termination message, read the log of a failed pod, delete a Job past its deadline) goes through the
official `kubernetes` client to the API stand-in of tests/support/k8s_api.py, which enforces the Roles of
deploy/k8s/ (403 for anything not granted) and plays the Job controller. The registry side is the real
devstack registry: the stand-in's "kaniko" pushes there what the build would have pushed.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import kubernetes_validate
import pytest
from support.deploy import manifests, production_settings, sign_in
from support.k8s_api import KubernetesApiStandIn

from hotpot_orchestration.platform.kubernetes import RELEASE_SERVICE_ACCOUNT
from hotpot_orchestration.platform.registry import RegistryClient
from hotpot_orchestration.release.image import build_resources
from hotpot_orchestration.release.image.builders import BuilderUnavailable, BuildFailed, BuildRequest
from hotpot_orchestration.release.image.kaniko import KanikoBuilder, KanikoSettings, git_context, job_name
from hotpot_orchestration.release.image.publish import ImmutableTagError
from hotpot_orchestration.release.image.resource import ImageBuildResource
from hotpot_orchestration.release.image.source import SourceSnapshot

KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.utils.major_minor(kubernetes_validate.latest_version()))
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SETTINGS = production_settings()  # deploy/k8s/config.yaml: HOTPOT_IMAGE_BUILDER=kaniko


def snapshot(subdir: str = "services/api") -> SourceSnapshot:
    return SourceSnapshot(
        origin=Path("/src"),
        workspace=Path("/tmp/ws"),
        commit=COMMIT,
        tag=COMMIT[:12],
        timestamp=1767225600,
        dirty=False,
        remote_url="git@github.com:thehotpotspot/platform.git",
        subdir=subdir,
        branch="main",
    )


def request() -> BuildRequest:
    return BuildRequest(
        context=Path("/tmp/ws"),
        output=Path("/tmp/oci"),
        timestamp=1767225600,
        labels={"a.b/revision": COMMIT},
    )


def production_builder() -> KanikoBuilder:
    """The builder build_image_job gets from the code location's resources with these settings."""
    image_build = build_resources(SETTINGS)["image_build"]
    builder = image_build.make_builder(plain_http=True)
    assert isinstance(builder, KanikoBuilder)
    return builder


def test_git_context_from_remote_urls():
    assert (
        git_context("git@github.com:acme/api.git", "main", "abc")
        == "git://github.com/acme/api.git#refs/heads/main#abc"
    )
    assert git_context("https://user:token@gitlab.example.com/acme/api.git", None, "abc") == (
        "git://gitlab.example.com/acme/api.git#refs/heads/main#abc"
    )
    assert git_context("ssh://git@github.com/acme/api.git", "release", "abc").endswith(
        "#refs/heads/release#abc"
    )


def test_production_settings_build_in_the_build_namespace_with_the_push_secret():
    settings = production_builder().settings
    assert settings.namespace == SETTINGS.k8s_build_namespace == "hotpot-build"
    assert settings.registry_secret == SETTINGS.kaniko_registry_secret == "hotpot-registry-push"
    (secret,) = [
        d for d in manifests() if d["kind"] == "Secret" and d["metadata"]["name"] == settings.registry_secret
    ]
    assert secret["metadata"]["namespace"] == settings.namespace
    assert secret["type"] == "kubernetes.io/dockerconfigjson"


def test_kaniko_without_its_namespace_and_secret_fails_naming_the_variables():
    with pytest.raises(BuilderUnavailable, match="HOTPOT_K8S_BUILD_NAMESPACE.*HOTPOT_KANIKO_REGISTRY_SECRET"):
        ImageBuildResource(source="/src", builder="kaniko").make_builder(plain_http=False)


@pytest.mark.parametrize("push", [True, False])
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_job_manifest_is_a_valid_kubernetes_job(push, version):
    builder = production_builder()
    destinations = [
        "registry.example.com/thehotpotspot/api:0123456789ab",
        "registry.example.com/thehotpotspot/api:latest",
    ]
    manifest = builder.job_manifest(request(), snapshot(), destinations, push, job_name("0123456789ab"))
    kubernetes_validate.validate(manifest, version, strict=True)
    assert manifest["metadata"]["namespace"] == "hotpot-build"
    pod = manifest["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False  # kaniko talks to no API server
    assert pod["volumes"] == [
        {
            "name": "registry-auth",
            "secret": {
                "secretName": "hotpot-registry-push",
                "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
            },
        }
    ]
    container = pod["containers"][0]
    assert {"name": "registry-auth", "mountPath": "/kaniko/.docker", "readOnly": True} in container[
        "volumeMounts"
    ]
    args = container["args"]
    assert "--context=git://github.com/thehotpotspot/platform.git#refs/heads/main#" + COMMIT in args
    assert "--context-sub-path=services/api" in args
    assert "--reproducible" in args and "--digest-file=/dev/termination-log" in args
    assert "--insecure" in args
    assert ("--no-push" in args) is not push
    assert [a for a in args if a.startswith("--destination=")] == [f"--destination={d}" for d in destinations]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", manifest["metadata"]["name"])
    assert len(manifest["metadata"]["name"]) <= 63


@pytest.fixture
def cluster(monkeypatch, tmp_path):
    """The stand-in with the shipped RBAC; the client signed in as hotpot-release (build runs' account)."""
    api = KubernetesApiStandIn(manifests()).start()
    sign_in(api, monkeypatch, tmp_path, RELEASE_SERVICE_ACCOUNT)
    yield api
    api.stop()
    assert api.rejected == [], "the builder wrote an object the API server would refuse"
    assert api.forbidden() == [], "the builder sent a request the shipped Roles do not grant"


def test_new_commit_tag_is_built_and_pushed_by_the_job(registry, cluster):
    repository = f"test/kaniko-{uuid.uuid4().hex[:8]}"
    # What kaniko pushes from its pod, pushed when the stand-in's Job "runs".
    cluster.job_outcome = lambda job: (
        "succeeded",
        registry.push_test_image(repository, "pushed-by-kaniko", b"kaniko output"),
        "",
    )
    with RegistryClient(registry.host) as client:
        outcome = production_builder().build_and_push(
            request(), snapshot(), client, repository, log=lambda _: None
        )
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", outcome.digest)
    assert outcome.pushed_tags == (COMMIT[:12], "latest")
    assert outcome.size_bytes > 0
    [job] = [obj for key, obj in cluster.objects.items() if key[1] == "jobs"]
    assert job["metadata"]["namespace"] == "hotpot-build"
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--no-push" not in args
    assert f"--destination={registry.host}/{repository}:{COMMIT[:12]}" in args


def test_existing_commit_tag_runs_without_push_and_compares_digests(registry, cluster):
    repository = f"test/kaniko-{uuid.uuid4().hex[:8]}"
    existing = registry.push_test_image(repository, COMMIT[:12], b"first build")
    with RegistryClient(registry.host) as client:
        cluster.job_outcome = lambda job: ("succeeded", existing, "")
        outcome = production_builder().build_and_push(
            request(), snapshot(), client, repository, log=lambda _: None
        )
        assert outcome.pushed_tags == () and outcome.digest == existing
        [job] = [obj for key, obj in cluster.objects.items() if key[1] == "jobs"]
        assert "--no-push" in job["spec"]["template"]["spec"]["containers"][0]["args"]

        cluster.job_outcome = lambda job: ("succeeded", "sha256:" + "f" * 64, "")
        with pytest.raises(ImmutableTagError, match="already names"):
            production_builder().build_and_push(request(), snapshot(), client, repository, log=lambda _: None)


def test_failed_job_reports_the_pod_log(cluster):
    cluster.job_outcome = lambda job: (
        "failed",
        "",
        "error building image: COPY failed: no such file hotpot-api",
    )
    builder = production_builder()
    manifest = builder.job_manifest(request(), snapshot(), ["r/x:y"], True, "hotpot-image-failing")
    with pytest.raises(BuildFailed, match="COPY failed"):
        builder.run_job(manifest, log=lambda _: None)


def test_job_past_its_deadline_is_deleted(cluster):
    base = production_builder().settings
    builder = KanikoBuilder(
        KanikoSettings(
            namespace=base.namespace,
            registry_secret=base.registry_secret,
            timeout_seconds=1,
            deadline_grace_seconds=0,
            poll_seconds=0.05,
        )
    )
    manifest = builder.job_manifest(request(), snapshot(), ["r/x:y"], True, "hotpot-image-hanging")
    with pytest.raises(BuildFailed, match="did not finish in time; deleted"):
        builder.run_job(manifest, log=lambda _: None)
    assert not [key for key in cluster.objects if key[1] in ("jobs", "pods")]
