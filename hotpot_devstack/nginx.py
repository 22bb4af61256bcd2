"""nginx on 127.0.0.1 as the traffic router, entirely inside its temp dir (no /etc, no /var).

The generated config proxies `/` to the weighted upstream `hotpot_api`; `reload()` swaps in any config text
the way production does it: `nginx -t` first, then `nginx -s reload`. With `upstream_file`, the upstream block
lives in its own file that nginx.conf includes, as in production, where the release router rewrites it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

import httpx

from ._process import Service, ServiceError, find_program, free_port

UPSTREAM = "hotpot_api"
HEALTH_PATH = "/devstack-health"

Upstreams = Mapping[str, int] | Iterable[str]


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(child) for child in path.read_text().split()} if path.exists() else set()


class Nginx(Service):
    """nginx on 127.0.0.1:<free port> proxying to `upstreams`.

    `upstreams` maps "host:port" to a weight (0 marks the server `down`), or is a list of "host:port" with
    weight 1 each. With no upstreams every proxied request gets 503. `upstream_file`: the upstream block is
    written to `upstream_conf` and included, so a release router can take the file over.
    """

    name = "nginx"
    startup_timeout = 30.0

    def __init__(
        self, upstreams: Upstreams = (), program: str = "/usr/sbin/nginx", upstream_file: bool = False
    ):
        super().__init__()
        self.upstreams = dict(upstreams) if isinstance(upstreams, Mapping) else dict.fromkeys(upstreams, 1)
        self.program = program
        self.upstream_file = upstream_file
        self.port = 0
        self._master: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def conf_path(self) -> Path:
        return self.tmp / "nginx.conf"

    @property
    def upstream_conf(self) -> Path:
        """The included upstream file (with `upstream_file`)."""
        return self.tmp / "hotpot-upstream.conf"

    @property
    def pid_path(self) -> Path:
        return self.tmp / "nginx.pid"

    def command(self, conf: Path | None = None) -> list[str]:
        """argv that runs this nginx's program on its prefix and config (`conf_path` by default); add `-t`,
        `-s reload` or `-g "daemon off;"`."""
        # -e: otherwise the compiled-in error log under /var/log is opened before the config is read.
        return [self.program, "-p", f"{self.tmp}/", "-e", "stderr", "-c", str(conf or self.conf_path)]

    @staticmethod
    def _upstream_block(upstreams: Mapping[str, int]) -> str:
        servers = "".join(
            f"        server {address} {'down' if weight == 0 else f'weight={weight}'};\n"
            for address, weight in upstreams.items()
        )
        return f"    upstream {UPSTREAM} {{\n{servers}    }}\n"

    def _write_upstream_file(self, upstreams: Mapping[str, int]) -> None:
        if self.upstream_file and upstreams:
            self.upstream_conf.write_text(self._upstream_block(upstreams))

    def render_conf(self, upstreams: Upstreams | None = None) -> str:
        """The config this instance runs with, for `upstreams` (default: the constructor's)."""
        if upstreams is None:
            upstreams = self.upstreams
        elif not isinstance(upstreams, Mapping):
            upstreams = dict.fromkeys(upstreams, 1)
        tmp = self.tmp
        if upstreams:
            if self.upstream_file:
                upstream_block = f"    include {self.upstream_conf};\n"
            else:
                upstream_block = self._upstream_block(upstreams)
            route = f"proxy_pass http://{UPSTREAM};"
        else:
            upstream_block = ""
            route = 'return 503 "no upstream configured\\n";'
        temp_paths = "".join(
            f"    {kind}_temp_path {tmp}/temp/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return (
            f"worker_processes 1;\n"
            f"pid {self.pid_path};\n"
            # stderr is the service's log file, whose tail goes into startup and reload errors.
            f"error_log stderr notice;\n"
            f"events {{ worker_connections 256; }}\n"
            f"http {{\n"
            # Off: synthetic traffic would fill it for hours; request counts are in Prometheus.
            f"    access_log off;\n"
            f"{temp_paths}"
            f"{upstream_block}"
            f"    server {{\n"
            f"        listen 127.0.0.1:{self.port};\n"
            f'        location = {HEALTH_PATH} {{ return 200 "ok\\n"; }}\n'
            f"        location / {{\n"
            f"            {route}\n"
            f"            proxy_set_header Host $host;\n"
            f"        }}\n"
            f"    }}\n"
            f"}}\n"
        )

    def test_conf(self, conf_text: str) -> None:
        """Run `nginx -t` on `conf_text`; ServiceError with nginx's output if it is rejected."""
        candidate = self.tmp / "nginx.conf.new"
        candidate.write_text(conf_text)
        result = subprocess.run([*self.command(candidate), "-t"], capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise ServiceError(f"nginx rejected the new config:\n{result.stderr.strip()}")

    def reload(self, conf_text: str, timeout: float = 10.0) -> None:
        """Test `conf_text`, make it the config, `nginx -s reload`, and wait until only new workers serve.

        Old workers finish their in-flight requests first; a reload the master could not apply (it keeps the
        old workers then) ends in ServiceError after `timeout` seconds, with nginx's error log.
        """
        self.test_conf(conf_text)
        (self.tmp / "nginx.conf.new").replace(self.conf_path)
        old_workers = _children(self._master.pid)
        subprocess.run([*self.command(), "-s", "reload"], capture_output=True, check=True, timeout=30)
        # The master starts fresh workers and tells the old ones to quit; until they have, they may still
        # accept connections under the old config.
        self._wait_until(
            lambda: not _children(self._master.pid) & old_workers,
            "the workers of the previous nginx config to exit",
            timeout,
        )

    def set_upstreams(self, upstreams: Upstreams) -> None:
        """Route to `upstreams` from now on (a reload with the generated config)."""
        upstreams = dict(upstreams) if isinstance(upstreams, Mapping) else dict.fromkeys(upstreams, 1)
        self._write_upstream_file(upstreams)
        self.reload(self.render_conf(upstreams))
        self.upstreams = upstreams

    def _start(self) -> None:
        self.program = find_program(self.program, "nginx")
        (self.tmp / "temp").mkdir()
        # As root the workers run as `nobody`; they must be able to reach their temp dirs in here.
        self.tmp.chmod(0o755)
        self.port = free_port()
        self._write_upstream_file(self.upstreams)
        self.test_conf(self.render_conf())
        (self.tmp / "nginx.conf.new").replace(self.conf_path)
        self._master = self._spawn([*self.command(), "-g", "daemon off;"])
        self._wait_until(
            lambda: httpx.get(self.url + HEALTH_PATH, timeout=2).status_code == 200,
            f"nginx to answer on {self.url}",
        )
