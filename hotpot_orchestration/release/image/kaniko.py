"""The `kaniko` builder: a Kubernetes Job runs kaniko's executor, which builds from the commit and pushes.

The gates still run locally first (in `publish.py`). Kaniko cannot see the local workspace, so it builds from
a context it can fetch: by default the checkout's `origin` remote at the exact commit
(`git://HOST/PATH#refs/heads/BRANCH#COMMIT`, with `--context-sub-path` for a source below the repository
top), or a configured context URL (`{commit}` is replaced). That suits a source whose Dockerfile builds
everything itself (the real API's multi-stage Rust build), not the sample app, whose binary a gate compiles.

Immutability works as with local builders: when the commit tag already exists, the Job runs with `--no-push`
and only reports its digest; kaniko builds with `--reproducible`, so the same commit gives the same digest.
The digest comes back through the container's termination message (`--digest-file=/dev/termination-log`).

The Job is submitted with the official `kubernetes` client (the one dagster-k8s uses), imported lazily, in
HOTPOT_K8S_BUILD_NAMESPACE. Push credentials come from the kubernetes.io/dockerconfigjson Secret
HOTPOT_KANIKO_REGISTRY_SECRET in that namespace, mounted as kaniko's /kaniko/.docker/config.json. The requests
are exactly these, and deploy/k8s/rbac-release.yaml grants exactly them in the build namespace:
  jobs: create, delete (a build past its deadline)   jobs/status: get   pods: list   pods/log: get
The kaniko pod itself talks to no API server, so it gets no service account token.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hotpot_orchestration.platform.registry import RegistryClient, is_digest
from hotpot_orchestration.release.image.builders import BuilderUnavailable, BuildFailed, BuildRequest
from hotpot_orchestration.release.image.publish import LATEST, ImmutableTagError
from hotpot_orchestration.release.image.source import SourceSnapshot

LABEL_APP = "app.kubernetes.io/name"


@dataclass(frozen=True)
class KanikoSettings:
    namespace: str
    registry_secret: str  # kubernetes.io/dockerconfigjson Secret with push credentials, in `namespace`
    image: str = "gcr.io/kaniko-project/executor:v1.23.2"
    context: str | None = None  # context URL; {commit} is replaced; None: the origin remote at the commit
    timeout_seconds: int = 1800
    insecure_registry: bool = False  # plain HTTP registry (kaniko's --insecure)
    cpu: str = "1"
    memory: str = "2Gi"
    poll_seconds: float = 5.0
    # Past activeDeadlineSeconds the Job controller fails the Job itself; after this grace it is deleted.
    deadline_grace_seconds: float = 60.0


@dataclass(frozen=True)
class RemoteBuild:
    digest: str
    size_bytes: int
    pushed_tags: tuple[str, ...]


def git_context(remote_url: str, branch: str | None, commit: str) -> str:
    """kaniko's git context for a remote URL (https, ssh or scp-like): git://HOST/PATH#REF#COMMIT."""
    url = remote_url.strip()
    scp = re.fullmatch(r"(?:[^@/]+@)?([^:/]+):(?!//)(.+)", url)
    if scp:
        location = f"{scp.group(1)}/{scp.group(2)}"
    else:
        location = re.sub(r"^[a-z+]+://", "", url)
        location = location.split("@", 1)[-1]  # drop user:password@
    ref = f"refs/heads/{branch}" if branch else "refs/heads/main"
    return f"git://{location}#{ref}#{commit}"


def job_name(tag: str) -> str:
    return f"hotpot-image-{re.sub(r'[^a-z0-9-]', '-', tag.lower())[:20]}-{uuid.uuid4().hex[:6]}"


class KanikoBuilder:
    name = "kaniko"
    builds_remotely = True

    def __init__(self, settings: KanikoSettings, api_client: Any = None):
        self.settings = settings
        self._api_client = api_client

    # ------------------------------------------------------------------ manifest

    def context_args(self, snapshot: SourceSnapshot) -> list[str]:
        if self.settings.context:
            return [f"--context={self.settings.context.replace('{commit}', snapshot.commit)}"]
        if not snapshot.remote_url:
            raise BuilderUnavailable(
                "HOTPOT_IMAGE_BUILDER=kaniko builds from the checkout's `origin` remote, and the source has"
                " none: set a remote or configure kaniko_context"
            )
        args = [f"--context={git_context(snapshot.remote_url, snapshot.branch, snapshot.commit)}"]
        if snapshot.subdir:
            args.append(f"--context-sub-path={snapshot.subdir}")
        return args

    def job_manifest(
        self, request: BuildRequest, snapshot: SourceSnapshot, destinations: list[str], push: bool, name: str
    ) -> dict[str, Any]:
        settings = self.settings
        args = [*self.context_args(snapshot), f"--dockerfile={request.dockerfile}"]
        args += [f"--destination={destination}" for destination in destinations]
        args += ["--reproducible", "--digest-file=/dev/termination-log", "--single-snapshot"]
        args += [f"--build-arg=SOURCE_DATE_EPOCH={request.timestamp}"]
        args += [f"--label={key}={value}" for key, value in sorted(request.labels.items())]
        args += [f"--build-arg={key}={value}" for key, value in sorted(request.build_args.items())]
        if settings.insecure_registry:
            args.append("--insecure")
        if not push:
            args.append("--no-push")
        labels = {LABEL_APP: "hotpot-image-build", "app.kubernetes.io/managed-by": "hotpot-orchestration"}
        container: dict[str, Any] = {
            "name": "kaniko",
            "image": settings.image,
            "args": args,
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "resources": {
                "requests": {"cpu": settings.cpu, "memory": settings.memory},
                "limits": {"memory": settings.memory},
            },
        }
        container["volumeMounts"] = [
            {"name": "registry-auth", "mountPath": "/kaniko/.docker", "readOnly": True}
        ]
        pod_spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": [container],
            "volumes": [
                {
                    "name": "registry-auth",
                    "secret": {
                        "secretName": settings.registry_secret,
                        "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                    },
                }
            ],
        }
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": name,
                "namespace": settings.namespace,
                "labels": labels,
                "annotations": {"hotpot/commit": snapshot.commit, "hotpot/image-tag": snapshot.tag},
            },
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": settings.timeout_seconds,
                "ttlSecondsAfterFinished": 24 * 3600,
                "template": {"metadata": {"labels": labels}, "spec": pod_spec},
            },
        }

    # ------------------------------------------------------------------ cluster

    def _api(self):
        if self._api_client is not None:
            return self._api_client
        try:
            from kubernetes import client, config
        except ImportError as error:
            raise BuilderUnavailable("HOTPOT_IMAGE_BUILDER=kaniko needs the `kubernetes` package") from error
        try:
            config.load_incluster_config()
        except config.ConfigException:
            try:
                config.load_kube_config()
            except (config.ConfigException, OSError) as error:
                raise BuilderUnavailable(
                    "HOTPOT_IMAGE_BUILDER=kaniko needs Kubernetes access: no in-cluster service account and"
                    f" no usable kubeconfig ({error})"
                ) from None
        self._api_client = client.ApiClient()
        return self._api_client

    def check(self) -> None:
        self._api()

    def run_job(self, manifest: dict[str, Any], log: Callable[[str], None] = print) -> str:
        """Create the Job, wait for it, and return the digest from the container's termination message."""
        from kubernetes import client

        api = self._api()
        batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        batch.create_namespaced_job(namespace, manifest)
        log(f"kaniko Job {namespace}/{name} created")
        deadline = time.monotonic() + self.settings.timeout_seconds + self.settings.deadline_grace_seconds
        while True:
            status = batch.read_namespaced_job_status(name, namespace).status
            if status.succeeded:
                break
            if status.failed:
                raise BuildFailed(
                    f"kaniko Job {namespace}/{name} failed:\n{self._logs(core, namespace, name)}"
                )
            if time.monotonic() > deadline:
                batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
                raise BuildFailed(f"kaniko Job {namespace}/{name} did not finish in time; deleted")
            time.sleep(self.settings.poll_seconds)
        for pod in core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items:
            for container in pod.status.container_statuses or []:
                terminated = container.state.terminated if container.state else None
                message = (terminated.message or "").strip() if terminated else ""
                if is_digest(message):
                    return message
        raise BuildFailed(f"kaniko Job {namespace}/{name} succeeded without reporting a digest")

    @staticmethod
    def _logs(core, namespace: str, name: str) -> str:
        try:
            pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
            if not pods:
                return "(no pod)"
            return core.read_namespaced_pod_log(pods[0].metadata.name, namespace, tail_lines=40)
        except Exception as error:  # the failure itself matters more than its logs
            return f"(logs unavailable: {error})"

    def build_and_push(
        self,
        request: BuildRequest,
        snapshot: SourceSnapshot,
        registry: RegistryClient,
        repository: str,
        log: Callable[[str], None] = print,
    ) -> RemoteBuild:
        existing = registry.manifest_digest(repository, snapshot.tag)
        base = f"{registry.registry}/{repository}"
        destinations = [f"{base}:{snapshot.tag}", f"{base}:{LATEST}"]
        manifest = self.job_manifest(
            request, snapshot, destinations, existing is None, job_name(snapshot.tag)
        )
        digest = self.run_job(manifest, log)
        if existing is not None and existing != digest:
            raise ImmutableTagError(
                f"{base}:{snapshot.tag} already names {existing}, but kaniko built {digest}"
            )
        stored = registry.get_manifest(repository, digest)
        blobs = [stored.json.get("config", {}), *stored.json.get("layers", [])]
        size = len(stored.body) + sum(int(blob.get("size", 0)) for blob in blobs)
        return RemoteBuild(digest, size, () if existing else (snapshot.tag, LATEST))
