"""Kubernetes routers, through the `kubernetes` client: one Deployment and one Service per colour.

`deploy` sets the colour's container image (scaling it up to the live colour's replicas if it was scaled
down) and waits the way `kubectl rollout status` does. Traffic moves in one of two ways:

- `ingress-nginx`: the primary Ingress routes to the live colour's Service; a second Ingress with
  `nginx.ingress.kubernetes.io/canary: "true"` and `.../canary-weight` routes that share to the idle colour.
  The canary Ingress is created from the primary one if it does not exist yet.
- `gateway-api`: one HTTPRoute whose backendRefs list both colours' Services with weights; the live colour is
  recorded in an annotation on the route, since equal weights alone could not tell.

Every change is a PATCH (the verb the release Role grants; never PUT) that carries the resourceVersion the
change was computed from, so a concurrent edit fails with 409 instead of being overwritten. The requests are
exactly these, and deploy/k8s/rbac-release.yaml grants exactly them in HOTPOT_K8S_APP_NAMESPACE:
  deployments: get, patch       ingresses: get, patch, create (the canary, once)       httproutes: get, patch
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

from hotpot_orchestration.release.rollout.routers import (
    COLORS,
    RouterError,
    RouteState,
    check_weight,
    other,
    refuse_live,
)

CANARY_ANNOTATION = "nginx.ingress.kubernetes.io/canary"
WEIGHT_ANNOTATION = "nginx.ingress.kubernetes.io/canary-weight"
LIVE_ANNOTATION = "release.thehotpotspot.com/live-color"
GATEWAY_GROUP, GATEWAY_VERSION = "gateway.networking.k8s.io", "v1"
# The client would label a dict body as a JSON patch (its first content type): say what it is.
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


@dataclass(frozen=True)
class KubernetesTarget:
    """Names of the objects a release touches; the defaults are the seed's (`api-server-blue`, ...). The
    namespace has no default (HOTPOT_K8S_APP_NAMESPACE)."""

    namespace: str
    deployment: str = "api-server-{color}"
    service: str = "api-server-{color}"
    container: str = "api-server"
    ingress: str = "api-ingress"
    canary_ingress: str = "api-ingress-canary"
    http_route: str = "api-route"
    service_port: int = 80
    rollout_timeout: float = 600.0
    poll_interval: float = 1.0

    def deployment_name(self, color: str) -> str:
        return self.deployment.format(color=color)

    def service_name(self, color: str) -> str:
        return self.service.format(color=color)

    def color_of_service(self, name: str) -> str | None:
        return next((color for color in COLORS if self.service_name(color) == name), None)


def api_client():
    """A client signed in as the pod's service account, else as the local kubeconfig ($KUBECONFIG)."""
    from kubernetes import client, config  # lazy: only Kubernetes releases need it

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def rollout_complete(deployment) -> tuple[bool, str]:
    """`kubectl rollout status` for a Deployment: (done, what it waits for)."""
    spec, status, meta = deployment.spec, deployment.status, deployment.metadata
    for condition in status.conditions or ():
        if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded":
            raise RouterError(f"deployment {meta.name} exceeded its progress deadline")
    if (status.observed_generation or 0) < (meta.generation or 0):
        return False, "the controller to observe the new spec"
    replicas = spec.replicas if spec.replicas is not None else 1
    updated = status.updated_replicas or 0
    if updated < replicas:
        return False, f"{updated} of {replicas} new replicas updated"
    if (status.replicas or 0) > updated:
        return False, f"{status.replicas - updated} old replicas pending termination"
    if (status.available_replicas or 0) < updated:
        return False, f"{status.available_replicas or 0} of {updated} updated replicas available"
    return True, "rolled out"


class _KubernetesColors:
    """Deployments per colour: image updates, scaling, rollout waits."""

    def __init__(self, target: KubernetesTarget, client=None):
        from kubernetes import client as k8s

        self.target = target
        self.client = client or api_client()
        self.apps = k8s.AppsV1Api(self.client)

    def _read_deployment(self, color: str):
        return self.apps.read_namespaced_deployment(self.target.deployment_name(color), self.target.namespace)

    def _patch_deployment(self, deployment, spec: dict) -> None:
        # Strategic merge: `containers` merge by name, so only this container's image changes.
        body = {"metadata": {"resourceVersion": deployment.metadata.resource_version}, "spec": spec}
        self.apps.patch_namespaced_deployment(
            deployment.metadata.name, self.target.namespace, body, _content_type=STRATEGIC_MERGE_PATCH
        )

    def deploy(self, color: str, image: str) -> None:
        deployment = self._read_deployment(color)
        if not any(c.name == self.target.container for c in deployment.spec.template.spec.containers):
            raise RouterError(
                f"deployment {deployment.metadata.name} has no container named {self.target.container!r}"
            )
        spec: dict = {"template": {"spec": {"containers": [{"name": self.target.container, "image": image}]}}}
        if not deployment.spec.replicas:
            # A colour scaled down after the previous release comes back at the size of the live one.
            spec["replicas"] = self._read_deployment(other(color)).spec.replicas or 1
        self._patch_deployment(deployment, spec)
        self.wait_for_rollout(color)

    def wait_for_rollout(self, color: str) -> None:
        deadline = time.monotonic() + self.target.rollout_timeout
        while True:
            done, waiting_for = rollout_complete(self._read_deployment(color))
            if done:
                return
            if time.monotonic() >= deadline:
                raise RouterError(
                    f"deployment {self.target.deployment_name(color)} not rolled out after "
                    f"{self.target.rollout_timeout:g}s: waiting for {waiting_for}"
                )
            time.sleep(self.target.poll_interval)

    def scale_down(self, color: str) -> None:
        refuse_live(color, self.state())
        self._patch_deployment(self._read_deployment(color), {"replicas": 0})

    def health_url(self, color: str) -> str:
        service = self.target.service_name(color)
        return f"http://{service}.{self.target.namespace}.svc:{self.target.service_port}"

    def state(self) -> RouteState:
        raise NotImplementedError


def _backend_services(ingress) -> list:
    """Every `service` backend of an Ingress (default backend and rule paths)."""
    backends = [ingress.spec.default_backend] if ingress.spec.default_backend else []
    for rule in ingress.spec.rules or ():
        if rule.http:
            backends += [path.backend for path in rule.http.paths]
    return [backend.service for backend in backends if backend.service]


class IngressNginxRouter(_KubernetesColors):
    def __init__(self, target: KubernetesTarget, client=None):
        from kubernetes import client as k8s

        super().__init__(target, client)
        self.networking = k8s.NetworkingV1Api(self.client)

    def _read_ingress(self, name: str):
        return self.networking.read_namespaced_ingress(name, self.target.namespace)

    def _route_to(self, ingress, color: str) -> None:
        for service in _backend_services(ingress):
            if self.target.color_of_service(service.name):
                service.name = self.target.service_name(color)

    def _live_color(self, primary) -> str:
        colors = {self.target.color_of_service(service.name) for service in _backend_services(primary)} - {
            None
        }
        if len(colors) != 1:
            raise RouterError(
                f"ingress {primary.metadata.name} must route to exactly one colour's Service "
                f"({', '.join(self.target.service_name(c) for c in COLORS)}); it routes to {sorted(colors)}"
            )
        return colors.pop()

    def _find_ingress(self, name: str):
        from kubernetes.client.exceptions import ApiException

        try:
            return self._read_ingress(name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _create_canary(self, color: str, weight: int) -> None:
        primary = self._read_ingress(self.target.ingress)
        canary = copy.deepcopy(primary)
        canary.metadata = type(primary.metadata)(
            name=self.target.canary_ingress,
            namespace=self.target.namespace,
            labels=primary.metadata.labels,
            annotations={
                **(primary.metadata.annotations or {}),
                CANARY_ANNOTATION: "true",
                WEIGHT_ANNOTATION: str(weight),
            },
        )
        canary.status = None
        canary.spec.tls = None  # the primary Ingress already terminates TLS for these hosts
        self._route_to(canary, color)
        self.networking.create_namespaced_ingress(self.target.namespace, canary)

    def _patch_ingress(self, ingress, annotations: dict[str, str] | None = None) -> None:
        # Merge patch: the annotations given are merged, the (edited) rules replace the stored ones.
        spec = self.networking.api_client.sanitize_for_serialization(ingress.spec)
        metadata: dict = {"resourceVersion": ingress.metadata.resource_version}
        if annotations:
            metadata["annotations"] = annotations
        self.networking.patch_namespaced_ingress(
            ingress.metadata.name,
            self.target.namespace,
            {"metadata": metadata, "spec": spec},
            _content_type=MERGE_PATCH,
        )

    def state(self) -> RouteState:
        primary = self._read_ingress(self.target.ingress)
        live = self._live_color(primary)
        canary = self._find_ingress(self.target.canary_ingress)
        if canary is None:
            return RouteState(live, 0)
        annotations = canary.metadata.annotations or {}
        return RouteState(live, int(annotations.get(WEIGHT_ANNOTATION, "0")))

    def _set_canary(self, color: str, weight: int) -> None:
        canary = self._find_ingress(self.target.canary_ingress)
        if canary is None:
            if weight:  # no canary Ingress already means 0 %: nothing to create for that
                self._create_canary(color, weight)
            return
        self._route_to(canary, color)
        self._patch_ingress(canary, {CANARY_ANNOTATION: "true", WEIGHT_ANNOTATION: str(weight)})

    def set_weight(self, canary_weight: int) -> RouteState:
        live = self.state().live
        self._set_canary(other(live), check_weight(canary_weight))
        return RouteState(live, canary_weight)

    def promote(self) -> RouteState:
        # Ordered so that every intermediate state sends all traffic to the new colour: canary at 100 %,
        # then the primary Ingress to the new colour, then the canary Ingress back to 0 on the old colour.
        old = self.state().live
        new = other(old)
        self._set_canary(new, 100)
        primary = self._read_ingress(self.target.ingress)
        self._route_to(primary, new)
        self._patch_ingress(primary)
        self._set_canary(old, 0)
        return RouteState(new, 0)


class GatewayApiRouter(_KubernetesColors):
    def __init__(self, target: KubernetesTarget, client=None):
        from kubernetes import client as k8s

        super().__init__(target, client)
        self.custom = k8s.CustomObjectsApi(self.client)

    def _read_route(self) -> dict:
        return self.custom.get_namespaced_custom_object(
            GATEWAY_GROUP, GATEWAY_VERSION, self.target.namespace, "httproutes", self.target.http_route
        )

    def state(self) -> RouteState:
        route = self._read_route()
        live = (route["metadata"].get("annotations") or {}).get(LIVE_ANNOTATION)
        weights = self._weights(route)
        if live not in COLORS:
            # Not yet written by a release: the colour with the larger weight is live.
            live = max(COLORS, key=lambda color: weights.get(color, 0))
        total = sum(weights.values()) or 1
        return RouteState(live, round(100 * weights.get(other(live), 0) / total))

    def _weights(self, route: dict) -> dict[str, int]:
        weights: dict[str, int] = {}
        for rule in route["spec"].get("rules", ()):
            for ref in rule.get("backendRefs", ()):
                color = self.target.color_of_service(ref["name"])
                if color:
                    weights[color] = ref.get("weight", 1)
        return weights

    def apply(self, state: RouteState) -> RouteState:
        route = self._read_route()
        shares = {state.live: 100 - state.canary_weight, state.idle: state.canary_weight}
        for number, rule in enumerate(route["spec"].get("rules", ()), start=1):
            refs = [ref for ref in rule.get("backendRefs", ()) if self.target.color_of_service(ref["name"])]
            if not refs:
                continue
            # Both colours are listed at all times (weight 0 is valid), so the change is one patch.
            others = [ref for ref in rule["backendRefs"] if not self.target.color_of_service(ref["name"])]
            if others:
                raise RouterError(
                    f"HTTPRoute {self.target.http_route} rule {number} mixes colour and other backends"
                )
            template = {key: value for key, value in refs[0].items() if key not in ("name", "weight")}
            template.setdefault("port", self.target.service_port)
            rule["backendRefs"] = [
                {**template, "name": self.target.service_name(color), "weight": shares[color]}
                for color in COLORS
            ]
        patch = {
            "metadata": {
                "resourceVersion": route["metadata"]["resourceVersion"],
                "annotations": {LIVE_ANNOTATION: state.live},
            },
            "spec": {"rules": route["spec"].get("rules", [])},
        }
        # Custom resources take JSON merge patches: `rules` is replaced as a whole, in one request.
        self.custom.patch_namespaced_custom_object(
            GATEWAY_GROUP, GATEWAY_VERSION, self.target.namespace, "httproutes", self.target.http_route, patch
        )
        return state

    def set_weight(self, canary_weight: int) -> RouteState:
        return self.apply(RouteState(self.state().live, check_weight(canary_weight)))

    def promote(self) -> RouteState:
        return self.apply(RouteState(self.state().idle, 0))
