"""One tick of `new_image_tag_sensor` over a repository of 1,000 tags: its time and its HTTP requests.

Starts the devstack registry (Debian `docker-registry`) on loopback, pushes 1,000 tags (plus `latest` and
two signature tags) to each of two repositories, then evaluates the real sensor through Dagster
(`build_sensor_context`, cursor fed back) under both tag orders:
- `semver` over `1.x.y` tags: ordering needs only the names, so only the winner is resolved (one HEAD);
- `created` over commit tags: each tag never seen before costs one manifest read (our builds carry the
  `org.opencontainers.image.created` annotation); its time is remembered in the cursor afterwards.
docker-registry 2.8 ignores `n` and sends every tag in one answer, so the ticks also run through a loopback
proxy that pages like distribution 3 / Harbor / GHCR (n=100: ten pages). Requests are counted where they
reach the registry (by the proxy).

Target: at most one request per page plus one per new candidate.

Usage: .venv/bin/python bench/sensor_tick.py [--tags 1000]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import httpx

from hotpot_devstack import Registry
from hotpot_devstack.paging_proxy import PagingProxy
from hotpot_orchestration.platform.registry import OCI_MANIFEST, sha256_digest
from hotpot_orchestration.release.image import new_image_tag_sensor
from hotpot_orchestration.release.image.resource import ImageTagPolicyResource, RegistryResource

PAGE = 100
SIGNATURE = "sha256-" + "ab" * 32


def push_tags(registry_url: str, repository: str, tags: list[str], base: datetime) -> None:
    """One shared layer and config; each tag gets its own manifest (own digest and creation annotation)."""
    layer = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00"  # empty gzip
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    )
    blobs = [
        (config.encode(), "application/vnd.oci.image.config.v1+json"),
        (layer, "application/octet-stream"),
    ]
    with httpx.Client(base_url=registry_url, timeout=30) as http:
        for data, _ in blobs:
            started = http.post(f"/v2/{repository}/blobs/uploads/")
            location = httpx.URL(registry_url).join(started.headers["Location"])
            http.put(location.copy_add_param("digest", sha256_digest(data)), content=data).raise_for_status()
        descriptors = [{"mediaType": m, "digest": sha256_digest(d), "size": len(d)} for d, m in blobs]
        for index, tag in enumerate(tags):
            created = (base + timedelta(minutes=index)).strftime("%Y-%m-%dT%H:%M:%SZ")
            manifest = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": descriptors[0],
                "layers": descriptors[1:],
                "annotations": {"org.opencontainers.image.created": created, "org.example.tag": tag},
            }
            http.put(
                f"/v2/{repository}/manifests/{tag}",
                content=json.dumps(manifest).encode(),
                headers={"Content-Type": OCI_MANIFEST},
            ).raise_for_status()


class Ticks:
    def __init__(self, host: str, repository: str, order: str, pattern: str):
        self.resources = {
            "registry": RegistryResource(registry=host, repository=repository, page_size=PAGE),
            "image_tag_policy": ImageTagPolicyResource(order=order, pattern=pattern),
        }
        self.instance = dg.DagsterInstance.ephemeral()
        self.cursor: str | None = None

    def tick(self) -> tuple[float, dg.SensorResult]:
        context = dg.build_sensor_context(
            cursor=self.cursor, instance=self.instance, resources=self.resources
        )
        started = time.perf_counter()
        result = new_image_tag_sensor(context)
        elapsed = time.perf_counter() - started
        self.cursor = result.cursor
        return elapsed, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tags", type=int, default=1000)
    count = parser.parse_args().tags
    base = datetime(2026, 1, 1, tzinfo=UTC)
    semver_tags = [f"1.{i // 100}.{i % 100}" for i in range(count)]
    commit_tags = [sha256_digest(str(i).encode())[7:19] for i in range(count)]
    extra = ["latest", f"{SIGNATURE}.sig", f"{SIGNATURE}.att"]
    rows = []
    total = count + len(extra)
    with Registry() as registry:
        for label, paged in (("paged n=100", True), ("one page (docker-registry 2.8)", False)):
            with PagingProxy(registry.url, paginate=paged) as proxy:
                pages = math.ceil(total / PAGE) if paged else 1
                for order, tags, pattern, new_tag in (
                    ("semver", semver_tags, r"\d+\.\d+\.\d+", "2.0.0"),
                    ("created", commit_tags, r"[0-9a-f]{12}", "f" * 12),
                ):
                    repository = f"bench/{order}-{'paged' if paged else 'flat'}"
                    started = time.perf_counter()
                    push_tags(registry.url, repository, tags + extra, base)
                    print(f"pushed {total} tags to {repository} in {time.perf_counter() - started:.1f} s")
                    ticks = Ticks(proxy.host, repository, order, pattern)
                    steps = [("first tick", len(tags) if order == "created" else 1, None)]
                    steps += [("nothing new", 0, None), ("one new tag", 1, new_tag)]
                    for step, new, push in steps:
                        if push:
                            push_tags(registry.url, repository, [push], base + timedelta(days=30))
                        proxy.requests = 0
                        elapsed, result = ticks.tick()
                        runs = len(result.run_requests)
                        rows.append(
                            (order, label, step, proxy.requests, pages, new, pages + new, elapsed, runs)
                        )
    print(f"\nrepository of {count} tags (+ latest and 2 signature tags), sensor ticks through Dagster\n")
    header = ("order", "registry paging", "tick", "requests", "pages", "new", "target", "time", "runs")
    print("{:<8} {:<30} {:<12} {:>8} {:>6} {:>5} {:>7} {:>8} {:>5}".format(*header))
    for order, label, step, requests, pages, new, target, elapsed, runs in rows:
        print(
            f"{order:<8} {label:<30} {step:<12} {requests:>8} {pages:>6} {new:>5} {target:>7}"
            f" {elapsed:>7.3f}s {runs:>5}"
        )
    met = all(requests <= target for _, _, _, requests, _, _, target, _, _ in rows)
    print(f"\ntarget (at most one request per page plus one per new candidate): {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
