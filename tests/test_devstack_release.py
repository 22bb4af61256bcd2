"""`make dev`'s release target: the sample app as blue and green behind the devstack's nginx, scraped by its
Prometheus, with bounded synthetic traffic; the code location, configured by the stack's environment alone,
moves that traffic and judges it on that Prometheus."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import httpx
import pytest
from support.waiting import wait_until

from hotpot_devstack import Traffic, port_is_open

STARTUP_SECONDS = 120
# For a change to show (in nginx's answers, in Prometheus), generous for a loaded machine.
SETTLE_SECONDS = 60


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = shlex.split(value)[0]
    return env


def tracks(url: str, requests: int) -> list[str]:
    """Which colour answered each of `requests` GETs (the sample app names it in X-Track), each on a new
    connection, as a new client's would be routed."""
    with httpx.Client(timeout=5, headers={"Connection": "close"}) as client:
        return [client.get(url + "/").headers["X-Track"] for _ in range(requests)]


def rates_by_color(prometheus_url: str) -> dict[str, float]:
    """Requests per second each colour served, as the devstack's Prometheus sees it."""
    query = 'sum by (color) (rate(http_requests_total{job="hotpot-api"}[5s]))'
    body = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": query}, timeout=5).json()
    return {series["metric"]["color"]: float(series["value"][1]) for series in body["data"]["result"]}


@pytest.fixture
def make_dev(tmp_path):
    """`python -m hotpot_devstack ... run -- COMMAND` as scripts/dev.sh starts it, with a
    command that only waits; yields (process, environment, nginx URL, log path); stopped with SIGTERM."""
    env_file, log_path = tmp_path / "env.sh", tmp_path / "devstack.log"
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "HOTPOT_"))}
    with open(log_path, "wb") as log:
        devstack = subprocess.Popen(
            [sys.executable, "-m", "hotpot_devstack", "--env-file", str(env_file)]
            + ["--traffic-rate", "20", "--traffic-hours", "1", "run", "--", "sleep", "600"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean,
            start_new_session=True,
        )
    try:

        def env_file_written() -> bool:
            assert devstack.poll() is None, log_path.read_text()
            return env_file.exists()

        wait_until(env_file_written, STARTUP_SECONDS, lambda: f"no {env_file}; log:\n{log_path.read_text()}")
        nginx_url = wait_until(
            lambda: re.search(r"^nginx\s+(http://127\.0\.0\.1:\d+)", log_path.read_text(), re.MULTILINE),
            SETTLE_SECONDS,
            lambda: f"the stack's summary does not name nginx; log:\n{log_path.read_text()}",
        )[1]
        yield devstack, read_env_file(env_file), nginx_url, log_path
    finally:
        if devstack.poll() is None:
            devstack.send_signal(signal.SIGTERM)
            try:
                devstack.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(devstack.pid, signal.SIGKILL)
                devstack.wait()


@pytest.mark.slow
def test_make_dev_routes_real_traffic_that_a_release_shifts_and_prometheus_judges(make_dev, monkeypatch):
    from hotpot_orchestration.definitions import build_definitions
    from hotpot_orchestration.release.rollout.analysis import Prometheus, measure
    from hotpot_orchestration.release.rollout.plan import load_plan
    from hotpot_orchestration.release.rollout.routers import RouteState
    from hotpot_orchestration.settings import load_settings

    devstack, env, nginx_url, log_path = make_dev
    prometheus_url = env["HOTPOT_PROMETHEUS_URL"]

    # Blue is live with all the traffic, the synthetic clients' and ours.
    assert set(tracks(nginx_url, 20)) == {"blue"}
    rates = wait_until(
        lambda: (rates := rates_by_color(prometheus_url)).get("blue", 0) > 10 and rates,
        SETTLE_SECONDS,
        lambda: f"Prometheus does not see the synthetic traffic on blue: {rates_by_color(prometheus_url)}",
        interval=0.5,
    )
    # Both colours are scraped, with the labels the default plan's selector uses; green serves nothing yet.
    assert set(rates) == {"blue", "green"} and rates["green"] == 0
    up = Prometheus(prometheus_url)
    for color in ("blue", "green"):
        assert up.query(f'up{{job="hotpot-api", color="{color}"}}') == 1.0

    # The code location, configured by the stack's environment only, as `dagster dev` gets it.
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    defs = build_definitions(load_settings(env))
    router = defs.resources["traffic_router"].resource.router()
    assert router.state() == RouteState("blue", 0)

    router.set_weight(50)
    # The router returns once a new nginx worker serves; an old one may finish a connection it just took.
    wait_until(
        lambda: 10 <= (seen := tracks(nginx_url, 40)).count("green") <= 30 and seen,
        SETTLE_SECONDS,
        lambda: f"green does not get about half: {Counter(tracks(nginx_url, 40))}",
    )
    wait_until(
        lambda: rates_by_color(prometheus_url)["green"] > 3,
        SETTLE_SECONDS,
        lambda: f"Prometheus does not see green's share: {rates_by_color(prometheus_url)}",
        interval=0.5,
    )

    # Judged like a release step: the default plan's selector and metrics, over a window short enough here.
    analysis = load_plan().analysis.model_copy(update={"window": 5.0, "min_requests": 20})

    def green_against_blue():
        return measure(up, analysis, canary="green", stable="blue")

    measurement = wait_until(
        lambda: (m := green_against_blue()).verdict == "pass" and m,
        SETTLE_SECONDS,
        lambda: f"no passing measurement of green against blue: {green_against_blue().summary}",
        interval=0.5,
    )
    requests = [decision.sample_count for decision in measurement.decisions]
    assert all(count >= 20 for count in requests), measurement.summary

    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("rollback_job").execute_in_process(instance=instance)
    assert result.success
    assert router.state() == RouteState("blue", 0)
    wait_until(
        lambda: set(tracks(nginx_url, 20)) == {"blue"},
        SETTLE_SECONDS,
        lambda: f"blue does not answer alone again: {Counter(tracks(nginx_url, 20))}",
    )

    # SIGTERM, as an operator's Ctrl-C or a service manager stops `make dev`: nothing is left behind.
    devstack.send_signal(signal.SIGTERM)
    devstack.wait(30)
    ports = [
        urlsplit(nginx_url).port,
        urlsplit(prometheus_url).port,
        urlsplit(env["HOTPOT_DATABASE_URL"]).port,
        urlsplit(env["AWS_ENDPOINT_URL"]).port,
        int(env["HOTPOT_REGISTRY"].rsplit(":", 1)[1]),
        *(int(env[f"HOTPOT_{color}_SERVERS"].rsplit(":", 1)[1]) for color in ("BLUE", "GREEN")),
    ]
    assert [port for port in ports if port_is_open(port)] == []
    assert not Path(env["HOTPOT_NGINX_UPSTREAM_CONF"]).parent.exists()
    assert "stopping the stack" in log_path.read_text()


def test_synthetic_traffic_is_bounded_in_time_count_and_memory(http_backend):
    url = "http://" + http_backend("api")
    traffic = Traffic(url, rate=40, max_seconds=1.0, concurrency=2, history=10).start()
    started = time.monotonic()
    # Its threads end by themselves after max_seconds; a loaded machine may take a while to finish a request.
    wait_until(lambda: not traffic.running, 30, "traffic went on past max_seconds")
    stopped_after = time.monotonic() - started
    traffic.stop()
    # A loaded machine sends fewer than rate x max_seconds, never more.
    assert 10 <= traffic.sent <= 40, f"{traffic.sent} requests sent in {stopped_after:.2f} s"
    assert len(traffic.hits) == 10 and all(hit.status == 200 for hit in traffic.hits)


def test_synthetic_traffic_goes_to_loopback_only():
    with pytest.raises(ValueError, match="loopback only"):
        Traffic("http://10.0.0.1:8080", rate=1, max_seconds=1)
