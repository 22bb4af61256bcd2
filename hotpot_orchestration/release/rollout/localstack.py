"""A release target on loopback: two colours of a stand-in API behind the devstack's nginx, scraped by its
Prometheus, and bounded synthetic traffic; and what the safety gates need (an image in the devstack registry,
a verified backup in its S3). Used by the end-to-end tests and bench/canary_detection.py.

The colours are small Python HTTP servers rather than the sample app's binary because a test needs to turn
faults on and off while a release runs (the sample app reads its faults from the environment at start) and
to know which colour answered each request. They speak the same metrics as the sample app and the seed:
`http_requests_total{status}` and the `http_request_duration_seconds` histogram, for `/` only.

Prometheus scrapes each colour as its own job (`api-blue`, `api-green`), so a plan's selector is
`job="api-{color}"`. Everything listens on 127.0.0.1, and traffic is bounded in rate, count and time.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg

from hotpot_orchestration.backups.catalog import backup_keys, new_manifest, write_manifest
from hotpot_orchestration.devstack import Nginx, Prometheus
from hotpot_orchestration.platform.resources import BackupStorageResource
from hotpot_orchestration.release.image.resource import RegistryResource, ReleaseImageResource
from hotpot_orchestration.release.rollout import build_rollout_defs
from hotpot_orchestration.release.rollout.plan import parse_plan
from hotpot_orchestration.release.rollout.resources import CanaryPrometheusResource, TrafficRouterResource
from hotpot_orchestration.release.rollout.routers import RouteState
from hotpot_orchestration.release.rollout.routers.nginx import NginxRouter

SELECTOR = 'job="api-{color}"'
# Prometheus client libraries' default buckets.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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


@dataclass(frozen=True)
class Hit:
    at: float  # time.time() when the request was sent
    color: str | None  # None: no answer (connection error, timeout)
    status: int | None
    retried: bool = False  # answered on the second attempt after a closed keep-alive connection


class Traffic:
    """Synthetic clients through nginx: `rate` requests per second in total, over `concurrency` threads,
    stopping at `max_requests` or after `max_seconds`, whichever comes first (or at `stop()`)."""

    def __init__(self, url: str, rate: float, max_seconds: float, max_requests: int, concurrency: int = 8):
        self.url = url
        self.rate = rate
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.concurrency = concurrency
        self.hits: list[Hit] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def _client(self, index: int, started: float) -> None:
        import httpx

        period = self.concurrency / self.rate
        next_at = started + index * period / self.concurrency
        with httpx.Client(timeout=5.0) as client:
            while not self._stop.is_set() and time.monotonic() - started < self.max_seconds:
                delay = next_at - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                next_at += period
                with self._lock:
                    if len(self.hits) >= self.max_requests:
                        return
                sent = time.time()
                hit = Hit(sent, None, None)
                for attempt in (1, 2):
                    try:
                        response = client.get(self.url + "/")
                        hit = Hit(sent, response.text, response.status_code, retried=attempt > 1)
                        break
                    except httpx.RemoteProtocolError:
                        # An nginx reload closes idle keep-alive connections; a GET sent on one at that
                        # moment is retried, as HTTP clients do for idempotent requests (RFC 9112, 9.3.1).
                        hit = Hit(sent, None, None, retried=True)
                    except httpx.HTTPError:
                        break
                with self._lock:
                    self.hits.append(hit)

    def start(self) -> Traffic:
        started = time.monotonic()
        self._threads = [
            threading.Thread(target=self._client, args=(i, started), daemon=True)
            for i in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def between(self, start: float, end: float) -> list[Hit]:
        with self._lock:
            return [hit for hit in self.hits if start <= hit.at < end]

    @staticmethod
    def share(hits: list[Hit], color: str) -> float:
        """Percentage of answered requests that `color` served."""
        answered = [hit for hit in hits if hit.color is not None]
        return 100.0 * sum(hit.color == color for hit in answered) / max(1, len(answered))


class ReleaseStack:
    """blue and green colours, nginx routing between them through the release router's upstream file, and
    Prometheus scraping both every second. Blue starts live with all the traffic."""

    def __init__(self) -> None:
        self.colors = {color: ColorServer(color) for color in ("blue", "green")}
        self.nginx = Nginx({"127.0.0.1:9": 1})  # placeholder upstream, replaced by the include below
        self.prometheus: Prometheus | None = None
        self._exit = ExitStack()

    @property
    def upstream_conf(self) -> str:
        return str(self.nginx.tmp / "hotpot-upstream.conf")

    def router_resource(self) -> TrafficRouterResource:
        tmp = self.nginx.tmp
        return TrafficRouterResource(
            kind="nginx",
            nginx_upstream_conf=self.upstream_conf,
            nginx_command=[
                self.nginx.program,
                "-p",
                f"{tmp}/",
                "-e",
                f"{tmp}/logs/error.log",
                "-c",
                str(self.nginx.conf_path),
            ],
            nginx_pid_file=str(tmp / "nginx.pid"),
            blue_servers=[self.colors["blue"].address],
            green_servers=[self.colors["green"].address],
        )

    def router(self) -> NginxRouter:
        return self.router_resource().router()

    def reset(self) -> None:
        """Faults off, blue live with 100 %."""
        for server in self.colors.values():
            server.fault_5xx_ratio = 0.0
            server.fault_latency = 0.0
        self.router().apply(RouteState(live="blue", canary_weight=0))

    def start(self) -> ReleaseStack:
        for server in self.colors.values():
            server.start()
            self._exit.callback(server.stop)
        self._exit.enter_context(self.nginx)
        # Written (and checked by nginx -t) before nginx.conf includes it, so the include never dangles.
        self.router().apply(RouteState(live="blue", canary_weight=0))
        # The devstack config with its inline upstream block swapped for the router's file.
        conf = re.sub(
            r"    upstream hotpot_api \{\n.*?    \}\n",
            f"    include {self.upstream_conf};\n",
            self.nginx.render_conf(),
            flags=re.DOTALL,
        )
        self.nginx.reload(conf)
        targets = {f"api-{color}": [server.address] for color, server in self.colors.items()}
        self.prometheus = self._exit.enter_context(Prometheus(targets, scrape_interval="1s"))
        return self

    def stop(self) -> None:
        self._exit.close()

    def __enter__(self) -> ReleaseStack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @contextmanager
    def traffic(self, rate: float = 80, max_seconds: float = 120, concurrency: int = 8) -> Iterator[Traffic]:
        traffic = Traffic(self.nginx.url, rate, max_seconds, int(rate * max_seconds), concurrency).start()
        try:
            yield traffic
        finally:
            traffic.stop()


def write_verified_backup(client, bucket: str, prefix: str, created_at: datetime) -> None:
    """A backup manifest as the nightly job leaves it once verified (the dump itself is not needed)."""
    partition = created_at.date().isoformat()
    dump_key, manifest_key = backup_keys(prefix, "hotpot", partition, created_at)
    manifest = new_manifest(
        database="hotpot",
        partition=partition,
        created_at=created_at,
        dump_key=dump_key,
        dump_bytes=1,
        sha256="0" * 64,
        compression="zstd",
        server_version="18.0",
        server_version_num=180000,
        pg_dump_version="18.0",
        snapshot="",
        tables=[],
        sequences=[],
        extensions=[],
        large_objects=0,
    )
    manifest["verification"] = {"verified_at": created_at.isoformat(), "ok": True, "detail": "restored"}
    write_manifest(client, bucket, manifest_key, manifest, {})


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
    write_verified_backup(s3.client(), bucket, "database/", datetime.now(UTC) - backup_age)
    return {
        "plan": plan,
        "router": stack.router_resource().model_dump(),
        "prometheus_url": stack.prometheus.url,
        "image": {"tag": "v2", "digest": digest, "repository": repository, "registry": registry.host},
        "backup_storage": {"bucket": bucket, "prefix": "database/", "endpoint_url": s3.endpoint_url},
    }


def release_definitions(spec: dict) -> dg.Definitions:
    """The rollout definitions for `spec`, with the resources the code location would give them."""
    return dg.Definitions.merge(
        build_rollout_defs(parse_plan(spec["plan"])),
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
