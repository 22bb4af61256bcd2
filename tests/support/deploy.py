"""The shipped deployment files as tests read them: the manifests of deploy/k8s/, the settings that
deploy/k8s/config.yaml gives the code location, and the objects of the API's namespace that the routers
work on (the seed's Deployments, Ingress and HTTPRoute, which the application's own manifests create)."""

from __future__ import annotations

from pathlib import Path

import yaml

from hotpot_orchestration.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_DIR = DEPLOY / "k8s"
HELM_VALUES = DEPLOY / "helm" / "values.yaml"
ORCHESTRATION_NAMESPACE = "hotpot-orchestration"
CONFIG_MAP = "hotpot-orchestration-config"
ENV_SECRET = "hotpot-orchestration-env"
IMAGE_V1 = "registry.example.com/thehotpotspot/api:v1@sha256:" + "1" * 64
IMAGE_V2 = "registry.example.com/thehotpotspot/api:v2@sha256:" + "2" * 64


def manifests() -> list[dict]:
    return [
        doc for path in sorted(K8S_DIR.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc
    ]


def _named(kind: str, name: str) -> dict:
    (doc,) = [d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def config_environ() -> dict[str, str]:
    """The variables the ConfigMap of deploy/k8s/config.yaml sets in every pod of the code location."""
    return {key: str(value) for key, value in _named("ConfigMap", CONFIG_MAP)["data"].items()}


def secret_keys() -> list[str]:
    return list(_named("Secret", ENV_SECRET)["stringData"])


def production_settings(**overrides: str) -> Settings:
    """The settings of deploy/k8s/config.yaml (with the given variables changed, as an operator would)."""
    return load_settings({**config_environ(), **overrides})


def code_location_account() -> str:
    values = yaml.safe_load(HELM_VALUES.read_text())
    return values["dagster-user-deployments"]["serviceAccount"]["name"]


def deployment(namespace: str, color: str, replicas: int, image: str = IMAGE_V1) -> dict:
    labels = {"app": "api-server", "color": color}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"api-server-{color}", "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "api-server",
                            "image": image,
                            "ports": [{"containerPort": 8080}],
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
                            "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}},
                        }
                    ]
                },
            },
        },
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "availableReplicas": replicas,
        },
    }


def primary_ingress(namespace: str) -> dict:
    backend = {"service": {"name": "api-server-blue", "port": {"number": 80}}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "api-ingress", "namespace": namespace, "annotations": {"team": "api"}},
        "spec": {
            "ingressClassName": "nginx",
            "tls": [{"hosts": ["api.thehotpotspot.com"], "secretName": "api-tls"}],
            "rules": [
                {
                    "host": "api.thehotpotspot.com",
                    "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]},
                }
            ],
        },
    }


def http_route(namespace: str) -> dict:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "api-route", "namespace": namespace},
        "spec": {
            "parentRefs": [{"name": "public-gateway"}],
            "hostnames": ["api.thehotpotspot.com"],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [{"name": "api-server-blue", "port": 80}],
                }
            ],
        },
    }


def seed_objects(namespace: str) -> list[dict]:
    """Blue live with 3 replicas, green scaled down, the primary Ingress and the HTTPRoute on blue."""
    return [
        deployment(namespace, "blue", 3),
        deployment(namespace, "green", 0),
        primary_ingress(namespace),
        http_route(namespace),
    ]


def sign_in(api, monkeypatch, directory: Path, account: str) -> None:
    """Make the `kubernetes` client of the code under test talk to the stand-in `api` as the service account
    `account` of hotpot-orchestration: outside a pod the client falls back to $KUBECONFIG."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    from kubernetes.config import kube_config

    path = api.kubeconfig(directory / f"{account}.kubeconfig", ORCHESTRATION_NAMESPACE, account)
    monkeypatch.setenv("KUBECONFIG", str(path))
    # The client reads $KUBECONFIG once, when it is imported: point its copy at this file too.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
