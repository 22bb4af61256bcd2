"""The `kaniko` builder. No Kubernetes cluster runs here: the Job manifest is checked against the real
Kubernetes schemas (kubernetes-validate, strict), and the submission (create the Job, wait for it, read the
digest from the pod's termination message) is exercised with the official `kubernetes` client against a small
fake of the four API endpoints it calls. The registry side is the real devstack registry."""

from __future__ import annotations

import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import kubernetes_validate
import pytest

from hotpot_orchestration.platform.registry import RegistryClient
from hotpot_orchestration.release.image.builders import BuildFailed, BuildRequest
from hotpot_orchestration.release.image.kaniko import KanikoBuilder, KanikoSettings, git_context, job_name
from hotpot_orchestration.release.image.publish import ImmutableTagError
from hotpot_orchestration.release.image.source import SourceSnapshot

KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.utils.major_minor(kubernetes_validate.latest_version()))
COMMIT = "0123456789abcdef0123456789abcdef01234567"


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


@pytest.mark.parametrize("push", [True, False])
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_job_manifest_is_a_valid_kubernetes_job(push, version):
    builder = KanikoBuilder(
        KanikoSettings(
            service_account="image-builder", registry_secret="registry-push", insecure_registry=True
        )
    )
    destinations = [
        "registry.example.com/thehotpotspot/api:0123456789ab",
        "registry.example.com/thehotpotspot/api:latest",
    ]
    manifest = builder.job_manifest(request(), snapshot(), destinations, push, job_name("0123456789ab"))
    kubernetes_validate.validate(manifest, version, strict=True)
    args = manifest["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--context=git://github.com/thehotpotspot/platform.git#refs/heads/main#" + COMMIT in args
    assert "--context-sub-path=services/api" in args
    assert "--reproducible" in args and "--digest-file=/dev/termination-log" in args
    assert "--insecure" in args
    assert ("--no-push" in args) is not push
    assert [a for a in args if a.startswith("--destination=")] == [f"--destination={d}" for d in destinations]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", manifest["metadata"]["name"])
    assert len(manifest["metadata"]["name"]) <= 63


class FakeKubernetesApi:
    """Just enough of the Kubernetes API for one Job: create, read status, list its pods, read a pod's log."""

    def __init__(self, digest: str, succeed: bool = True):
        self.digest, self.succeed = digest, succeed
        self.jobs: dict[str, dict] = {}
        self.polls = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body) -> None:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header(
                    "Content-Type", "application/json" if not isinstance(body, str) else "text/plain"
                )
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.jobs[body["metadata"]["name"]] = body
                self._send(201, body)

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if match := re.fullmatch(r"/apis/batch/v1/namespaces/[^/]+/jobs/([^/]+)/status", path):
                    api.polls += 1
                    job = dict(api.jobs[match.group(1)])
                    done = {"succeeded": 1} if api.succeed else {"failed": 1}
                    job["status"] = {"active": 1} if api.polls < 2 else done
                    return self._send(200, job)
                if re.fullmatch(r"/api/v1/namespaces/[^/]+/pods", path):
                    terminated = {
                        "exitCode": 0 if api.succeed else 1,
                        "message": api.digest if api.succeed else "",
                    }
                    pod = {
                        "metadata": {"name": "kaniko-pod"},
                        "status": {
                            "containerStatuses": [
                                {
                                    "name": "kaniko",
                                    "image": "kaniko",
                                    "imageID": "",
                                    "ready": False,
                                    "restartCount": 0,
                                    "state": {"terminated": terminated},
                                }
                            ]
                        },
                    }
                    return self._send(
                        200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [pod]}
                    )
                if path.endswith("/pods/kaniko-pod/log"):
                    return self._send(200, "error building image: COPY failed: no such file hotpot-api")
                self._send(404, {"kind": "Status", "code": 404})

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def api_client(self):
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        return client.ApiClient(configuration)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_api_for():
    started = []

    def start(digest: str, succeed: bool = True) -> FakeKubernetesApi:
        api = FakeKubernetesApi(digest, succeed)
        started.append(api)
        return api

    yield start
    for api in started:
        api.close()


def builder_with(api: FakeKubernetesApi) -> KanikoBuilder:
    return KanikoBuilder(KanikoSettings(namespace="ci", poll_seconds=0.01), api_client=api.api_client())


def test_new_commit_tag_is_built_and_pushed_by_the_job(registry, fake_api_for):
    repository = f"test/kaniko-{uuid.uuid4().hex[:8]}"
    built = registry.push_test_image(
        repository, "pushed-by-kaniko", b"kaniko output"
    )  # what kaniko would push
    api = fake_api_for(built)
    with RegistryClient(registry.host) as client:
        outcome = builder_with(api).build_and_push(
            request(), snapshot(), client, repository, log=lambda _: None
        )
    assert outcome.digest == built and outcome.pushed_tags == (COMMIT[:12], "latest")
    assert outcome.size_bytes > 0
    [job] = api.jobs.values()
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--no-push" not in args
    assert f"--destination={registry.host}/{repository}:{COMMIT[:12]}" in args


def test_existing_commit_tag_runs_without_push_and_compares_digests(registry, fake_api_for):
    repository = f"test/kaniko-{uuid.uuid4().hex[:8]}"
    existing = registry.push_test_image(repository, COMMIT[:12], b"first build")
    with RegistryClient(registry.host) as client:
        same = fake_api_for(existing)
        outcome = builder_with(same).build_and_push(
            request(), snapshot(), client, repository, log=lambda _: None
        )
        assert outcome.pushed_tags == () and outcome.digest == existing
        [job] = same.jobs.values()
        assert "--no-push" in job["spec"]["template"]["spec"]["containers"][0]["args"]

        other = fake_api_for("sha256:" + "f" * 64)
        with pytest.raises(ImmutableTagError, match="already names"):
            builder_with(other).build_and_push(request(), snapshot(), client, repository, log=lambda _: None)


def test_failed_job_reports_the_pod_log(fake_api_for):
    api = fake_api_for("", succeed=False)
    builder = builder_with(api)
    manifest = builder.job_manifest(request(), snapshot(), ["r/x:y"], True, "hotpot-image-failing")
    with pytest.raises(BuildFailed, match="COPY failed"):
        builder.run_job(manifest, log=lambda _: None)
