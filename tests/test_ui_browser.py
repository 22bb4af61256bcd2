"""The Dagster UI in a real headless Chromium (Debian's): the asset graphs of releases and backups, and
a job launched from the Launchpad. Screenshots are written to test-artifacts/ for people to look at."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from hotpot_devstack.dagster_services import DagsterServices

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking switches Chromium keeps dialing hosts this sandbox cannot reach.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCATION = "hotpot_orchestration"


@pytest.fixture(scope="module")
def page(dagster_ui):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium not found: install the Debian package `chromium` (make test does this)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(30_000)
        # Dagster greets a new browser with a newsletter dialog, whenever it likes: dismiss it when it shows.
        skip = page.get_by_role("button", name="Skip")
        page.add_locator_handler(skip, lambda button: button.click())
        yield page
        browser.close()


@pytest.mark.parametrize(
    ("group", "assets"),
    [
        ("release", ["api_image", "canary_weight_20", "canary_weight_80", "production_release"]),
        ("backups", ["postgres_backup", "backup_retention", "restore_drill"]),
    ],
)
def test_asset_graph_shows_the_group(page, dagster_ui, group, assets):
    page.goto(f"{dagster_ui.url}/locations/{LOCATION}/asset-groups/{group}", wait_until="networkidle")
    for asset in assets:
        page.get_by_text(asset, exact=True).first.wait_for(state="visible")
    page.screenshot(path=ARTIFACTS / f"asset-graph-{group}.png")


def test_launching_a_job_from_the_launchpad_creates_a_run(page, dagster_ui):
    job = "restore_drill_job"
    before = runs_of(dagster_ui, job)
    page.goto(f"{dagster_ui.url}/locations/{LOCATION}/jobs/{job}/playground", wait_until="networkidle")
    page.screenshot(path=ARTIFACTS / "launchpad.png")
    page.get_by_role("button", name="Launch Run").click()
    deadline = time.monotonic() + 60
    while len(runs_of(dagster_ui, job)) <= len(before):
        if time.monotonic() > deadline:
            page.screenshot(path=ARTIFACTS / "launch-failed.png")
            pytest.fail("no run appeared after clicking Launch Run (see test-artifacts/launch-failed.png)")
        time.sleep(0.5)
    page.wait_for_url("**/runs/**")
    page.screenshot(path=ARTIFACTS / "launched-run.png")


def runs_of(dagster_ui: DagsterServices, job: str) -> list[str]:
    data = dagster_ui.graphql(
        "query($job: String!) "
        "{ runsOrError(filter: {pipelineName: $job}) { ... on Runs { results { runId } } } }",
        {"job": job},
    )
    return [run["runId"] for run in data["runsOrError"]["results"]]
