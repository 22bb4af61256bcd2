"""The ingress-nginx and gateway-api routers, through the real `kubernetes` client, with the settings of
deploy/k8s/config.yaml and as the service accounts deploy/k8s/ creates.

No Kubernetes API server runs here: the client talks to the stand-in of tests/support/k8s_api.py, which
loads the Roles and RoleBindings of deploy/k8s/ and answers 403 to any request they do not grant, validates
every written object against the Kubernetes (or Gateway API) schema, enforces resourceVersion and plays the
Deployment controller. The client finds it through $KUBECONFIG, as it would outside a pod: the routers are
built by the same resource and settings as in production.
"""

from __future__ import annotations

import copy
import threading
import time

import dagster as dg
import pytest
from support.deploy import (
    IMAGE_V2,
    code_location_account,
    http_route,
    manifests,
    production_settings,
    seed_objects,
    sign_in,
)
from support.k8s_api import KubernetesApiStandIn, validate_http_route

from hotpot_orchestration.platform.kubernetes import RELEASE_SERVICE_ACCOUNT
from hotpot_orchestration.release.rollout.resources import TrafficRouterResource, traffic_router_resource
from hotpot_orchestration.release.rollout.rollback import rollback_job
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

GATEWAY = production_settings()  # deploy/k8s/config.yaml: HOTPOT_ROUTER=gateway-api
INGRESS_NGINX = production_settings(HOTPOT_ROUTER="ingress-nginx")
NAMESPACE = GATEWAY.k8s_app_namespace
APPS, NETWORKING, GATEWAY_API = "apps", "networking.k8s.io", "gateway.networking.k8s.io"


@pytest.fixture
def cluster(monkeypatch, tmp_path):
    """The stand-in with the shipped RBAC and the API's objects; the client signed in as hotpot-release."""
    api = KubernetesApiStandIn(manifests()).start()
    for obj in seed_objects(NAMESPACE):
        api.add(obj)
    api.sign_in = lambda account: sign_in(api, monkeypatch, tmp_path, account)
    api.sign_in(RELEASE_SERVICE_ACCOUNT)
    yield api
    api.stop()
    assert api.rejected == [], "a router wrote an object the API server would refuse"
    assert api.forbidden() == [], "a router sent a request the shipped Roles do not grant"


def test_production_settings_name_the_namespace_of_the_roles():
    assert NAMESPACE == "hotpot" and GATEWAY.router == "gateway-api"
    roles = {d["metadata"]["name"]: d for d in manifests() if d["kind"] == "Role"}
    assert roles["hotpot-release"]["metadata"]["namespace"] == NAMESPACE


def test_ingress_nginx_canary_promote_and_scale_down(cluster):
    router = traffic_router_resource(INGRESS_NGINX).router()
    assert isinstance(router, IngressNginxRouter) and router.target.namespace == NAMESPACE
    assert router.state() == RouteState("blue", 0)

    router.deploy("green", IMAGE_V2)  # waits for the stand-in's rollout, like kubectl rollout status
    green = cluster.get(APPS, "deployments", NAMESPACE, "api-server-green")
    assert green["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE_V2
    assert green["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]  # the rest is untouched
    assert green["spec"]["replicas"] == 3  # back at the live colour's size
    assert green["status"]["updatedReplicas"] == 3

    for weight in (20, 60):
        assert router.set_weight(weight) == RouteState("blue", weight)
        canary = cluster.get(NETWORKING, "ingresses", NAMESPACE, "api-ingress-canary")
        assert canary["metadata"]["annotations"][CANARY_ANNOTATION] == "true"
        assert canary["metadata"]["annotations"][WEIGHT_ANNOTATION] == str(weight)
        assert (
            canary["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "api-server-green"
        )
        assert "tls" not in canary["spec"]
    assert [verb for verb, what, _ in cluster.writes if what == "Ingress/api-ingress-canary"] == [
        "POST",
        "PATCH",
    ]

    assert router.promote() == RouteState("green", 0)
    primary = cluster.get(NETWORKING, "ingresses", NAMESPACE, "api-ingress")
    assert primary["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "api-server-green"
    assert primary["metadata"]["annotations"] == {"team": "api"}
    assert primary["spec"]["tls"] == [{"hosts": ["api.thehotpotspot.com"], "secretName": "api-tls"}]
    canary = cluster.get(NETWORKING, "ingresses", NAMESPACE, "api-ingress-canary")
    assert canary["metadata"]["annotations"][WEIGHT_ANNOTATION] == "0"
    assert canary["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "api-server-blue"
    assert router.state() == RouteState("green", 0)

    with pytest.raises(RouterError, match="live colour"):
        router.scale_down("green")
    router.scale_down("blue")
    assert cluster.get(APPS, "deployments", NAMESPACE, "api-server-blue")["spec"]["replicas"] == 0
    # Every change was a PATCH: the Role grants no update.
    assert {r.verb for r in cluster.used() if r.verb not in ("get", "list")} == {"create", "patch"}


def test_ingress_nginx_weight_zero_without_a_canary_creates_nothing(cluster):
    router = traffic_router_resource(INGRESS_NGINX).router()
    assert router.set_weight(0) == RouteState("blue", 0)
    assert not [w for w in cluster.writes if w[1] == "Ingress/api-ingress-canary"]


def test_ingress_nginx_promotion_never_sends_traffic_back_to_the_old_colour(cluster):
    router = traffic_router_resource(INGRESS_NGINX).router()
    router.set_weight(80)
    start = len(cluster.writes)
    router.promote()

    # Replay the writes: after each one, where does 100 % of the traffic go?
    primary, canary = "api-server-blue", ("api-server-green", 80)
    for _, what, body in cluster.writes[start:]:
        service = body["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
        if what == "Ingress/api-ingress":
            primary = service
        else:
            canary = (service, int(body["metadata"]["annotations"][WEIGHT_ANNOTATION]))
        new_share = (100 if primary == "api-server-green" else 0) * (100 - canary[1]) / 100 + (
            canary[1] if canary[0] == "api-server-green" else 0
        )
        assert new_share >= 80, f"after writing {what}, green would get only {new_share} %"


def test_gateway_api_weights_and_live_colour(cluster):
    router = traffic_router_resource(GATEWAY).router()
    assert isinstance(router, GatewayApiRouter)
    assert router.state() == RouteState("blue", 0)
    router.set_weight(30)
    route = cluster.get(GATEWAY_API, "httproutes", NAMESPACE, "api-route")
    assert route["spec"]["rules"][0]["backendRefs"] == [
        {"name": "api-server-blue", "port": 80, "weight": 70},
        {"name": "api-server-green", "port": 80, "weight": 30},
    ]
    assert route["spec"]["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert route["spec"]["parentRefs"] == [{"name": "public-gateway"}]
    assert router.promote() == RouteState("green", 0)
    route = cluster.get(GATEWAY_API, "httproutes", NAMESPACE, "api-route")
    assert route["metadata"]["annotations"][LIVE_ANNOTATION] == "green"
    assert [ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]] == [0, 100]
    # Equal weights could not say which colour is live: the annotation does.
    router.set_weight(50)
    assert router.state() == RouteState("green", 50)
    assert router.set_weight(0) == RouteState("green", 0)
    assert {w[0] for w in cluster.writes} == {"PATCH"}


def _stuck_router(seconds: float) -> GatewayApiRouter:
    target = KubernetesTarget(namespace=NAMESPACE, rollout_timeout=seconds, poll_interval=0.05)
    return GatewayApiRouter(target, api_client())


def test_rollout_that_never_completes_fails_with_what_it_waited_for(cluster):
    cluster.stuck.add("api-server-green")
    with pytest.raises(RouterError, match="not rolled out after 0.5s: waiting for the controller"):
        _stuck_router(0.5).deploy("green", IMAGE_V2)


def test_progress_deadline_exceeded_fails_at_once(cluster):
    cluster.stuck.add("api-server-green")
    key = (APPS, "deployments", NAMESPACE, "api-server-green")

    def exceed() -> None:
        with cluster._lock:
            cluster.objects[key]["status"].update(
                observedGeneration=cluster.objects[key]["metadata"]["generation"],
                conditions=[{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}],
            )

    threading.Timer(0.2, exceed).start()
    started = time.monotonic()
    with pytest.raises(RouterError, match="progress deadline"):
        _stuck_router(30).deploy("green", IMAGE_V2)
    assert time.monotonic() - started < 30  # the condition ended the wait, not the timeout


def test_a_concurrent_edit_is_not_overwritten(cluster):
    from kubernetes.client.exceptions import ApiException

    router = traffic_router_resource(GATEWAY).router()
    original = router.custom.get_namespaced_custom_object
    route = cluster.get(GATEWAY_API, "httproutes", NAMESPACE, "api-route")

    def read_then_someone_else_writes(*args):
        seen = original(*args)
        cluster.add(copy.deepcopy(route))  # another writer, between the router's read and its patch
        return seen

    router.custom.get_namespaced_custom_object = read_then_someone_else_writes
    with pytest.raises(ApiException) as caught:
        router.apply(RouteState("blue", 5))
    assert caught.value.status == 409
    assert cluster.get(GATEWAY_API, "httproutes", NAMESPACE, "api-route")["spec"] == route["spec"]


def test_a_router_without_its_namespace_fails_naming_the_variable():
    with pytest.raises(ValueError, match="HOTPOT_K8S_APP_NAMESPACE"):
        TrafficRouterResource(kind="gateway-api").router()


def test_release_failure_sensor_account_can_roll_traffic_back_and_nothing_else(cluster):
    from kubernetes.client.exceptions import ApiException

    for settings in (GATEWAY, INGRESS_NGINX):
        cluster.sign_in(RELEASE_SERVICE_ACCOUNT)
        traffic_router_resource(settings).router().set_weight(40)
        cluster.sign_in(code_location_account())  # the code-location server, where sensors run
        router = traffic_router_resource(settings).router()
        assert router.set_weight(0) == RouteState("blue", 0)
    with pytest.raises(ApiException) as caught:
        router.deploy("green", IMAGE_V2)
    assert caught.value.status == 403
    cluster.requests[:] = [r for r in cluster.requests if r.allowed]  # the refusal above was the point


def test_rollback_job_returns_all_traffic_to_stable(cluster):
    for settings in (GATEWAY, INGRESS_NGINX):
        router = traffic_router_resource(settings).router()
        router.set_weight(40)
        result = rollback_job.execute_in_process(
            resources={"traffic_router": traffic_router_resource(settings)},
            instance=dg.DagsterInstance.ephemeral(),
        )
        assert result.success
        assert router.state() == RouteState("blue", 0)


def test_http_route_validator_rejects_what_the_crd_rejects():
    route = http_route(NAMESPACE)
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
