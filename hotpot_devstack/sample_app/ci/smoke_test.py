"""Smoke test of the built server binary: start it on a free loopback port and check every endpoint.

Usage: python3 ci/smoke_test.py ./hotpot-api
"""

import http.client
import os
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def start(binary: str, **env: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    environment = {"PORT": str(port), "LISTEN_ADDR": "127.0.0.1", **env}
    process = subprocess.Popen([binary], env=environment, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if get(port, "/health")[0] == 200:
                return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"{binary} did not answer /health within 10 s: {process.stderr.read().decode()}")


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"FAILED: {message}")
    print(f"ok - {message}")


def main() -> None:
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "./hotpot-api")
    process, port = start(binary, TRACK="stable")
    try:
        check(get(port, "/health") == (200, "ok\n"), "/health answers 200")
        check(get(port, "/ready") == (200, "ready\n"), "/ready answers 200")
        status, body = get(port, "/")
        check(status == 200 and '"track":"stable"' in body, "/ answers 200 with the track")
        check(get(port, "/missing")[0] == 404, "an unknown path answers 404")
        status, metrics = get(port, "/metrics")
        check(status == 200, "/metrics answers 200")
        check('http_requests_total{status="200",track="stable"} 1' in metrics, "200s are counted")
        check('http_requests_total{status="404",track="stable"} 1' in metrics, "404s are counted")
        check('http_request_duration_seconds_count{track="stable"} 2' in metrics, "durations are observed")
        check("# TYPE http_request_duration_seconds histogram" in metrics, "the histogram is typed")
    finally:
        process.terminate()
        check(process.wait(timeout=5) == 0, "SIGTERM stops the server cleanly")

    process, port = start(binary, TRACK="canary", FAULT_5XX_RATIO="0.25", FAULT_LATENCY_MS="20")
    try:
        began = time.monotonic()
        statuses = [get(port, "/")[0] for _ in range(8)]
        elapsed = time.monotonic() - began
        check(statuses.count(503) == 2, "FAULT_5XX_RATIO=0.25 fails exactly 2 of 8 requests")
        check(elapsed >= 8 * 0.02, "FAULT_LATENCY_MS delays every request")
        metrics = get(port, "/metrics")[1]
        check('http_requests_total{status="503",track="canary"} 2' in metrics, "injected 503s are counted")
        check('http_request_duration_seconds_bucket{track="canary",le="0.01"} 0' in metrics, "latency shows")
    finally:
        process.terminate()
        process.wait(timeout=5)


if __name__ == "__main__":
    main()
