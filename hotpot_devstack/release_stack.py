"""A release target on loopback for the end-to-end tests and bench/canary_detection.py: two colours of a
stand-in API behind the devstack's nginx, scraped by its Prometheus (`devstack.ReleaseTarget`, as in
`make dev`), with bounded synthetic traffic; and what the safety gates need (an image in the devstack
registry, a verified backup in its S3).

The colours are small Python HTTP servers rather than the sample app's binary (which `make dev` runs)
because a test needs to turn faults on and off while a release runs (the sample app reads its faults from
the environment at start). They speak the same metrics as the sample app and the seed:
`http_requests_total{status}` and the `http_request_duration_seconds` histogram, for `/` only, and name their
colour in `X-Track`. Everything listens on 127.0.0.1, and traffic is bounded in rate, count and time.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg

from hotpot_devstack import API_JOB, COLORS, Nginx, PrometheusServer, ReleaseTarget, Traffic
from hotpot_devstack.backups import write_backup_record
from hotpot_orchestration.platform.resources import BackupStorageResource
from hotpot_orchestration.release.image.resource import RegistryResource, ReleaseImageResource
from hotpot_orchestration.release.rollout import build_rollout_defs
from hotpot_orchestration.release.rollout.plan import load_plan, parse_plan
from hotpot_orchestration.release.rollout.resources import (
    CanaryPrometheusResource,
    TrafficRouterResource,
    traffic_router_resource,
)
from hotpot_orchestration.release.rollout.routers import RouteState
from hotpot_orchestration.release.rollout.routers.nginx import NginxRouter
from hotpot_orchestration.settings import load_settings

# The default plan's: the target's Prometheus labels each colour's series the way production does.
SELECTOR = load_plan().analysis.selector
# Prometheus client libraries' default buckets.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def local_plan(
    interval: float,
    steps: list[str],
    *,
    window: float | None = None,
    approval_timeout: str = "20s",
    blue_green_analysis: str = "4s",
) -> str:
    """A rollout plan for this stack: the default plan's selector and thresholds on a scale of seconds.
    `steps` are YAML flow mappings such as '{weight: 20, pause: 4s}'; the window defaults to the interval."""
    window_line = f"\n  window: {window}s" if window is not None else ""
    step_lines = "".join(f"\n  - {step}" for step in steps)
    return f"""
analysis:
  interval: {interval}s{window_line}
  watch_every: 1s
  min_requests: 15
  max_inconclusive: 2
  selector: '{SELECTOR}'
  metrics:
    error_ratio: {{threshold: 0.1, max_increase_over_stable: 0.02}}
    latency_p95: {{threshold: 1.0, max_increase_over_stable: 0.25}}
approval_timeout: {approval_timeout}
health_timeout: 5s
steps:{step_lines}
blue_green: {{analysis: {blue_green_analysis}, scale_down_delay: 1s}}
"""


class ColorServer:
    """One colour of the stand-in API. `fault_5xx_ratio` (spread evenly over requests) and `fault_latency`
    (seconds added to every request) may be changed at any time."""

    def __init__(self, color: str):
        self.color = color
        self.fault_5xx_ratio = 0.0
        self.fault_latency = 0.0
        self._lock = threading.Lock()
        self._requests = 0
        # Every status exported from the start, as the sample app does: a series born at its first error
        # would hide that error from rate() until a second one comes.
        self._by_status: Counter[str] = Counter({"200": 0, "503": 0})
        self._bucket_counts = [0] * len(BUCKETS)
        self._duration_sum = 0.0
        self._server: ThreadingHTTPServer | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def requests(self) -> int:
        """How many requests to `/` this colour has answered so far."""
        with self._lock:
            return self._requests

    def _answer(self) -> int:
        started = time.perf_counter()
        if self.fault_latency:
            time.sleep(self.fault_latency)
        with self._lock:
            self._requests += 1
            # The n-th request fails when floor(n * ratio) steps up: exactly `ratio` of them, evenly spread.
            n = self._requests
            status = 503 if int(n * self.fault_5xx_ratio) > int((n - 1) * self.fault_5xx_ratio) else 200
            self._by_status[str(status)] += 1
            elapsed = time.perf_counter() - started
            self._duration_sum += elapsed
            for index, bound in enumerate(BUCKETS):
                if elapsed <= bound:
                    self._bucket_counts[index] += 1
        return status

    def metrics(self) -> str:
        with self._lock:
            lines = ["# TYPE http_requests_total counter"]
            lines += [f'http_requests_total{{status="{s}"}} {n}' for s, n in sorted(self._by_status.items())]
            lines.append("# TYPE http_request_duration_seconds histogram")
            lines += [
                f'http_request_duration_seconds_bucket{{le="{bound}"}} {count}'
                for bound, count in zip(BUCKETS, self._bucket_counts, strict=True)
            ]
            lines.append(f'http_request_duration_seconds_bucket{{le="+Inf"}} {self._requests}')
            lines.append(f"http_request_duration_seconds_sum {self._duration_sum}")
            lines.append(f"http_request_duration_seconds_count {self._requests}")
        return "\n".join(lines) + "\n"

    def start(self) -> ColorServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path in ("/health", "/ready"):
                    status, body = 200, b"ok\n"
                elif self.path == "/metrics":
                    status, body = 200, server.metrics().encode()
                else:
                    status = server._answer()
                    body = server.color.encode()
                self.send_response(status)
                self.send_header("X-Track", server.color)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()


class ReleaseStack:
    """blue and green stand-in colours behind the devstack's release target: nginx routing between them
    through the release router's upstream file, Prometheus scraping both every second. Blue starts live
    with all the traffic."""

    def __init__(self) -> None:
        self.colors = {color: ColorServer(color) for color in COLORS}
        self.target: ReleaseTarget | None = None
        self._exit = ExitStack()

    @property
    def nginx(self) -> Nginx:
        return self.target.nginx

    @property
    def prometheus(self) -> PrometheusServer:
        return self.target.prometheus

    def router_resource(self) -> TrafficRouterResource:
        """The resource the code location builds from this target's environment."""
        return traffic_router_resource(load_settings(self.target.env()))

    def router(self) -> NginxRouter:
        return self.router_resource().router()

    def reset(self) -> None:
        """Faults off, blue live with 100 %."""
        for server in self.colors.values():
            server.fault_5xx_ratio = 0.0
            server.fault_latency = 0.0
        self.router().apply(RouteState(live="blue", canary_weight=0))

    def quiet_for(self, seconds: float) -> bool:
        """Whether every sample Prometheus took of each colour in the last `seconds` holds that colour's
        current request count: an analysis window that long sees no request sent before this call."""
        window = f"{max(1, round(seconds * 1000))}ms"
        for color, server in self.colors.items():
            answered = server.requests
            series = f'http_request_duration_seconds_count{{job="{API_JOB}", color="{color}"}}'
            query = f"min_over_time({series}[{window}])"
            result = self.prometheus.query(query)
            if not result or float(result[0]["value"][1]) != answered:
                return False
        return True

    def start(self) -> ReleaseStack:
        for server in self.colors.values():
            server.start()
            self._exit.callback(server.stop)
        addresses = {color: server.address for color, server in self.colors.items()}
        self.target = self._exit.enter_context(ReleaseTarget(addresses))
        return self

    def stop(self) -> None:
        self._exit.close()

    def __enter__(self) -> ReleaseStack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @contextmanager
    def traffic(self, rate: float = 80, max_seconds: float = 120, concurrency: int = 8) -> Iterator[Traffic]:
        traffic = Traffic(self.nginx.url, rate, max_seconds, concurrency).start()
        try:
            yield traffic
        finally:
            traffic.stop()


def release_spec(
    stack: ReleaseStack, registry, s3, plan: str, backup_age: timedelta = timedelta(hours=3)
) -> dict:
    """Everything a release run needs, as plain data (it crosses into a separate process in one test):
    an image pushed to the devstack `registry`, a verified backup `backup_age` old in the devstack `s3`."""
    suffix = uuid.uuid4().hex[:8]
    repository = f"thehotpotspot/api-{suffix}"
    digest = registry.push_test_image(repository, "v2")
    bucket = f"release-{suffix}"
    s3.create_bucket(bucket)
    database = "hotpot"
    write_backup_record(s3.client(), bucket, "database/", database, datetime.now(UTC) - backup_age, ok=True)
    return {
        "plan": plan,
        "router": stack.router_resource().model_dump(),
        "prometheus_url": stack.prometheus.url,
        # Where a refused gate links to: make dev's UI.
        "ui_url": "http://127.0.0.1:3000",
        "image": {"tag": "v2", "digest": digest, "repository": repository, "registry": registry.host},
        "backup_storage": {
            "bucket": bucket,
            "prefix": "database/",
            "endpoint_url": s3.endpoint_url,
            "database": database,
        },
    }


def release_definitions(spec: dict) -> dg.Definitions:
    """The rollout definitions for `spec`, with the resources the code location would give them."""
    return dg.Definitions.merge(
        build_rollout_defs(parse_plan(spec["plan"]), spec["ui_url"]),
        dg.Definitions(
            resources={
                "traffic_router": TrafficRouterResource(**spec["router"]),
                "canary_prometheus": CanaryPrometheusResource(url=spec["prometheus_url"]),
                "release_image": ReleaseImageResource(**spec["image"]),
                "registry": RegistryResource(registry=spec["image"]["registry"]),
                "backup_storage": BackupStorageResource(**spec["backup_storage"]),
            }
        ),
    )
