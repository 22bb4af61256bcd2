"""What a release acts on, on loopback: nginx in front of two colours and Prometheus scraping both.

nginx includes its upstream block from a file, the one the release router (HOTPOT_ROUTER=nginx) rewrites, as
production nginx does; until a release writes it, blue serves everything, which is also what the router
reads from a file it has not written. Prometheus scrapes each colour as job `hotpot-api` with the colour as
its `color` label: the series the default rollout plan's selector picks. `env()` is the configuration of
the release router and the canary analysis for this target.

The colours are any HTTP servers on 127.0.0.1 answering /health, /ready and /metrics: the sample app's
processes for `make dev`, stand-in servers whose faults a test switches on and off.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Self

from .nginx import Nginx
from .prometheus import PrometheusServer

API_JOB = "hotpot-api"
COLORS = ("blue", "green")


class ReleaseTarget:
    def __init__(self, addresses: Mapping[str, str], scrape_interval: str = "1s"):
        """`addresses`: colour -> "host:port" of its server, for blue and green."""
        self.addresses = {color: addresses[color] for color in COLORS}
        self.nginx = Nginx({self.addresses["blue"]: 1}, upstream_file=True)
        targets = {API_JOB: {address: {"color": color} for color, address in self.addresses.items()}}
        self.prometheus = PrometheusServer(targets, scrape_interval=scrape_interval, scrape_self=True)

    def start(self) -> Self:
        try:
            # In parallel: Prometheus mostly waits for its first scrape of each colour.
            with ThreadPoolExecutor(2) as pool:
                for future in [pool.submit(self.nginx.start), pool.submit(self.prometheus.start)]:
                    future.result()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.prometheus.stop()
        self.nginx.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """HOTPOT_ROUTER and the nginx router's variables for this nginx and colours, and the Prometheus."""
        return {
            "HOTPOT_ROUTER": "nginx",
            "HOTPOT_NGINX_UPSTREAM_CONF": str(self.nginx.upstream_conf),
            "HOTPOT_NGINX_COMMAND": shlex.join(self.nginx.command()),
            "HOTPOT_NGINX_PID_FILE": str(self.nginx.pid_path),
            "HOTPOT_BLUE_SERVERS": self.addresses["blue"],
            "HOTPOT_GREEN_SERVERS": self.addresses["green"],
            "HOTPOT_PROMETHEUS_URL": self.prometheus.url,
        }
