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
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import httpx
import pytest

from hotpot_devstack import Traffic, port_is_open

STARTUP_SECONDS = 120


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


def eventually(check, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what} within {timeout:g}s"
        time.sleep(0.5)
    return result


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
        deadline = time.monotonic() + STARTUP_SECONDS
        while not env_file.exists():
            assert devstack.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        nginx_url = eventually(
            lambda: re.search(r"^nginx\s+(http://127\.0\.0\.1:\d+)", log_path.read_text(), re.MULTILINE),
            "the stack's summary names nginx",
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
    rates = eventually(
        lambda: (rates := rates_by_color(prometheus_url)).get("blue", 0) > 10 and rates,
        "Prometheus sees the synthetic traffic on blue",
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
    router = defs.resources["traffic_router"].router()
    assert router.state() == RouteState("blue", 0)

    router.set_weight(50)
    # The router returns once a new nginx worker serves; an old one may finish a connection it just took.
    eventually(lambda: 10 <= tracks(nginx_url, 40).count("green") <= 30, "green gets about half", timeout=5)
    eventually(lambda: rates_by_color(prometheus_url)["green"] > 3, "Prometheus sees green's share")

    # Judged like a release step: the default plan's selector and metrics, over a window short enough here.
    analysis = replace(load_plan().analysis, window=5.0, min_requests=20)
    measurement = eventually(
        lambda: (m := measure(up, analysis, canary="green", stable="blue")).verdict == "pass" and m,
        "a passing measurement of green against blue",
    )
    requests = [decision.sample_count for decision in measurement.decisions]
    assert all(count >= 20 for count in requests), measurement.summary

    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("rollback_job").execute_in_process(instance=instance)
    assert result.success
    assert router.state() == RouteState("blue", 0)
    eventually(lambda: set(tracks(nginx_url, 20)) == {"blue"}, "blue alone answers again", timeout=5)

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
    deadline = time.monotonic() + 5
    while traffic.running:
        assert time.monotonic() < deadline, "traffic went on past max_seconds"
        time.sleep(0.05)
    assert 30 <= traffic.sent <= 40
    assert len(traffic.hits) == 10 and all(hit.status == 200 for hit in traffic.hits)
    traffic.stop()


def test_synthetic_traffic_goes_to_loopback_only():
    with pytest.raises(ValueError, match="loopback only"):
        Traffic("http://10.0.0.1:8080", rate=1, max_seconds=1)
