"""Traffic routers: how a share of the traffic reaches the new version, whatever carries the traffic.

Every router manages two colours, blue and green. The live colour is stable; the idle one receives the new
image and, as the canary, a share of the traffic (its weight). Promotion makes the idle colour live, so the
pods or servers that were judged are exactly the ones that go on serving (no second rollout of the same image
after the analysis), and the old colour stays deployed as an instant way back until it is scaled down.
Rolling back is `set_weight(0)`: stable serves everything.

HOTPOT_ROUTER picks the implementation: `nginx` (weighted upstreams on a VM or locally), `ingress-nginx`
(a canary Ingress with the canary-weight annotation) or `gateway-api` (HTTPRoute backendRefs weights).
Plain Python: no Dagster import here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

COLORS = ("blue", "green")


class RouterError(RuntimeError):
    """The router could not apply a change (rejected config, failed rollout, API error)."""


def other(color: str) -> str:
    if color not in COLORS:
        raise RouterError(f"unknown colour {color!r}; expected one of {', '.join(COLORS)}")
    return COLORS[1 - COLORS.index(color)]


def check_weight(canary_weight: int) -> int:
    if not 0 <= canary_weight <= 100:
        raise RouterError(f"canary weight must be within 0..100, got {canary_weight}")
    return canary_weight


def refuse_live(color: str, state: RouteState) -> None:
    """Scaling down the live colour would take production down: never."""
    if color == state.live:
        raise RouterError(f"refusing to scale down {color}: it is the live colour")


@dataclass(frozen=True)
class RouteState:
    live: str
    canary_weight: int

    @property
    def idle(self) -> str:
        return other(self.live)


class Router(Protocol):
    def state(self) -> RouteState:
        """Which colour is live, and the share of traffic the idle colour gets."""

    def deploy(self, color: str, image: str) -> None:
        """Run `image` on `color` and return once it is rolled out."""

    def set_weight(self, canary_weight: int) -> RouteState:
        """Send `canary_weight` % of the traffic to the idle colour, the rest to the live one."""

    def promote(self) -> RouteState:
        """Make the idle colour live with all the traffic; the old live colour becomes idle at weight 0."""

    def scale_down(self, color: str) -> None:
        """Stop `color` serving (zero replicas); it must not be live."""

    def health_url(self, color: str) -> str:
        """Base URL that reaches `color` directly, bypassing the weights (for /health and /ready)."""
