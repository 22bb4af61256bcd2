"""Waiting for a condition with a deadline: what a test does instead of sleeping for a guessed time, so that
it neither fails on a loaded machine nor waits longer than the condition takes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    message: str | Callable[[], str],
    interval: float = 0.1,
) -> T:
    """Calls `predicate` every `interval` seconds until it returns something truthy, and returns that.
    After `timeout` seconds fails the test with `message` (a callable is called then, to say what it saw)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = message() if callable(message) else message
            raise AssertionError(f"{detail} (waited {timeout:g} s)")
        time.sleep(interval)
