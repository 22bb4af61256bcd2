"""The Dagster UI in a real headless Chromium (Debian's) shows what our definitions declare: each group's
assets, each asset's description and checks, the schedules' crons, and a job launched from the Launchpad.
The names operators know (assets, checks, crons) are written out here; the rest is read from the
definitions the UI serves (built from the same environment), so a definition that does not reach the
screen fails here. Screenshots are written to test-artifacts/ for
people to look at."""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
from support.release import allow_two_runs_in_one_process
from support.waiting import wait_until

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
# Long enough for a loaded machine: the UI fetches everything it shows over GraphQL after the page loads.
SCREEN_MS = 60_000


@pytest.fixture(scope="module")
def definitions(dagster_ui: DagsterServices) -> dg.Definitions:
    """The code location as the UI's processes load it: built from their environment."""
    from hotpot_orchestration.definitions import build_definitions
    from hotpot_orchestration.settings import load_settings

    return build_definitions(load_settings({**os.environ, **dagster_ui.extra_env}))


@pytest.fixture(scope="module")
def page(dagster_ui):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium not found: install the Debian package `chromium` (make test does this)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(SCREEN_MS)
        # Dagster greets a new browser with a newsletter dialog, whenever it likes: dismiss it when it shows.
        skip = page.get_by_role("button", name="Skip")
        page.add_locator_handler(skip, lambda button: button.click())
        yield page
        browser.close()


def on_screen(markdown: str) -> str:
    """A description as the UI renders it: markdown's code spans without their backticks, one line."""
    return " ".join(markdown.replace("`", "").split())


def assert_shows(page, text: str, where: str = "body") -> None:
    """The first element matching the CSS selector `where` comes to contain `text` (whitespace normalized)."""
    from playwright.sync_api import expect

    expect(page.locator(where).first).to_contain_text(text, timeout=SCREEN_MS)


@contextmanager
def screenshot_after(page, name: str) -> Iterator[None]:
    """test-artifacts/NAME.png of the page once the block's assertions passed, or failed."""
    try:
        yield
    finally:
        page.screenshot(path=ARTIFACTS / f"{name}.png")


def assert_visible(page, name: str) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=SCREEN_MS)


@pytest.mark.parametrize(
    ("group", "public"),
    [
        ("release", {"api_image", "canary_weight_20", "production_release"}),
        ("backups", {"postgres_backup", "backup_retention", "restore_drill"}),
    ],
)
def test_asset_graph_shows_every_asset_of_the_group(page, dagster_ui, definitions, group, public):
    graph = definitions.resolve_asset_graph()
    assets = sorted(
        key.to_user_string() for key in graph.get_all_asset_keys() if graph.get(key).group_name == group
    )
    assert public <= set(assets), f"group {group} lacks {sorted(public - set(assets))}: {assets}"
    page.goto(f"{dagster_ui.url}/locations/{LOCATION}/asset-groups/{group}", wait_until="networkidle")
    with screenshot_after(page, f"asset-graph-{group}"):
        assert_visible(page, sorted(public)[0])
    # The lineage graph cuts long names short (blue_…_deploy_idle): the group's list shows them whole.
    page.get_by_text("List", exact=True).first.click()
    with screenshot_after(page, f"asset-list-{group}"):
        for asset in assets:
            assert_visible(page, asset)


@pytest.mark.parametrize(
    ("asset", "check_names"),
    [
        ("postgres_backup", ["backup_archive_is_valid", "verified_backup_is_fresh"]),
        ("restore_drill", ["restore_drill_passed", "restore_drill_recent"]),
    ],
)
def test_asset_page_shows_its_description_and_each_check_with_its_description(
    page, dagster_ui, definitions, asset, check_names
):
    graph = definitions.resolve_asset_graph()
    key = dg.AssetKey(asset)
    checks = sorted(
        (check for check in graph.asset_check_keys if check.asset_key == key), key=lambda c: c.name
    )
    assert [check.name for check in checks] == check_names

    page.goto(f"{dagster_ui.url}/assets/{asset}", wait_until="networkidle")
    with screenshot_after(page, f"asset-{asset}"):
        assert_shows(page, on_screen(graph.get(key).description))

    page.goto(f"{dagster_ui.url}/assets/{asset}?view=checks", wait_until="networkidle")
    with screenshot_after(page, f"asset-{asset}-checks"):
        assert_shows(page, f"Checks ({len(checks)})")
        for check in checks:
            page.get_by_text(check.name, exact=True).first.click()
            assert_shows(page, on_screen(graph.get(check).description))


@pytest.mark.parametrize(
    ("schedule", "cron"),
    # The UI's stack runs the drill schedule every minute (HOTPOT_RESTORE_DRILL_CRON, see conftest.py).
    [("nightly_backup_schedule", "0 2 * * *"), ("restore_drill_schedule", "* * * * *")],
)
def test_schedule_page_shows_its_cron_timezone_and_job(page, dagster_ui, definitions, schedule, cron):
    definition = definitions.resolve_schedule_def(schedule)
    assert definition.cron_schedule == cron
    page.goto(f"{dagster_ui.url}/locations/{LOCATION}/schedules/{schedule}", wait_until="networkidle")
    with screenshot_after(page, f"schedule-{schedule}"):
        # Dagster writes the cron out in words, then the expression itself in brackets.
        assert_shows(page, f"({cron})")
        assert_shows(page, definition.execution_timezone, where="tr:has-text('Execution timezone')")
        assert_shows(page, definition.job_name, where="tr:has-text('Target')")


def test_launching_a_job_from_the_launchpad_creates_a_run(page, dagster_ui):
    job = "restore_drill_job"
    before = set(runs_of(dagster_ui, job))
    page.goto(f"{dagster_ui.url}/locations/{LOCATION}/jobs/{job}/playground", wait_until="networkidle")
    page.screenshot(path=ARTIFACTS / "launchpad.png")
    page.get_by_role("button", name="Launch Run").click()

    def failed_to_launch() -> str:
        page.screenshot(path=ARTIFACTS / "launch-failed.png")
        return "no run appeared after clicking Launch Run (see test-artifacts/launch-failed.png)"

    [run_id] = wait_until(lambda: set(runs_of(dagster_ui, job)) - before, 60, failed_to_launch, interval=0.5)
    # The UI takes the operator to the run it launched.
    with screenshot_after(page, "launched-run"):
        page.wait_for_url(re.compile(f"/runs/{run_id}"))
        assert_shows(page, job)


def test_a_release_stopped_by_rollback_job_reads_as_a_rollback_on_its_run_page(
    page, dagster_ui, registry, s3, monkeypatch
):
    """A canary run on the UI's instance, against the test release stack (real nginx and Prometheus), is
    stopped by rollback_job mid-step; its run page says so in one line, with no error on it."""
    from hotpot_devstack.release_stack import ReleaseStack, local_plan, release_definitions, release_spec

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    allow_two_runs_in_one_process(monkeypatch)
    # One long step: the rollback lands while it measures.
    plan = local_plan(2.0, ["{weight: 20, pause: 600s}"], window=3.0)
    outcome = {}
    with (
        ReleaseStack() as stack,
        stack.traffic(),
        dg.DagsterInstance.from_config(str(dagster_ui.home)) as instance,
    ):
        spec = release_spec(stack, registry, s3, plan)
        jobs = release_definitions(spec)

        def release() -> None:
            outcome["release"] = jobs.resolve_job_def("canary_release_job").execute_in_process(
                instance=instance, raise_on_error=False
            )

        worker = threading.Thread(target=release, daemon=True)
        worker.start()
        wait_until(
            lambda: stack.router().state().canary_weight == 20,
            SCREEN_MS / 1000,
            lambda: f"the release never reached 20 %: {stack.router().state()}",
            interval=0.5,
        )
        rollback = jobs.resolve_job_def("rollback_job").execute_in_process(instance=instance)
        worker.join(SCREEN_MS / 1000)
        assert not worker.is_alive(), "the release did not stop after rollback_job"
    release_run = outcome["release"].run_id
    page.goto(f"{dagster_ui.url}/runs/{release_run}", wait_until="networkidle")
    with screenshot_after(page, "run-rolled-back"):
        assert_shows(page, f"rolled back by rollback_job run {rollback.run_id[:8]}: blue serves 100 %")
        assert_shows(page, "Success")
        assert page.get_by_text("DagsterExecutionInterruptedError").count() == 0


def runs_of(dagster_ui: DagsterServices, job: str) -> list[str]:
    data = dagster_ui.graphql(
        "query($job: String!) "
        "{ runsOrError(filter: {pipelineName: $job}) { ... on Runs { results { runId } } } }",
        {"job": job},
    )
    return [run["runId"] for run in data["runsOrError"]["results"]]
