"""dagster-webserver and dagster-daemon, as an operator runs them: `make dev`'s UI and the end-to-end tests.

The tests get a private DAGSTER_HOME and a free port, and drive everything through the GraphQL API the UI
itself uses; `make dev` keeps its run history in `.dagster_home` and serves on port 3000. The project's own
`dagster.yaml` and `workspace.yaml` are used as they are. The two programs run directly rather than under
`dagster dev`, which warns about a dagster.yaml beside the workspace that DAGSTER_HOME does use (a link).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ._process import Service, ServiceError, free_port, port_is_open

CHECKOUT = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent


def prepare_home(home: Path, checkout: Path = CHECKOUT) -> None:
    """A lasting DAGSTER_HOME: the checkout's dagster.yaml linked in, the instance's SQLite schema created.
    `make dev` has it done while the stack's services start, as it takes a Python process of its own."""
    home.mkdir(parents=True, exist_ok=True)
    link = home / "dagster.yaml"
    link.unlink(missing_ok=True)
    link.symlink_to(checkout / "dagster.yaml")
    _create_schema(home)


def _create_schema(home: Path) -> None:
    # Once up front: the webserver and the daemon would otherwise race to create it.
    subprocess.run(
        [str(BIN_DIR / "dagster"), "instance", "migrate"],
        env={**os.environ, "DAGSTER_HOME": str(home)},
        check=True,
        capture_output=True,
    )


class DagsterServices(Service):
    name = "dagster"
    startup_timeout = 120.0

    # Both programs stop within this; `make dev` must be gone in 10 s with the stack's services after them.
    stop_grace = 3.0

    def __init__(
        self,
        env: dict[str, str] | None = None,
        checkout: Path = CHECKOUT,
        home: Path | None = None,
        port: int | None = None,
        logs: Path | None = None,
        home_prepared: bool = False,
    ) -> None:
        """`home`, `port`, `logs`: a lasting DAGSTER_HOME (its dagster.yaml a link to the checkout's), a fixed
        port and a lasting log directory; unset, a private temp home, a free port, logs in the temp dir.
        `home_prepared`: prepare_home(home) has already run."""
        super().__init__()
        self.extra_env = dict(env or {})
        self.checkout = checkout
        self._home = home
        self._home_prepared = home_prepared
        self._fixed_port = port
        self._logs = logs
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def home(self) -> Path:
        return self._home or self.tmp / "dagster_home"

    @property
    def log_dir(self) -> Path:
        return self._logs or self.tmp

    def _start(self) -> None:
        if self._home is None:
            self.home.mkdir()
            shutil.copy(self.checkout / "dagster.yaml", self.home / "dagster.yaml")
            _create_schema(self.home)
        elif not self._home_prepared:
            prepare_home(self.home, self.checkout)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self._fixed_port and port_is_open(self._fixed_port):
            raise ServiceError(f"port {self._fixed_port} is taken: is another `make dev` running?")
        self.port = self._fixed_port or free_port()
        env = {**os.environ, **self.extra_env, "DAGSTER_HOME": str(self.home)}
        workspace = str(self.checkout / "workspace.yaml")
        self._spawn(
            [str(BIN_DIR / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.port), "-w", workspace],
            log_name="webserver.log",
            env=env,
            cwd=self.checkout,
        )
        self._spawn(
            [str(BIN_DIR / "dagster-daemon"), "run", "-w", workspace],
            log_name="daemon.log",
            env=env,
            cwd=self.checkout,
        )
        self._wait_until(self._code_location_loaded, "the webserver to load the code location")

    def _code_location_loaded(self) -> bool:
        data = self.graphql(
            "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
            "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
        )
        entries = data["workspaceOrError"]["locationEntries"]
        for entry in entries:
            error = entry["locationOrLoadError"]
            if error and error["__typename"] == "PythonError":
                raise ServiceError(f"code location {entry['name']} failed to load: {error['message']}")
        return bool(entries) and all(entry["loadStatus"] == "LOADED" for entry in entries)

    def _stop(self) -> None:
        # Both at once, so the grace periods do not add up; Service.stop() kills what is left.
        for proc, _ in self._procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace
        for proc, _ in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 30.0) -> dict:
        import httpx

        response = httpx.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=timeout
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise ServiceError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")
