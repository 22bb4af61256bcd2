"""The ingress-nginx and gateway-api routers, through the real `kubernetes` client.

No Kubernetes cluster runs here. The client talks HTTP to a Kubernetes API emulator started in-process on
127.0.0.1 (below): it stores objects, enforces resourceVersion on replace (409 on a stale write), bumps a
Deployment's generation when its spec changes and plays the Deployment controller by reporting the new
replicas updated and available a moment later. Every object the routers write is validated on arrival:
Deployments and Ingresses against the Kubernetes 1.37 OpenAPI schemas with `kubernetes_validate` (strict: no
unknown fields); the HTTPRoute, a CRD that those schemas do not cover, against the Gateway API v1 HTTPRoute
fields checked by `validate_http_route` in this file. An invalid write is answered 422 like the real API
server, and fails the test.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kubernetes_validate
import pytest

from hotpot_orchestration.release.rollout.resources import TrafficRouterResource
from hotpot_orchestration.release.rollout.routers import RouterError, RouteState
from hotpot_orchestration.release.rollout.routers.kubernetes import (
    CANARY_ANNOTATION,
    LIVE_ANNOTATION,
    WEIGHT_ANNOTATION,
    GatewayApiRouter,
    IngressNginxRouter,
    KubernetesTarget,
    api_client,
)

K8S_VERSION = "1.37.0"
NAMESPACE = "hotpot"
IMAGE_V1 = "registry.example/thehotpotspot/api:v1@sha256:" + "1" * 64
IMAGE_V2 = "registry.example/thehotpotspot/api:v2@sha256:" + "2" * 64
PATH = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/?]+)(?:/(?P<name>[^/?]+))?"
)
KINDS = {"deployments": "Deployment", "ingresses": "Ingress", "httproutes": "HTTPRoute"}


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


# --------------------------------------------------------------------------- the API emulator


class KubernetesApiEmulator:
    """A small Kubernetes API server on 127.0.0.1 for Deployments, Ingresses and HTTPRoutes (see the module
    docstring). `rollout_delay` is how long its "controller" takes to roll a Deployment out; `stuck`
    Deployments never become available."""

    def __init__(self, rollout_delay: float = 0.3):
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.writes: list[tuple[str, str, dict]] = []
        self.rejected: list[str] = []
        self.rollout_delay = rollout_delay
        self.stuck: set[str] = set()
        self._version = 1000
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, obj: dict) -> None:
        plural = next(p for p, kind in KINDS.items() if kind == obj["kind"])
        self._store(plural, obj["metadata"]["namespace"], obj, created=True)

    def get(self, plural: str, name: str) -> dict:
        return copy.deepcopy(self.objects[(plural, NAMESPACE, name)])

    @staticmethod
    def validate(obj: dict) -> None:
        if obj["kind"] == "HTTPRoute":
            validate_http_route(obj)
        else:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)

    def _store(self, plural: str, ns: str, obj: dict, created: bool) -> dict:
        with self._lock:
            self._version += 1
            meta = obj["metadata"]
            meta["resourceVersion"] = str(self._version)
            meta.setdefault("uid", f"uid-{meta['name']}")
            meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
            key = (plural, ns, meta["name"])
            if plural == "deployments":
                old = self.objects.get(key)
                spec_changed = created or old is None or old["spec"] != obj["spec"]
                meta["generation"] = (old or {}).get("metadata", {}).get("generation", 0) + int(spec_changed)
                obj["status"] = (old or {}).get("status", {}) if not created else obj.get("status", {})
                if spec_changed and not created:  # seeded objects come with their status
                    threading.Timer(self.rollout_delay, self._roll_out, args=(key,)).start()
            self.objects[key] = obj
            return copy.deepcopy(obj)

    def _roll_out(self, key) -> None:
        """The Deployment controller's part: every replica updated and available."""
        with self._lock:
            deployment = self.objects[key]
            if deployment["metadata"]["name"] in self.stuck:
                return
            replicas = deployment["spec"].get("replicas", 1)
            deployment["status"] = {
                "observedGeneration": deployment["metadata"]["generation"],
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
            }
            if not replicas:
                deployment["status"] = {"observedGeneration": deployment["metadata"]["generation"]}

    def start(self) -> KubernetesApiEmulator:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> None:
                api_status = {"kind": "Status", "apiVersion": "v1", "status": "Failure"}
                self._send(code, api_status | {"reason": reason, "message": message, "code": code})

            def _route(self):
                match = PATH.match(self.path)
                if not match or match["plural"] not in KINDS:
                    self._status(404, "NotFound", f"no such resource path {self.path}")
                    return None
                return match

            def do_GET(self) -> None:
                if (match := self._route()) is None:
                    return
                obj = api.objects.get((match["plural"], match["ns"], match["name"]))
                if obj is None:
                    self._status(404, "NotFound", f'{match["plural"]} "{match["name"]}" not found')
                else:
                    self._send(200, copy.deepcopy(obj))

            def _write(self, create: bool) -> None:
                if (match := self._route()) is None:
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                plural, ns = match["plural"], match["ns"]
                name = body["metadata"]["name"]
                try:
                    api.validate(body)
                except Exception as exc:
                    api.rejected.append(f"{body.get('kind')} {name}: {exc}")
                    self._status(422, "Invalid", str(exc).splitlines()[0])
                    return
                current = api.objects.get((plural, ns, name))
                if create and current is not None:
                    self._status(409, "AlreadyExists", f"{name} already exists")
                    return
                if not create:
                    if current is None:
                        self._status(404, "NotFound", f"{name} not found")
                        return
                    if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                        self._status(409, "Conflict", "the object has been modified")
                        return
                api.writes.append((self.command, f"{body['kind']}/{name}", copy.deepcopy(body)))
                self._send(201 if create else 200, api._store(plural, ns, body, created=create))

            def do_PUT(self) -> None:
                self._write(create=False)

            def do_POST(self) -> None:
                self._write(create=True)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --------------------------------------------------------------------------- the seed's objects


def deployment(color: str, replicas: int, image: str = IMAGE_V1) -> dict:
    labels = {"app": "api-server", "color": color}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"api-server-{color}", "namespace": NAMESPACE, "labels": labels},
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


def primary_ingress() -> dict:
    backend = {"service": {"name": "api-server-blue", "port": {"number": 80}}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "api-ingress", "namespace": NAMESPACE, "annotations": {"team": "api"}},
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


def http_route() -> dict:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "api-route", "namespace": NAMESPACE},
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


@pytest.fixture
def emulator():
    api = KubernetesApiEmulator().start()
    for obj in (deployment("blue", 3), deployment("green", 0), primary_ingress(), http_route()):
        api.validate(obj)  # the seed objects are valid to begin with
        api.add(obj)
    yield api
    api.stop()
    assert api.rejected == [], "a router wrote an object the API server would refuse"


TARGET = KubernetesTarget(namespace=NAMESPACE, rollout_timeout=5, poll_interval=0.05)


def test_ingress_nginx_canary_promote_and_scale_down(emulator):
    router = IngressNginxRouter(TARGET, api_client(emulator.url))
    assert router.state() == RouteState("blue", 0)

    router.deploy("green", IMAGE_V2)  # waits for the emulated rollout, like kubectl rollout status
    green = emulator.get("deployments", "api-server-green")
    assert green["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE_V2
    assert green["spec"]["replicas"] == 3  # back at the live colour's size
    assert green["status"]["updatedReplicas"] == 3

    for weight in (20, 60):
        assert router.set_weight(weight) == RouteState("blue", weight)
        canary = emulator.get("ingresses", "api-ingress-canary")
        assert canary["metadata"]["annotations"][CANARY_ANNOTATION] == "true"
        assert canary["metadata"]["annotations"][WEIGHT_ANNOTATION] == str(weight)
        assert (
            canary["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "api-server-green"
        )
        assert "tls" not in canary["spec"]
    assert [w[0] for w in emulator.writes if w[1] == "Ingress/api-ingress-canary"] == ["POST", "PUT", "PUT"]

    assert router.promote() == RouteState("green", 0)
    primary = emulator.get("ingresses", "api-ingress")
    assert primary["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "api-server-green"
    assert primary["metadata"]["annotations"] == {"team": "api"}
    canary = emulator.get("ingresses", "api-ingress-canary")
    assert canary["metadata"]["annotations"][WEIGHT_ANNOTATION] == "0"
    assert canary["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "api-server-blue"
    assert router.state() == RouteState("green", 0)

    with pytest.raises(RouterError, match="live colour"):
        router.scale_down("green")
    router.scale_down("blue")
    assert emulator.get("deployments", "api-server-blue")["spec"]["replicas"] == 0


def test_ingress_nginx_promotion_never_sends_traffic_back_to_the_old_colour(emulator):
    router = IngressNginxRouter(TARGET, api_client(emulator.url))
    router.set_weight(80)
    start = len(emulator.writes)
    router.promote()

    # Replay the writes: after each one, where does 100 % of the traffic go?
    primary, canary = "api-server-blue", ("api-server-green", 80)
    for _, what, body in emulator.writes[start:]:
        service = body["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
        if what == "Ingress/api-ingress":
            primary = service
        else:
            canary = (service, int(body["metadata"]["annotations"][WEIGHT_ANNOTATION]))
        new_share = (100 if primary == "api-server-green" else 0) * (100 - canary[1]) / 100 + (
            canary[1] if canary[0] == "api-server-green" else 0
        )
        assert new_share >= 80, f"after writing {what}, green would get only {new_share} %"


def test_gateway_api_weights_and_live_colour(emulator):
    router = GatewayApiRouter(TARGET, api_client(emulator.url))
    assert router.state() == RouteState("blue", 0)
    router.set_weight(30)
    route = emulator.get("httproutes", "api-route")
    assert route["spec"]["rules"][0]["backendRefs"] == [
        {"name": "api-server-blue", "port": 80, "weight": 70},
        {"name": "api-server-green", "port": 80, "weight": 30},
    ]
    assert route["spec"]["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert router.promote() == RouteState("green", 0)
    route = emulator.get("httproutes", "api-route")
    assert route["metadata"]["annotations"][LIVE_ANNOTATION] == "green"
    assert [ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]] == [0, 100]
    # Equal weights could not say which colour is live: the annotation does.
    router.set_weight(50)
    assert router.state() == RouteState("green", 50)
    assert router.set_weight(0) == RouteState("green", 0)


def test_rollout_that_never_completes_fails_with_what_it_waited_for(emulator):
    emulator.stuck.add("api-server-green")
    router = IngressNginxRouter(
        KubernetesTarget(namespace=NAMESPACE, rollout_timeout=0.5, poll_interval=0.05),
        api_client(emulator.url),
    )
    with pytest.raises(RouterError, match="not rolled out after 0.5s: waiting for the controller"):
        router.deploy("green", IMAGE_V2)


def test_progress_deadline_exceeded_fails_at_once(emulator):
    emulator.stuck.add("api-server-green")
    key = ("deployments", NAMESPACE, "api-server-green")
    router = GatewayApiRouter(TARGET, api_client(emulator.url))
    threading.Timer(
        0.2,
        lambda: emulator.objects[key]["status"].update(
            observedGeneration=emulator.objects[key]["metadata"]["generation"],
            conditions=[{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}],
        ),
    ).start()
    started = time.monotonic()
    with pytest.raises(RouterError, match="progress deadline"):
        router.deploy("green", IMAGE_V2)
    assert time.monotonic() - started < 2


def test_a_concurrent_edit_is_not_overwritten(emulator):
    from kubernetes.client.exceptions import ApiException

    router = GatewayApiRouter(TARGET, api_client(emulator.url))
    route = router._read_route()
    emulator.add(emulator.get("httproutes", "api-route"))  # someone else writes in between
    route["spec"]["rules"][0]["backendRefs"][0]["weight"] = 5
    with pytest.raises(ApiException) as caught:
        router.custom.replace_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", NAMESPACE, "httproutes", "api-route", route
        )
    assert caught.value.status == 409


def test_the_resource_builds_the_router_named_by_hotpot_router(emulator):
    common = {"kube_api_url": emulator.url, "namespace": NAMESPACE}
    assert isinstance(TrafficRouterResource(kind="ingress-nginx", **common).router(), IngressNginxRouter)
    gateway = TrafficRouterResource(kind="gateway-api", **common).router()
    assert isinstance(gateway, GatewayApiRouter) and gateway.state().live == "blue"


def test_http_route_validator_rejects_what_the_crd_rejects():
    route = http_route()
    validate_http_route(route)
    for mutate in (
        lambda r: r["spec"]["rules"][0]["backendRefs"][0].update(weight=-1),
        lambda r: r["spec"]["rules"][0]["backendRefs"][0].pop("port"),
        lambda r: r["spec"]["rules"][0]["backendRefs"][0].update(weigth=1),
        lambda r: r.update(apiVersion="gateway.networking.k8s.io/v1beta2"),
    ):
        bad = copy.deepcopy(route)
        mutate(bad)
        with pytest.raises(ValueError):
            validate_http_route(bad)
