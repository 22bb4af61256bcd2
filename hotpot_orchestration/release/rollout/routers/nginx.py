"""The nginx router: a weighted `upstream` block in a file that the main nginx.conf includes in `http {}`.

Each change writes the file, checks the whole configuration with `nginx -t` (a rejected file is put back as it
was, so a later reload cannot pick it up), then `nginx -s reload`. nginx reloads without dropping requests:
the master starts workers with the new configuration, and about 100 ms later tells the old ones to stop
accepting and finish what they have in flight. Until then an old worker still takes new connections and
routes them by the old weights, so the router returns only once every worker that was there before the reload
has closed its listening sockets (or exited), read from /proc through the master's pid file: "weight set"
means every new connection is routed by the new weights.

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
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from hotpot_orchestration.platform.proc import CommandFailed, run
from hotpot_orchestration.release.rollout.routers import (
    COLORS,
    RouterError,
    RouteState,
    check_weight,
    refuse_live,
)

_STATE = re.compile(r"^# hotpot-route: (?P<state>\{.*\})$", re.MULTILINE)
# /proc/net tables of this network namespace's sockets: TCP state 0A is LISTEN; a unix socket that accepts
# connections has the __SO_ACCEPTCON flag (00010000).
_TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
_TCP_LISTEN = "0A"
_UNIX_ACCEPTING = 0x10000


def _listening_inodes() -> set[str]:
    inodes: set[str] = set()
    for table in _TCP_TABLES:
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:  # no IPv6 here
            continue
        inodes.update(row.split()[9] for row in rows if row.split()[3] == _TCP_LISTEN)
    for row in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = row.split()
        if int(fields[3], 16) & _UNIX_ACCEPTING:
            inodes.add(fields[6])
    return inodes


def _holds_listening_socket(pid: int) -> bool:
    """Whether process `pid` still has a listening socket open, i.e. may accept a new connection. An exited
    process (even one not yet reaped) holds none."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, ProcessLookupError):
        return False
    except PermissionError:
        raise RouterError(
            f"cannot read /proc/{pid}/fd of an nginx worker: run the release as nginx's master user or root"
        ) from None
    sockets = set()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            sockets.add(target[len("socket:[") : -1])
    return bool(sockets) and not sockets.isdisjoint(_listening_inodes())


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
        if not pid_file:
            raise RouterError(
                "nginx router: no pid file of the nginx master (HOTPOT_NGINX_PID_FILE): without it a weight "
                "change cannot wait for the old workers to stop taking connections"
            )
        self.nginx_command = list(nginx_command)
        self.pid_file = Path(pid_file)
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

    def _nginx(self, *args: str) -> None:
        run([*self.nginx_command, *args], timeout=60)

    def _workers(self) -> set[int]:
        """The master's children: its workers (and cache processes, which never accept)."""
        try:
            master = int(self.pid_file.read_text().strip())
            children = Path(f"/proc/{master}/task/{master}/children").read_text()
        except (OSError, ValueError) as error:
            raise RouterError(
                f"cannot read the nginx master's workers through {self.pid_file} (HOTPOT_NGINX_PID_FILE): "
                f"{error}"
            ) from None
        return {int(pid) for pid in children.split()}

    def apply(self, state: RouteState) -> RouteState:
        """Write, test, reload; on a rejected config the previous file is restored and RouterError raised."""
        previous = self.upstream_conf.read_text() if self.upstream_conf.exists() else None
        self._write(self.render(state))
        try:
            self._nginx("-t")
        except CommandFailed as rejected:
            if previous is None:
                self.upstream_conf.unlink()
            else:
                self._write(previous)
            raise RouterError(f"nginx -t rejected the upstream for {state}:\n{rejected.tail}") from None
        old_workers = self._workers()
        try:
            self._nginx("-s", "reload")
        except CommandFailed as failed:
            raise RouterError(f"nginx -s reload failed:\n{failed.tail}") from None
        self._wait_until_old_workers_stop_accepting(old_workers)
        return state

    def _write(self, text: str) -> None:
        # Atomic: nginx -t or a concurrent reload never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=self.upstream_conf.parent, prefix=".hotpot-upstream-")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.upstream_conf)

    def _wait_until_old_workers_stop_accepting(self, old_workers: set[int]) -> None:
        """Return once a new worker runs and no worker from before the reload holds a listening socket.

        Old workers may go on for a while finishing in-flight requests; that is fine, as long as they take
        no new connection. Whoever may signal the master may also read its workers' /proc entries."""
        deadline = time.monotonic() + self.reload_timeout
        while True:
            workers = self._workers()
            started = workers - old_workers
            accepting = sorted(pid for pid in workers & old_workers if _holds_listening_socket(pid))
            if started and not accepting:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        if not started:
            problem = "started no worker with the new configuration"
        else:
            pids = ", ".join(map(str, accepting))
            problem = f"left the previous workers (pids {pids}) accepting connections"
        raise RouterError(
            f"nginx -s reload {problem} within {self.reload_timeout:g}s, so new connections may still be "
            "routed by the previous weights; see nginx's error log (a configuration the master could not "
            "apply keeps the old workers)"
        )

    def set_weight(self, canary_weight: int) -> RouteState:
        """Route `canary_weight` % to the idle colour; on return, no new connection gets the old weights."""
        return self.apply(RouteState(live=self.state().live, canary_weight=check_weight(canary_weight)))

    def promote(self) -> RouteState:
        return self.apply(RouteState(live=self.state().idle, canary_weight=0))

    def deploy(self, color: str, image: str) -> None:
        """The image on a colour's servers is installed by their provisioning; nothing to roll out here."""

    def scale_down(self, color: str) -> None:
        refuse_live(color, self.state())

    def health_url(self, color: str) -> str:
        return f"http://{self.servers[color][0]}"
