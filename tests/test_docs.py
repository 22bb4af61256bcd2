"""README.md and docs/runbook.md cannot drift from the code location or from what their commands do.

- Every schedule and sensor of the code location is named in README.md or docs/runbook.md.
- Every ```sh block of both documents runs as written, in document order, against the devstack that the
  `devstack` fixture started (the stack `make dev` starts): each block in its own `bash` with
  `set -euo pipefail`, from a directory laid out like the checkout (its files linked) whose
  `.devstack/env.sh` holds that stack's environment, as `make dev` writes it, and whose `.dagster_home` is
  a fresh instance of the project's dagster.yaml. A document's first ```sh block sets up the environment
  (`source .devstack/env.sh`, DAGSTER_HOME, DG) and runs before each of its other blocks. Blocks fenced
  ```console or ```text are shown to the reader and never run: they need a Kubernetes cluster, or would
  not return (`make dev`). No daemon runs on that instance: `dagster job launch` queues its run there
  (its config and tags checked), and the `dagster job execute` / `dagster asset materialize` commands
  beside it really run the job in the shell, against the stack.
- aws is Debian's awscli (scripts/bootstrap.sh installs it), which ignores AWS_ENDPOINT_URL: an S3 command
  without `--endpoint-url` goes to AWS itself and fails here.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hotpot_devstack import DevStack
from hotpot_devstack.__main__ import write_env_file

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "docs" / "runbook.md"]
RUN = "sh"
SHOWN = {"console", "text", "yaml", ""}
BLOCK_SECONDS = 120
# What the checkout's directory holds only for one `make dev` or one developer: never linked.
NOT_LINKED = {".devstack", ".dagster_home", ".git", ".pytest_cache", ".ruff_cache", "test-artifacts"}
# Debian's awscli, which ignores AWS_ENDPOINT_URL; an awscli installed with pip may be earlier on PATH.
DEBIAN_AWS = Path("/usr/bin/aws")

_FENCE = re.compile(r"^```(.*)$")


@dataclass(frozen=True)
class Block:
    document: Path
    line: int  # of the opening fence, 1-based
    info: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def blocks(document: Path) -> list[Block]:
    found, opened, lines = [], None, []
    for number, line in enumerate(document.read_text().splitlines(), start=1):
        fence = _FENCE.match(line)
        if opened is None:
            if fence:
                opened, lines = (number, fence[1].strip()), []
        elif line.rstrip() == "```":
            found.append(Block(document, opened[0], opened[1], "\n".join(lines) + "\n"))
            opened = None
        else:
            lines.append(line)
    assert opened is None, f"{document.relative_to(ROOT)}:{opened[0]}: code block never closed"
    return found


def runnable(document: Path) -> list[Block]:
    return [block for block in blocks(document) if block.info == RUN]


# -- schedules and sensors ------------------------------------------------------------------------------


def test_every_schedule_and_sensor_is_described_in_the_readme_or_the_runbook():
    from hotpot_orchestration.definitions import defs

    repository = defs.get_repository_def()
    names = [s.name for s in repository.schedule_defs] + [s.name for s in repository.sensor_defs]
    assert names, "the code location has no schedules or sensors"
    text = "\n".join(document.read_text() for document in DOCUMENTS)
    missing = [name for name in names if not re.search(rf"\b{re.escape(name)}\b", text)]
    assert not missing, f"named neither in README.md nor in docs/runbook.md: {', '.join(missing)}"


# -- the documents' shell blocks ------------------------------------------------------------------------


def test_every_code_block_says_whether_it_runs():
    unknown = [
        f"{block.where}: ```{block.info}"
        for document in DOCUMENTS
        for block in blocks(document)
        if block.info != RUN and block.info not in SHOWN
    ]
    assert not unknown, (
        f"fence these ```{RUN} (run by tests/test_docs.py) or ```console / ```text (shown only): "
        + "; ".join(unknown)
    )


def test_s3_commands_name_the_endpoint():
    """Debian's awscli ignores AWS_ENDPOINT_URL: every aws command passes --endpoint-url when it is set."""
    lacking = []
    for document in DOCUMENTS:
        for block in blocks(document):
            for offset, line in enumerate(_joined_lines(block.text)):
                if re.search(r"(^|[\s;(|&]|\$\()aws\s+s3", line) and "--endpoint-url" not in line:
                    lacking.append(f"{block.where} (+{offset + 1}): {line.strip()}")
    assert not lacking, "aws commands without ${AWS_ENDPOINT_URL:+--endpoint-url ...}:\n" + "\n".join(lacking)


def _joined_lines(text: str) -> list[str]:
    """The block's commands, continuation lines joined."""
    return text.replace("\\\n", " ").splitlines()


@pytest.fixture(scope="module")
def docs_checkout(devstack: DevStack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory laid out like the checkout, with the devstack's env.sh and a fresh Dagster instance."""
    checkout = tmp_path_factory.mktemp("checkout")
    for entry in ROOT.iterdir():
        if entry.name not in NOT_LINKED:
            (checkout / entry.name).symlink_to(entry)
    write_env_file(devstack.env(), checkout / ".devstack" / "env.sh")
    (checkout / ".dagster_home").mkdir()
    (checkout / ".dagster_home" / "dagster.yaml").symlink_to(ROOT / "dagster.yaml")
    return checkout


def _shell_env(checkout: Path) -> dict[str, str]:
    """The test runner's environment without anything pointing at another stack or instance, with
    Debian's aws first on PATH."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "HOTPOT_", "DAGSTER_", "PYTEST_"))
    }
    assert DEBIAN_AWS.exists(), "Debian's awscli is missing: scripts/bootstrap.sh installs it"
    aws_dir = checkout.parent / f"{checkout.name}-aws"
    aws_dir.mkdir(exist_ok=True)
    if not (aws_dir / "aws").exists():
        (aws_dir / "aws").symlink_to(DEBIAN_AWS)
    env["PATH"] = f"{aws_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_block(block: Block, setup: Block | None, checkout: Path, env: dict[str, str]) -> float:
    """Run `block` after `setup`; seconds it took. Fails naming the block's file and line and the tail of
    what it wrote to stderr."""
    __tracebackhide__ = True
    script = "set -euo pipefail\n" + (setup.text if setup and setup is not block else "") + block.text
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=checkout,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=BLOCK_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{block.where}: still running after {BLOCK_SECONDS} s\n{_tail(stderr or stdout)}")
    if proc.returncode != 0:
        pytest.fail(
            f"{block.where}: exited with {proc.returncode}\n--- block ---\n{block.text}"
            f"--- stderr (tail) ---\n{_tail(stderr or stdout)}"
        )
    return time.monotonic() - started


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


@pytest.mark.slow
# Every block at its limit, and the devstack's start (the fixture may start it here).
@pytest.mark.timeout(max(len(runnable(document)) for document in DOCUMENTS) * BLOCK_SECONDS + 300)
@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_sh_block_runs_against_the_devstack(document: Path, docs_checkout: Path):
    to_run = runnable(document)
    assert to_run, f"{document.name} has no ```{RUN} block: its commands would go untested"
    env = _shell_env(docs_checkout)
    setup = to_run[0]
    took = [(block.where, run_block(block, setup, docs_checkout, env)) for block in to_run]
    print("\n".join(f"{where}: {seconds:.1f} s" for where, seconds in took))
