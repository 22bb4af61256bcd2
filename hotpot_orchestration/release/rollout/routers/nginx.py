"""The nginx router: a weighted `upstream` block in a file that the main nginx.conf includes in `http {}`.

Each change writes the file, checks the whole configuration with `nginx -t` (a rejected file is put back as it
was, so a later reload cannot pick it up), then `nginx -s reload`. nginx reloads without dropping requests:
the master starts workers with the new configuration and the old ones finish what they have in flight. With a
pid file, the router also waits until a new worker has replaced every old one, so "weight set" means new
connections are routed by the new weights.

The live colour and the canary weight are written into the file as a comment and read back from it, so the
file nginx serves from is the single record of the routing state.

Colours are groups of servers (VMs or local processes); nginx routes to them but cannot install an image on
them, so `deploy` only checks that the colour answers and leaves installing the image to the host's own
provisioning. For the same reason `scale_down` stops nothing: an idle colour is already out of the upstream.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from hotpot_orchestration.release.rollout.routers import (
    COLORS,
    RouterError,
    RouteState,
    check_weight,
    refuse_live,
)

_STATE = re.compile(r"^# hotpot-route: (?P<state>\{.*\})$", re.MULTILINE)


class NginxRouter:
    def __init__(
        self,
        upstream_conf: str | Path,
        servers: dict[str, Sequence[str]],
        nginx_command: Sequence[str] = ("nginx",),
        pid_file: str | Path | None = None,
        upstream_name: str = "hotpot_api",
        reload_timeout: float = 10.0,
    ):
        missing = [color for color in COLORS if not servers.get(color)]
        if missing:
            raise RouterError(f"nginx router: no servers configured for {', '.join(missing)}")
        self.upstream_conf = Path(upstream_conf)
        self.servers = {color: list(servers[color]) for color in COLORS}
        self.nginx_command = list(nginx_command)
        self.pid_file = Path(pid_file) if pid_file else None
        self.upstream_name = upstream_name
        self.reload_timeout = reload_timeout

    # ---------------------------------------------------------------- state

    def state(self) -> RouteState:
        try:
            match = _STATE.search(self.upstream_conf.read_text())
        except FileNotFoundError:
            match = None
        if match is None:
            # Never written by a release: everything goes to blue, the first colour.
            return RouteState(live=COLORS[0], canary_weight=0)
        state = json.loads(match["state"])
        return RouteState(live=state["live"], canary_weight=int(state["canary_weight"]))

    def render(self, state: RouteState) -> str:
        """The upstream file for `state`. nginx weights are per server, so each colour's share is spread
        over its servers: every server of a colour gets its share times lcm(server counts) / its count."""
        shares = {state.live: 100 - state.canary_weight, state.idle: state.canary_weight}
        scale = math.lcm(*(len(self.servers[color]) for color in COLORS))
        lines = [
            "# Written by the release router (hotpot_orchestration.release.rollout); changes made by hand",
            "# are overwritten by the next release.",
            f"# hotpot-route: {json.dumps({'live': state.live, 'canary_weight': state.canary_weight})}",
            f"upstream {self.upstream_name} {{",
        ]
        for color in COLORS:
            if shares[color] == 0:
                continue  # nginx has no weight 0; a colour without a share is left out
            weight = shares[color] * scale // len(self.servers[color])
            lines += [f"    server {address} weight={weight};  # {color}" for address in self.servers[color]]
        lines.append("}")
        return "\n".join(lines) + "\n"

    # ---------------------------------------------------------------- changes

    def _nginx(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.nginx_command, *args], capture_output=True, text=True, timeout=60)

    def _workers(self) -> set[int]:
        master = self.pid_file.read_text().strip()
        children = Path(f"/proc/{master}/task/{master}/children")
        return {int(pid) for pid in children.read_text().split()}

    def apply(self, state: RouteState) -> RouteState:
        """Write, test, reload; on a rejected config the previous file is restored and RouterError raised."""
        previous = self.upstream_conf.read_text() if self.upstream_conf.exists() else None
        self._write(self.render(state))
        checked = self._nginx("-t")
        if checked.returncode != 0:
            if previous is None:
                self.upstream_conf.unlink()
            else:
                self._write(previous)
            raise RouterError(f"nginx -t rejected the upstream for {state}:\n{checked.stderr.strip()}")
        old_workers = self._workers() if self.pid_file else set()
        reloaded = self._nginx("-s", "reload")
        if reloaded.returncode != 0:
            raise RouterError(f"nginx -s reload failed:\n{reloaded.stderr.strip()}")
        if self.pid_file:
            self._wait_for_new_workers(old_workers)
        return state

    def _write(self, text: str) -> None:
        # Atomic: nginx -t or a concurrent reload never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=self.upstream_conf.parent, prefix=".hotpot-upstream-")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.upstream_conf)

    def _wait_for_new_workers(self, old_workers: set[int]) -> None:
        deadline = time.monotonic() + self.reload_timeout
        while time.monotonic() < deadline:
            # Old workers linger while they finish in-flight requests, but they stop accepting at once;
            # a worker that was not there before the signal is one with the new configuration.
            if self._workers() - old_workers:
                return
            time.sleep(0.02)
        raise RouterError(
            f"nginx started no worker with the new configuration within {self.reload_timeout:g}s"
        )

    def set_weight(self, canary_weight: int) -> RouteState:
        return self.apply(RouteState(live=self.state().live, canary_weight=check_weight(canary_weight)))

    def promote(self) -> RouteState:
        return self.apply(RouteState(live=self.state().idle, canary_weight=0))

    def deploy(self, color: str, image: str) -> None:
        """The image on a colour's servers is installed by their provisioning; nothing to roll out here."""

    def scale_down(self, color: str) -> None:
        refuse_live(color, self.state())

    def health_url(self, color: str) -> str:
        return f"http://{self.servers[color][0]}"
