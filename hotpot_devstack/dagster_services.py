"""dagster-webserver and dagster-daemon on a private DAGSTER_HOME, as an operator runs them.

Used by the end-to-end tests of the operator's surface: everything goes through the GraphQL API the UI
itself uses. The project's own `dagster.yaml` and `workspace.yaml` are used as they are.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ._process import Service, ServiceError, free_port

CHECKOUT = Path(__file__).resolve().parents[2]


class DagsterServices(Service):
    name = "dagster"
    startup_timeout = 120.0

    def __init__(self, env: dict[str, str] | None = None, checkout: Path = CHECKOUT) -> None:
        super().__init__()
        self.extra_env = dict(env or {})
        self.checkout = checkout
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def home(self) -> Path:
        return self.tmp / "dagster_home"

    def _start(self) -> None:
        self.home.mkdir()
        shutil.copy(self.checkout / "dagster.yaml", self.home / "dagster.yaml")
        self.port = free_port()
        env = {**os.environ, **self.extra_env, "DAGSTER_HOME": str(self.home)}
        bin_dir = Path(sys.executable).parent
        workspace = str(self.checkout / "workspace.yaml")
        # Create the SQLite schema once up front: the webserver and the daemon would otherwise race to.
        subprocess.run(
            [str(bin_dir / "dagster"), "instance", "migrate"], env=env, check=True, capture_output=True
        )
        self._spawn(
            [str(bin_dir / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.port), "-w", workspace],
            log_name="webserver.log",
            env=env,
            cwd=self.checkout,
        )
        self._spawn(
            [str(bin_dir / "dagster-daemon"), "run", "-w", workspace],
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
        return (self.tmp / f"{name}.log").read_text(errors="replace")
