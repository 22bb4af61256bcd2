"""Prometheus on 127.0.0.1 with a generated scrape config, for canary analysis against real PromQL."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import httpx

from ._process import Service, ServiceError, find_program, free_port

DEFAULT_JOB = "hotpot"

# job -> "host:port" list, or job -> {"host:port": {label: value}} to attach static labels to a target.
Targets = Mapping[str, Iterable[str] | Mapping[str, Mapping[str, str]]] | Iterable[str]


class PrometheusServer(Service):
    """Prometheus on 127.0.0.1:<free port>, TSDB in its temp dir.

    `targets` is a list of "host:port" (scraped as job "hotpot"), or a mapping job name -> list of
    "host:port", or job name -> {"host:port": labels} where labels (such as {"color": "blue"}) are added to
    every series scraped from that target. `scrape_self` adds job "prometheus" scraping this server, so `up`
    has data without any other target.
    """

    name = "prometheus"

    def __init__(
        self,
        targets: Targets = (),
        scrape_interval: str = "1s",
        scrape_self: bool = False,
        program: str = "/usr/bin/prometheus",
        startup_timeout: float = 60.0,
    ):
        super().__init__()
        self.targets = self._jobs(targets)
        self.scrape_interval = scrape_interval
        self.scrape_self = scrape_self
        self.program = program
        self.startup_timeout = startup_timeout
        self.port = 0

    @staticmethod
    def _jobs(targets: Targets) -> dict[str, dict[str, dict[str, str]]]:
        """job -> {address: static labels}."""
        if not isinstance(targets, Mapping):
            addresses = list(targets)
            targets = {DEFAULT_JOB: addresses} if addresses else {}
        return {
            job: {
                address: dict(addresses[address]) if isinstance(addresses, Mapping) else {}
                for address in addresses
            }
            for job, addresses in targets.items()
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _jobs_with_self(self) -> dict[str, dict[str, dict[str, str]]]:
        if not self.scrape_self:
            return self.targets
        return {**self.targets, "prometheus": {f"127.0.0.1:{self.port}": {}}}

    def _write_config(self) -> None:
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": [
                {
                    "job_name": job,
                    "static_configs": [
                        {"targets": [address], "labels": labels} for address, labels in targets.items()
                    ],
                }
                for job, targets in self._jobs_with_self().items()
            ],
        }
        (self.tmp / "prometheus.yml").write_text(json.dumps(config, indent=2))  # JSON is valid YAML

    def _scraped_all(self) -> bool:
        """Every configured target is active and has been scraped (up or down, no longer "unknown")."""
        # Service discovery hands new targets to the scrapers at most every 5 s, so this can take a while.
        expected = {
            (job, address) for job, addresses in self._jobs_with_self().items() for address in addresses
        }
        active = httpx.get(f"{self.url}/api/v1/targets", params={"state": "active"}, timeout=5).json()
        scraped = {
            (target["labels"]["job"], target["labels"]["instance"])
            for target in active["data"]["activeTargets"]
            if target["health"] != "unknown"
        }
        return expected <= scraped

    def query(self, promql: str) -> list[dict]:
        """Instant query; the `result` list of the HTTP API's answer."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=30)
        body = response.json()
        if body.get("status") != "success":
            raise ServiceError(f"PromQL query {promql!r} failed: {body.get('error', response.text)}")
        return body["data"]["result"]

    def _start(self) -> None:
        program = find_program(self.program, "prometheus")
        self.port = free_port()
        self._write_config()
        self._spawn(
            [
                program,
                f"--config.file={self.tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ]
        )
        self._wait_until(
            lambda: httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200,
            f"Prometheus to be ready on {self.url}",
        )
        self._wait_until(self._scraped_all, "the first scrape of every target")
