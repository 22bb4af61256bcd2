"""Bounded synthetic traffic through the devstack's nginx: what a canary is judged on when no users exist.

Requests go to loopback only, at a fixed rate, and stop at `stop()` or after `max_seconds` (and so after
rate x max_seconds requests), whichever comes first. Each answer's `X-Track` header (sent by the sample app
and the test servers alike) says which colour served it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Hit:
    at: float  # time.time() when the request was sent
    color: str | None  # None: no answer (connection error, timeout)
    status: int | None
    retried: bool = False  # answered on the second attempt after a closed keep-alive connection
    error: str | None = None  # why there was no answer


class Traffic:
    """`rate` GET / per second in total through `url`, over `concurrency` threads, for at most `max_seconds`.

    The last `history` hits are kept (all by default), so a long-running stack keeps bounded memory.
    """

    def __init__(
        self,
        url: str,
        rate: float,
        max_seconds: float,
        concurrency: int = 8,
        history: int | None = None,
    ):
        if urlsplit(url).hostname not in LOOPBACK:
            raise ValueError(f"synthetic traffic goes to loopback only, not to {url}")
        if rate <= 0 or max_seconds <= 0:
            raise ValueError("synthetic traffic needs a positive rate and a positive max_seconds")
        self.url = url
        self.rate = rate
        self.max_seconds = max_seconds
        self.max_requests = int(rate * max_seconds)
        self.concurrency = concurrency
        self.sent = 0
        self._hits: deque[Hit] = deque(maxlen=history)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    @property
    def hits(self) -> list[Hit]:
        with self._lock:
            return list(self._hits)

    def _client(self, index: int, started: float) -> None:
        import httpx

        period = self.concurrency / self.rate
        next_at = started + index * period / self.concurrency
        with httpx.Client(timeout=5.0) as client:
            while not self._stop.is_set() and time.monotonic() - started < self.max_seconds:
                delay = next_at - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                next_at += period
                with self._lock:
                    if self.sent >= self.max_requests:
                        return
                    self.sent += 1
                sent = time.time()
                for attempt in (1, 2):
                    try:
                        response = client.get(self.url + "/")
                        color = response.headers.get("X-Track")
                        hit = Hit(sent, color, response.status_code, retried=attempt > 1)
                        break
                    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as error:
                        # An nginx reload closes idle keep-alive connections (a FIN, or a reset if the GET
                        # was already on its way); a GET sent on one at that moment is retried, as HTTP
                        # clients do for idempotent requests (RFC 9112, 9.3.1).
                        hit = Hit(sent, None, None, retried=True, error=repr(error))
                    except httpx.HTTPError as error:
                        hit = Hit(sent, None, None, error=repr(error))
                        break
                with self._lock:
                    self._hits.append(hit)

    def start(self) -> Traffic:
        started = time.monotonic()
        self._threads = [
            threading.Thread(target=self._client, args=(i, started), name=f"traffic-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, grace: float = 1.0) -> None:
        """Stop sending; a request still in flight may take its timeout, but not the stop's time: the
        clients are daemon threads, gone with the process."""
        self._stop.set()
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def between(self, start: float, end: float) -> list[Hit]:
        with self._lock:
            return [hit for hit in self._hits if start <= hit.at < end]

    @staticmethod
    def share(hits: list[Hit], color: str) -> float:
        """Percentage of answered requests that `color` served."""
        answered = [hit for hit in hits if hit.color is not None]
        return 100.0 * sum(hit.color == color for hit in answered) / max(1, len(answered))
