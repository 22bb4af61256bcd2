"""The sample API (`hotpot_devstack/sample_app`) running as the two colours of a release, on loopback.

The binary is compiled once per version of the sources into a cache dir, by the sample app's own `compile`
gate (gates.yaml), so the colours run the very binary its image holds. Each colour is one process on a free
port with TRACK set to the colour's name: colours swap roles (stable, canary) from release to release, so
the `track` label of its metrics and the `X-Track` header of its answers name the colour.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import yaml

from ._process import INSTALL_HINT, MissingProgram, Service, ServiceError, free_port
from .release_target import COLORS

# The local build context (HOTPOT_APP_SOURCE under make dev and in the tests); never shipped.
SAMPLE_APP_DIR = Path(__file__).resolve().parent / "sample_app"

# What the compile gate writes (the Dockerfile copies the same name into the image).
BINARY = "hotpot-api"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hotpot-orchestration"


def _compile_gate(source: Path) -> dict:
    gates = yaml.safe_load((source / "gates.yaml").read_text())["gates"]
    for gate in gates:
        if gate["name"] == "compile":
            return gate
    raise ServiceError(f"{source / 'gates.yaml'} has no gate named 'compile' to build the sample app with")


def compile_sample_app(source: Path = SAMPLE_APP_DIR, cache: Path | None = None) -> Path:
    """The compiled sample app for the current sources: from the cache, else compiled into it."""
    gate = _compile_gate(source)
    digest = hashlib.sha256(gate["run"].encode())
    for path in sorted((source / "src").rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
    cache = cache or cache_dir()
    binary = cache / f"{BINARY}-{digest.hexdigest()[:16]}"
    if binary.exists():
        return binary
    if shutil.which("gcc") is None:
        raise MissingProgram("gcc", f"install the Debian packages `gcc libc6-dev` {INSTALL_HINT}")
    cache.mkdir(parents=True, exist_ok=True)
    # Compiled in a private copy and renamed into place: two stacks starting at once never see half a file.
    with tempfile.TemporaryDirectory(dir=cache, prefix="build-") as work:
        shutil.copytree(source / "src", Path(work) / "src")
        result = subprocess.run(
            gate["run"],
            shell=True,
            cwd=work,
            capture_output=True,
            text=True,
            timeout=gate.get("timeout_seconds", 600),
        )
        if result.returncode != 0:
            raise ServiceError(
                f"compiling the sample app failed ({gate['run']}):\n{(result.stdout + result.stderr).strip()}"
            )
        os.replace(Path(work) / BINARY, binary)
    return binary


class SampleApi(Service):
    """One sample-app process per colour on 127.0.0.1:<free port>; `addresses` maps colour -> "host:port"."""

    name = "sample-api"
    startup_timeout = 30.0

    def __init__(self, colors: tuple[str, ...] = COLORS):
        super().__init__()
        self.colors = colors
        self.ports: dict[str, int] = {}

    @property
    def addresses(self) -> dict[str, str]:
        return {color: f"127.0.0.1:{port}" for color, port in self.ports.items()}

    def _start(self) -> None:
        binary = compile_sample_app()
        for color in self.colors:
            self.ports[color] = free_port()
            # Only its own variables: a FAULT_* left in the operator's shell must not reach a colour.
            env = {"PORT": str(self.ports[color]), "LISTEN_ADDR": "127.0.0.1", "TRACK": color}
            self._spawn([str(binary)], log_name=f"{color}.log", env=env)
        self._wait_until(self._ready, "every colour to answer /ready")

    def _ready(self) -> bool:
        return all(
            httpx.get(f"http://{address}/ready", timeout=2).status_code == 200
            for address in self.addresses.values()
        )
