"""NginxRouter against the devstack's real nginx: once set_weight returns, every new connection is routed by
the new weights, not by nginx's previous workers (which take new connections for about 100 ms after a
reload unless the router waits for them)."""

from __future__ import annotations

import socket
import stat
import threading
import time

import pytest

from hotpot_orchestration.release.rollout.routers import RouterError, RouteState
from hotpot_orchestration.release.rollout.routers.nginx import NginxRouter

# Probes on new connections right after each change, bounded in count and time.
PROBES = 1000
PROBE_SECONDS = 5.0
CHANGES = 6


def colour_on_a_new_connection(port: int) -> str:
    """GET / on a connection of its own (HTTP/1.0: nginx closes it after the answer); the body names the
    backend that answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while chunk := connection.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    assert b" 200 " in status, answer[:200]
    return body.decode()


@pytest.fixture
def routed(nginx_factory, http_backend):
    """nginx in front of a blue and a green backend, its upstream file driven by an NginxRouter; blue live."""
    blue, green = http_backend("blue"), http_backend("green")
    nginx = nginx_factory({blue: 1}, upstream_file=True)
    router = NginxRouter(
        nginx.upstream_conf,
        {"blue": [blue], "green": [green]},
        nginx_command=nginx.command(),
        pid_file=nginx.pid_path,
    )
    assert router.set_weight(0) == RouteState("blue", 0)
    return nginx, router


def test_once_set_weight_returns_no_new_connection_reaches_the_previous_colour(routed):
    nginx, router = routed
    # Other clients keep nginx's workers busy through every reload, as production traffic would.
    stop = threading.Event()

    def background_traffic():
        deadline = time.monotonic() + CHANGES * (PROBE_SECONDS + 15)
        while not stop.is_set() and time.monotonic() < deadline:
            colour_on_a_new_connection(nginx.port)

    clients = [threading.Thread(target=background_traffic, daemon=True) for _ in range(2)]
    for client in clients:
        client.start()
    try:
        for change in range(CHANGES):
            weight, previous, current = (100, "blue", "green") if change % 2 == 0 else (0, "green", "blue")
            router.set_weight(weight)
            returned = time.monotonic()
            late = []  # (seconds after the return, colour) of answers from the previous colour
            answers = 0
            while answers < PROBES and time.monotonic() - returned < PROBE_SECONDS:
                colour = colour_on_a_new_connection(nginx.port)
                answers += 1
                if colour != current:
                    late.append((round(time.monotonic() - returned, 3), colour))
            assert not late, (
                f"change {change + 1} (weight {weight}): {len(late)} of {answers} requests on new "
                f"connections after set_weight returned reached {previous}; the last {late[-1][0]} s after: "
                f"{late[:10]}"
            )
            # Enough probes to have covered the old workers' window right after the return.
            assert answers >= 100, f"only {answers} probes in {PROBE_SECONDS} s"
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=10)


def test_a_reload_that_never_happens_ends_in_an_error_by_the_deadline(routed, tmp_path):
    nginx, _ = routed
    # nginx itself for `nginx -t`, but `-s reload` is swallowed: the master never starts new workers.
    wrapper = tmp_path / "nginx-without-reload"
    wrapper.write_text('#!/bin/sh\nfor arg; do [ "$arg" = "-s" ] && exit 0; done\nexec "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    router = NginxRouter(
        nginx.upstream_conf,
        {"blue": ["127.0.0.1:1"], "green": ["127.0.0.1:2"]},
        nginx_command=[str(wrapper), *nginx.command()],
        pid_file=nginx.pid_path,
        reload_timeout=1.0,
    )
    started = time.monotonic()
    with pytest.raises(RouterError, match="started no worker with the new configuration within 1s"):
        router.set_weight(50)
    assert time.monotonic() - started < 30


def test_the_router_needs_the_masters_pid_file(tmp_path):
    with pytest.raises(RouterError, match="HOTPOT_NGINX_PID_FILE"):
        NginxRouter(tmp_path / "upstream.conf", {"blue": ["127.0.0.1:1"], "green": ["127.0.0.1:2"]})
