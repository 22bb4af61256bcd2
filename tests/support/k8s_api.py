"""A Kubernetes API server stand-in on 127.0.0.1 that enforces the shipped RBAC.

No Kubernetes API server runs here, so this stands in for one. It is a mock, and only as faithful as the
parts the code under test uses:

- Authentication: every request must carry `Authorization: Bearer TOKEN`, a token handed out by
  `token_for(namespace, service_account)` for a ServiceAccount that deploy/k8s/ creates; anything else
  is 401, as the API server answers an unknown token.
- Authorization: the Roles, ClusterRoles, RoleBindings and ClusterRoleBindings loaded from the manifests,
  evaluated like the API server's RBAC authorizer (apiGroups, resources with `resource/subresource`,
  verbs, resourceNames, the namespace of the binding; subjects by ServiceAccount, the service-account
  groups and User). A request that no rule allows is answered 403 with the API server's Status body
  (`... is forbidden: User "system:serviceaccount:NS:NAME" cannot VERB resource "R" in API group "G" in
  the namespace "NS"`). Verbs come from the request as the API server derives them: GET on a name is
  `get`, without one `list` (or `watch` with ?watch=true), POST `create`, PUT `update`, PATCH `patch`,
  DELETE `delete` (`deletecollection` without a name).
- Storage: objects by (group, resource, namespace, name) with resourceVersion (409 on a stale PUT or a
  PATCH that names an older resourceVersion), merge patches (RFC 7386), strategic merge patches for
  built-in kinds (lists of named items merged by name; 415 for custom resources, as the API server does),
  label selectors on lists, `/status` and `/log` subresources.
- Validation: every written object of a built-in kind is checked against the Kubernetes OpenAPI schema
  with `kubernetes_validate` (strict), an HTTPRoute against the Gateway API v1 fields below, a
  CloudNativePG Backup or Cluster against its vendored CRD schema (tests/cnpg_schema/); an invalid write
  is 422.
- Controllers: a Deployment whose spec changed gets a new generation and, `rollout_delay` seconds later,
  a status with every replica updated and available (never, for names in `stuck`). A Job gets a pod
  labelled `job-name=NAME` and ends as `job_outcome(job)` says. A CloudNativePG Backup or Cluster gets,
  `rollout_delay` seconds after its creation, the status `cnpg_controller(obj)` returns (validated against
  the CRD schema; None: no status yet), the part of CloudNativePG's operator the test plays.

Every request is recorded in `requests` (who, verb, resource, namespace, allowed) so that tests can check
which grants were used.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
import yaml

from .cnpg import validate_cnpg

K8S_VERSION = kubernetes_validate.utils.major_minor(kubernetes_validate.latest_version())

# resource -> (kind, API group, version, namespaced) for what the code under test touches.
RESOURCES = {
    ("apps", "deployments"): ("Deployment", "v1"),
    ("networking.k8s.io", "ingresses"): ("Ingress", "v1"),
    ("gateway.networking.k8s.io", "httproutes"): ("HTTPRoute", "v1"),
    ("batch", "jobs"): ("Job", "v1"),
    ("", "pods"): ("Pod", "v1"),
    ("", "services"): ("Service", "v1"),
    ("", "secrets"): ("Secret", "v1"),
    ("postgresql.cnpg.io", "backups"): ("Backup", "v1"),
    ("postgresql.cnpg.io", "clusters"): ("Cluster", "v1"),
}
CNPG_GROUP = "postgresql.cnpg.io"
CUSTOM_GROUPS = {"gateway.networking.k8s.io", CNPG_GROUP}
_PATH = re.compile(
    r"^/(?:api/(?P<core_version>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"/namespaces/(?P<ns>[^/]+)/(?P<resource>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$"
)


# --------------------------------------------------------------------------- Gateway API v1 HTTPRoute

_ROUTE_KEYS = {"apiVersion", "kind", "metadata", "spec", "status"}
_SPEC_KEYS = {"parentRefs", "hostnames", "rules"}
_PARENT_KEYS = {"group", "kind", "namespace", "name", "sectionName", "port"}
_RULE_KEYS = {"name", "matches", "filters", "backendRefs", "timeouts", "retry", "sessionPersistence"}
_BACKEND_KEYS = {"group", "kind", "name", "namespace", "port", "weight", "filters"}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def validate_http_route(route: dict) -> None:
    """The structure of a gateway.networking.k8s.io/v1 HTTPRoute (the fields and limits of the v1 CRD that
    a router touches: parentRefs, hostnames, rules[].backendRefs with name, port and weight)."""

    def unknown(obj: dict, allowed: set[str], where: str) -> None:
        extra = set(obj) - allowed
        if extra:
            raise ValueError(f"{where}: unknown field(s) {sorted(extra)}")

    unknown(route, _ROUTE_KEYS, "HTTPRoute")
    if route.get("apiVersion") != "gateway.networking.k8s.io/v1" or route.get("kind") != "HTTPRoute":
        raise ValueError("apiVersion/kind must be gateway.networking.k8s.io/v1 HTTPRoute")
    if not _DNS_LABEL.match(route["metadata"].get("name", "")):
        raise ValueError("metadata.name must be a DNS label")
    for key, value in (route["metadata"].get("annotations") or {}).items():
        if not isinstance(value, str):
            raise ValueError(f"annotation {key} must be a string")
    spec = route.get("spec", {})
    unknown(spec, _SPEC_KEYS, "spec")
    if len(spec.get("parentRefs", [])) > 32:
        raise ValueError("spec.parentRefs: at most 32")
    for ref in spec.get("parentRefs", []):
        unknown(ref, _PARENT_KEYS, "spec.parentRefs[]")
        if not ref.get("name"):
            raise ValueError("spec.parentRefs[].name is required")
    rules = spec.get("rules", [])
    if len(rules) > 16:
        raise ValueError("spec.rules: at most 16")
    for rule in rules:
        unknown(rule, _RULE_KEYS, "spec.rules[]")
        refs = rule.get("backendRefs", [])
        if len(refs) > 16:
            raise ValueError("spec.rules[].backendRefs: at most 16")
        for ref in refs:
            unknown(ref, _BACKEND_KEYS, "spec.rules[].backendRefs[]")
            if not ref.get("name"):
                raise ValueError("backendRefs[].name is required")
            if ref.get("kind", "Service") == "Service" and ref.get("group", "") == "":
                port = ref.get("port")
                if not isinstance(port, int) or not 1 <= port <= 65535:
                    raise ValueError("backendRefs[].port is required for a Service, 1..65535")
            weight = ref.get("weight", 1)
            if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 1_000_000:
                raise ValueError(f"backendRefs[].weight must be an integer in 0..1000000, got {weight!r}")


def validate(obj: dict) -> None:
    if obj.get("kind") == "HTTPRoute":
        validate_http_route(obj)
    elif obj.get("apiVersion", "").startswith(f"{CNPG_GROUP}/"):
        validate_cnpg(obj)
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# --------------------------------------------------------------------------- RBAC


@dataclass(frozen=True)
class Request:
    user: str
    verb: str
    group: str
    resource: str  # "jobs" or "jobs/status"
    namespace: str
    name: str | None
    allowed: bool


@dataclass(frozen=True)
class Grant:
    """One (verb, group, resource) a rule grants in a namespace ("*" for every namespace)."""

    namespace: str
    group: str
    resource: str
    verb: str


def _matches(values: list[str], wanted: str) -> bool:
    return "*" in values or wanted in values


def _resource_matches(values: list[str], resource: str) -> bool:
    base, _, sub = resource.partition("/")
    for value in values:
        if value in ("*", resource):
            return True
        if sub and value in (f"{base}/*", f"*/{sub}"):
            return True
    return False


class Rbac:
    """The RBAC authorizer over a set of manifests."""

    def __init__(self, documents: list[dict]):
        self.accounts = {
            (doc["metadata"]["namespace"], doc["metadata"]["name"])
            for doc in documents
            if doc["kind"] == "ServiceAccount"
        }
        self.roles = {
            (doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"]): doc
            for doc in documents
            if doc["kind"] in ("Role", "ClusterRole")
        }
        self.bindings = [doc for doc in documents if doc["kind"] in ("RoleBinding", "ClusterRoleBinding")]

    @staticmethod
    def _subject_matches(subject: dict, user: str) -> bool:
        kind, name = subject["kind"], subject["name"]
        if kind == "ServiceAccount":
            return user == f"system:serviceaccount:{subject['namespace']}:{name}"
        if kind == "User":
            return user == name
        if kind == "Group":
            namespace = user.split(":")[2] if user.startswith("system:serviceaccount:") else None
            groups = {"system:authenticated"}
            if namespace:
                groups |= {"system:serviceaccounts", f"system:serviceaccounts:{namespace}"}
            return name in groups
        return False

    def _rules_for(self, user: str) -> Iterable[tuple[str, dict]]:
        """(namespace or "*", rule) for every rule bound to `user`."""
        for binding in self.bindings:
            if not any(self._subject_matches(subject, user) for subject in binding.get("subjects", [])):
                continue
            ref = binding["roleRef"]
            if binding["kind"] == "RoleBinding":
                namespace = binding["metadata"]["namespace"]
                role_ns = namespace if ref["kind"] == "Role" else None
                role = self.roles.get((ref["kind"], role_ns, ref["name"]))
            else:
                namespace = "*"
                role = (
                    self.roles.get(("ClusterRole", None, ref["name"]))
                    if ref["kind"] == "ClusterRole"
                    else None
                )
            for rule in (role or {}).get("rules", []):
                yield namespace, rule

    def allows(
        self, user: str, verb: str, group: str, resource: str, namespace: str, name: str | None
    ) -> bool:
        for rule_ns, rule in self._rules_for(user):
            if rule_ns not in ("*", namespace) or "resources" not in rule:
                continue
            names = rule.get("resourceNames")
            if names and (name is None or name not in names):
                continue
            if (
                _matches(rule.get("apiGroups", []), group)
                and _resource_matches(rule["resources"], resource)
                and _matches(rule["verbs"], verb)
            ):
                return True
        return False

    def grants(self) -> set[tuple[str, Grant]]:
        """(service account user, grant) for every subject and rule of the manifests."""
        found = set()
        for binding in self.bindings:
            for subject in binding.get("subjects", []):
                if subject["kind"] != "ServiceAccount":
                    continue
                user = f"system:serviceaccount:{subject['namespace']}:{subject['name']}"
                for namespace, rule in self._rules_for(user):
                    for group in rule.get("apiGroups", []):
                        for resource in rule.get("resources", []):
                            for verb in rule["verbs"]:
                                found.add((user, Grant(namespace, group, resource, verb)))
        return found


# --------------------------------------------------------------------------- patches


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target, patch):
    """Kubernetes' strategic merge patch for what built-in kinds need here: maps merge, lists of objects
    with a `name` (containers, volumes, env, ports...) merge item by item on it, other lists replace."""
    if isinstance(patch, dict) and isinstance(target, dict):
        result = copy.deepcopy(target)
        for key, value in patch.items():
            if value is None:
                result.pop(key, None)
            else:
                result[key] = strategic_merge_patch(result.get(key), value)
        return result
    named = isinstance(patch, list) and all(isinstance(item, dict) and "name" in item for item in patch)
    if named and isinstance(target, list):
        result = copy.deepcopy(target)
        for item in patch:
            index = next((i for i, old in enumerate(result) if old.get("name") == item["name"]), None)
            if index is None:
                result.append(copy.deepcopy(item))
            else:
                result[index] = strategic_merge_patch(result[index], item)
        return result
    return copy.deepcopy(patch)


# --------------------------------------------------------------------------- the server


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


# What a Job does once created: ("succeeded" | "failed" | "running", termination message, pod log).
JobOutcome = Callable[[dict], tuple[str, str, str]]
# What CloudNativePG makes of a created Backup or Cluster: its status, or None for none yet.
CnpgController = Callable[[dict], dict | None]


class KubernetesApiStandIn:
    """See the module docstring. Use as a context manager, or start() / stop()."""

    def __init__(
        self,
        documents: list[dict],
        rollout_delay: float = 0.2,
        job_outcome: JobOutcome | None = None,
        cnpg_controller: CnpgController | None = None,
    ):
        self.rbac = Rbac(documents)
        self.objects: dict[tuple[str, str, str, str], dict] = {}
        self.requests: list[Request] = []
        self.rejected: list[str] = []  # invalid writes (422)
        self.writes: list[tuple[str, str, dict]] = []  # (verb, "Kind/name", the object as stored)
        self.rollout_delay = rollout_delay
        self.stuck: set[str] = set()
        self.job_outcome = job_outcome or (lambda job: ("running", "", ""))
        self.cnpg_controller = cnpg_controller or (lambda obj: None)
        self.logs: dict[tuple[str, str], str] = {}
        self._tokens: dict[str, str] = {}
        self._version = 1000
        self._lock = threading.RLock()
        self._timers: list[threading.Timer] = []
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ setup

    def token_for(self, namespace: str, service_account: str) -> str:
        """A bearer token of a ServiceAccount the manifests create (else the test is wrong)."""
        if (namespace, service_account) not in self.rbac.accounts:
            raise AssertionError(f"no ServiceAccount {namespace}/{service_account} in the manifests")
        token = secrets.token_urlsafe(16)
        self._tokens[token] = f"system:serviceaccount:{namespace}:{service_account}"
        return token

    def kubeconfig(self, path: Path, namespace: str, service_account: str) -> Path:
        """A kubeconfig file that signs in as the service account (what the client loads outside a pod)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
            "users": [
                {"name": service_account, "user": {"token": self.token_for(namespace, service_account)}}
            ],
            "contexts": [{"name": "ctx", "context": {"cluster": "stand-in", "user": service_account}}],
            "current-context": "ctx",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def add(self, obj: dict) -> dict:
        """Store an object as the cluster's own manifests would have created it (no authorization)."""
        validate(obj)
        group, _, _ = obj["apiVersion"].rpartition("/")
        resource = next(r for (g, r), (kind, _) in RESOURCES.items() if g == group and kind == obj["kind"])
        return self._store(group, resource, obj["metadata"]["namespace"], copy.deepcopy(obj), created=True)

    def get(self, group: str, resource: str, namespace: str, name: str) -> dict:
        return copy.deepcopy(self.objects[(group, resource, namespace, name)])

    def used(self, user: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.allowed and (user is None or r.user == user)]

    def forbidden(self) -> list[Request]:
        return [r for r in self.requests if not r.allowed]

    # ------------------------------------------------------------------ storage and controllers

    def _store(self, group: str, resource: str, ns: str, obj: dict, created: bool) -> dict:
        with self._lock:
            self._version += 1
            meta = obj["metadata"]
            meta["namespace"] = ns
            meta["resourceVersion"] = str(self._version)
            meta.setdefault("uid", f"uid-{resource}-{meta['name']}")
            meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
            key = (group, resource, ns, meta["name"])
            old = self.objects.get(key)
            if resource == "deployments":
                spec_changed = old is None or old["spec"] != obj["spec"]
                meta["generation"] = (old or {}).get("metadata", {}).get("generation", 0) + int(spec_changed)
                if old is not None:
                    obj["status"] = old.get("status", {})
                    if spec_changed:
                        self._later(self.rollout_delay, self._roll_out, key)
            self.objects[key] = obj
            if resource == "jobs" and created and old is None:
                self._start_job(obj)
            if group == CNPG_GROUP and created and old is None:
                self._later(self.rollout_delay, self._reconcile_cnpg, key, copy.deepcopy(obj))
            return copy.deepcopy(obj)

    def _later(self, delay: float, function, *args) -> None:
        timer = threading.Timer(delay, function, args=args)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _roll_out(self, key) -> None:
        """The Deployment controller: every replica updated and available."""
        with self._lock:
            deployment = self.objects.get(key)
            if deployment is None or deployment["metadata"]["name"] in self.stuck:
                return
            replicas = deployment["spec"].get("replicas", 1)
            generation = deployment["metadata"]["generation"]
            deployment["status"] = {"observedGeneration": generation}
            if replicas:
                deployment["status"].update(
                    replicas=replicas,
                    updatedReplicas=replicas,
                    readyReplicas=replicas,
                    availableReplicas=replicas,
                )

    def _reconcile_cnpg(self, key, obj: dict) -> None:
        """CloudNativePG's operator: the status the test's controller gives (it may take its time: the
        API answers meanwhile), unless the object was deleted first."""
        status = self.cnpg_controller(obj)
        if status is None:
            return
        with self._lock:
            current = self.objects.get(key)
            if current is None or current["metadata"]["uid"] != obj["metadata"]["uid"]:
                return
            validate({**current, "status": status})
            current["status"] = status
            self._version += 1
            current["metadata"]["resourceVersion"] = str(self._version)

    def _start_job(self, job: dict) -> None:
        """The Job controller and kubelet: one pod, ending as job_outcome says."""
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        outcome, message, log = self.job_outcome(copy.deepcopy(job))
        container = job["spec"]["template"]["spec"]["containers"][0]
        state: dict = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
        if outcome != "running":
            code = 0 if outcome == "succeeded" else 1
            state = {"terminated": {"exitCode": code, "message": message, "reason": "Completed"}}
        pod_name = f"{name}-pod"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": ns, "labels": {"job-name": name}},
            "spec": copy.deepcopy(job["spec"]["template"]["spec"]),
            "status": {
                "phase": {"running": "Running", "succeeded": "Succeeded"}.get(outcome, "Failed"),
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": state,
                    }
                ],
            },
        }
        self._version += 1
        pod["metadata"]["resourceVersion"] = str(self._version)
        self.objects[("", "pods", ns, pod_name)] = pod
        self.logs[(ns, pod_name)] = log
        job["status"] = {"active": 1} if outcome == "running" else {outcome: 1}

    # ------------------------------------------------------------------ requests

    def handle(self, method: str, path: str, headers, body: bytes) -> tuple[int, object]:
        parts = urlsplit(path)
        query = parse_qs(parts.query)
        token = (headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        user = self._tokens.get(token)
        if user is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        match = _PATH.match(parts.path)
        if not match:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({parts.path})"
            )
        group = match["group"] or ""
        resource, ns, name, sub = match["resource"], match["ns"], match["name"], match["sub"]
        full = f"{resource}/{sub}" if sub else resource
        if name is None:
            verb = {"GET": "watch" if query.get("watch") == ["true"] else "list", "POST": "create"}.get(
                method, "deletecollection" if method == "DELETE" else method.lower()
            )
        else:
            verb = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
                method, method.lower()
            )
        allowed = self.rbac.allows(user, verb, group, full, ns, name)
        with self._lock:
            self.requests.append(Request(user, verb, group, full, ns, name, allowed))
        if not allowed:
            what = f"{resource}.{group}" if group else resource
            named = f' "{name}"' if name else ""
            raise ApiError(
                403,
                "Forbidden",
                f'{what}{named} is forbidden: User "{user}" cannot {verb} resource "{full}" in API group '
                f'"{group}" in the namespace "{ns}"',
                {"name": name or "", "group": group, "kind": resource},
            )
        if (group, resource) not in RESOURCES:
            raise ApiError(404, "NotFound", f"the stand-in does not serve {group or 'core'}/{resource}")
        return self._serve(method, group, resource, sub, ns, name, query, headers, body)

    def _serve(self, method, group, resource, sub, ns, name, query, headers, body) -> tuple[int, object]:
        code, answer = self._answer(method, group, resource, sub, ns, name, query, headers, body)
        if method in ("POST", "PUT", "PATCH"):
            self.writes.append((method, f"{answer['kind']}/{answer['metadata']['name']}", answer))
        return code, answer

    def _answer(self, method, group, resource, sub, ns, name, query, headers, body) -> tuple[int, object]:
        key = (group, resource, ns, name)
        what = f'{resource}.{group} "{name}"' if group else f'{resource} "{name}"'
        with self._lock:
            if method == "GET" and name is None:
                selector = dict(
                    term.split("=", 1)
                    for term in query.get("labelSelector", [""])[0].split(",")
                    if "=" in term
                )
                items = [
                    copy.deepcopy(obj)
                    for (g, r, n, _), obj in sorted(self.objects.items())
                    if (g, r, n) == (group, resource, ns)
                    and all((obj["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
                ]
                if query.get("watch") == ["true"]:
                    return 200, "".join(
                        json.dumps({"type": "ADDED", "object": item}) + "\n" for item in items
                    )
                kind, version = RESOURCES[(group, resource)]
                api_version = f"{group}/{version}" if group else version
                return 200, {"kind": f"{kind}List", "apiVersion": api_version, "metadata": {}, "items": items}
            if method == "POST":
                obj = json.loads(body)
                if key[:3] + (obj["metadata"]["name"],) in self.objects:
                    raise ApiError(
                        409, "AlreadyExists", f'{resource} "{obj["metadata"]["name"]}" already exists'
                    )
                self._validate(obj)
                return 201, self._store(group, resource, ns, obj, created=True)
            current = self.objects.get(key)
            if current is None:
                raise ApiError(404, "NotFound", f"{what} not found")
            if method == "GET":
                if sub == "log":
                    return 200, self.logs.get((ns, name), "")
                return 200, copy.deepcopy(current)
            if method == "DELETE":
                del self.objects[key]
                if resource == "jobs":
                    for pod_key in [
                        k
                        for k, o in self.objects.items()
                        if k[1] == "pods"
                        and k[2] == ns
                        and (o["metadata"].get("labels") or {}).get("job-name") == name
                    ]:
                        del self.objects[pod_key]
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}
            if method == "PUT":
                obj = json.loads(body)
                self._check_version(obj, current)
                self._validate(obj)
                return 200, self._store(group, resource, ns, obj, created=False)
            if method == "PATCH":
                patch = json.loads(body)
                content_type = (headers.get("Content-Type") or "").split(";")[0]
                if content_type == "application/merge-patch+json":
                    obj = merge_patch(current, patch)
                elif content_type == "application/strategic-merge-patch+json" and group not in CUSTOM_GROUPS:
                    obj = strategic_merge_patch(current, patch)
                else:
                    raise ApiError(
                        415,
                        "UnsupportedMediaType",
                        f"the body of the request was in an unknown format"
                        f" - accepted media types include: application/merge-patch+json ({content_type})",
                    )
                if isinstance(patch, dict) and "resourceVersion" in (patch.get("metadata") or {}):
                    self._check_version(patch, current)
                    obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                self._validate(obj)
                return 200, self._store(group, resource, ns, obj, created=False)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")

    @staticmethod
    def _check_version(obj: dict, current: dict) -> None:
        if obj["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {current["kind"]} "{current["metadata"]["name"]}": '
                "the object has been modified; please apply your changes to the latest version and try again",
            )

    def _validate(self, obj: dict) -> None:
        try:
            validate(obj)
        except Exception as error:
            self.rejected.append(f"{obj.get('kind')} {obj['metadata'].get('name')}: {error}")
            raise ApiError(422, "Invalid", str(error).splitlines()[0]) from None

    # ------------------------------------------------------------------ HTTP

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> KubernetesApiStandIn:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    code, payload = api.handle(self.command, self.path, self.headers, body)
                except ApiError as error:
                    code, payload = error.code, error.status()
                text = isinstance(payload, str)
                data = payload.encode() if text else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if text else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> KubernetesApiStandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
