"""Dagster resources of the rollout concern: the traffic router and the Prometheus that judges canaries.

Thin: they only build the plain objects of `routers` and `analysis` from their config, which an operator can
override per run in the launchpad (`resources.traffic_router.config`).
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from hotpot_orchestration.release.rollout.analysis import Prometheus
from hotpot_orchestration.release.rollout.routers import Router
from hotpot_orchestration.release.rollout.routers.kubernetes import KubernetesTarget
from hotpot_orchestration.settings import DEFAULTS, ROUTERS, Settings


class TrafficRouterResource(dg.ConfigurableResource):
    """Where release traffic is shifted (HOTPOT_ROUTER) and the names of what it touches."""

    kind: str = Field(
        default=DEFAULTS.router, description="nginx, ingress-nginx or gateway-api (HOTPOT_ROUTER)"
    )
    # nginx
    nginx_upstream_conf: str = Field(
        default=str(DEFAULTS.nginx_upstream_conf),
        description="file holding `upstream hotpot_api {...}`, included by nginx.conf inside http {} "
        "(HOTPOT_NGINX_UPSTREAM_CONF)",
    )
    nginx_command: list[str] = Field(
        default=list(DEFAULTS.nginx_command),
        description="argv prefix of nginx, e.g. [nginx, -p, PREFIX, -c, CONF] (HOTPOT_NGINX_COMMAND)",
    )
    nginx_pid_file: str | None = Field(
        default=str(DEFAULTS.nginx_pid_file),
        description="master pid file; set to wait for new workers after a reload (HOTPOT_NGINX_PID_FILE)",
    )
    blue_servers: list[str] = Field(
        default=[], description="host:port of blue's servers (HOTPOT_BLUE_SERVERS)"
    )
    green_servers: list[str] = Field(
        default=[], description="host:port of green's servers (HOTPOT_GREEN_SERVERS)"
    )
    # Kubernetes (ingress-nginx, gateway-api): signed in as the pod's service account, else $KUBECONFIG.
    namespace: str | None = Field(
        default=None,
        description="namespace of the API's Deployments, Ingress, HTTPRoute (HOTPOT_K8S_APP_NAMESPACE)",
    )
    deployment: str = Field(default=KubernetesTarget.deployment, description="Deployment name; {color}")
    service: str = Field(default=KubernetesTarget.service, description="Service name; {color}")
    container: str = KubernetesTarget.container
    ingress: str = Field(default=KubernetesTarget.ingress, description="primary Ingress (ingress-nginx)")
    canary_ingress: str = Field(default=KubernetesTarget.canary_ingress, description="created if missing")
    http_route: str = Field(default=KubernetesTarget.http_route, description="HTTPRoute (gateway-api)")
    service_port: int = KubernetesTarget.service_port
    rollout_timeout_seconds: float = KubernetesTarget.rollout_timeout

    def router(self) -> Router:
        if self.kind == "nginx":
            from hotpot_orchestration.release.rollout.routers.nginx import NginxRouter

            return NginxRouter(
                self.nginx_upstream_conf,
                {"blue": self.blue_servers, "green": self.green_servers},
                nginx_command=self.nginx_command,
                pid_file=self.nginx_pid_file,
            )
        from hotpot_orchestration.release.rollout.routers.kubernetes import (
            GatewayApiRouter,
            IngressNginxRouter,
            api_client,
        )

        if not self.namespace:
            raise ValueError(
                f"HOTPOT_ROUTER={self.kind} needs HOTPOT_K8S_APP_NAMESPACE (where the API's objects are)"
            )
        target = KubernetesTarget(
            namespace=self.namespace,
            deployment=self.deployment,
            service=self.service,
            container=self.container,
            ingress=self.ingress,
            canary_ingress=self.canary_ingress,
            http_route=self.http_route,
            service_port=self.service_port,
            rollout_timeout=self.rollout_timeout_seconds,
        )
        if self.kind == "ingress-nginx":
            return IngressNginxRouter(target, api_client())
        if self.kind == "gateway-api":
            return GatewayApiRouter(target, api_client())
        raise ValueError(f"HOTPOT_ROUTER={self.kind!r} is not valid: expected one of {', '.join(ROUTERS)}")


def traffic_router_resource(settings: Settings) -> TrafficRouterResource:
    """The router HOTPOT_ROUTER names, with the nginx router's and Kubernetes' settings."""
    return TrafficRouterResource(
        kind=settings.router,
        nginx_upstream_conf=str(settings.nginx_upstream_conf),
        nginx_command=list(settings.nginx_command),
        nginx_pid_file=str(settings.nginx_pid_file),
        blue_servers=list(settings.blue_servers),
        green_servers=list(settings.green_servers),
        namespace=settings.k8s_app_namespace,
    )


class CanaryPrometheusResource(dg.ConfigurableResource):
    """The Prometheus canaries are judged by (HOTPOT_PROMETHEUS_URL)."""

    url: str | None = Field(default=None, description="http(s) URL of Prometheus; from HOTPOT_PROMETHEUS_URL")
    timeout_seconds: float = 5.0

    def client(self) -> Prometheus:
        if not self.url:
            raise ValueError("HOTPOT_PROMETHEUS_URL is not set: releases cannot be judged without Prometheus")
        return Prometheus(self.url, timeout=self.timeout_seconds)
