"""A loopback front for a registry that ignores `n` on tag listing, adding the pagination other registries do.

Debian's `docker-registry` (distribution 2.8) returns every tag in one answer whatever `n` says; distribution
3, Harbor, GHCR, ECR and the rest page with `n`, `last` and a `Link: <...>; rel="next"` header. The tests and
`bench/sensor_tick.py` put this proxy in front of the devstack registry so paging is exercised for real:
tag lists are answered page by page (sorted, as distribution 3 does), every other request is relayed as is.
It counts the requests it relays.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


class PagingProxy:
    def __init__(self, upstream: str, max_page: int = 1000, paginate: bool = True):
        self.upstream = upstream.rstrip("/")
        self.max_page = max_page
        self.paginate = paginate  # False: relay tag lists as the registry sends them (only count requests)
        self.requests = 0
        self._client = httpx.Client(timeout=60)
        self._server: ThreadingHTTPServer | None = None

    @property
    def host(self) -> str:
        assert self._server is not None, "start the proxy first"
        return f"127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> PagingProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _relay(self) -> None:
                proxy.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                paged = (
                    proxy.paginate
                    and self.command == "GET"
                    and parts.path.endswith("/tags/list")
                    and "n" in query
                )
                url = proxy.upstream + (parts.path if paged else self.path)
                upstream = proxy._client.request(self.command, url, headers=headers, content=body)
                content, extra = upstream.content, {}
                if paged and upstream.status_code == 200:
                    content, extra = proxy._page(parts.path, upstream.json(), query)
                self.send_response(upstream.status_code)
                replaced = {key.lower() for key in extra}
                for key, value in upstream.headers.multi_items():
                    if key.lower() not in _HOP_BY_HOP and key.lower() not in replaced:
                        self.send_header(key, value)
                for key, value in extra.items():
                    self.send_header(key, value)
                if self.command == "HEAD":
                    self.send_header("Content-Length", upstream.headers.get("Content-Length", "0"))
                    self.end_headers()
                    return
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _relay

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def _page(self, path: str, listing: dict, query: dict[str, list[str]]) -> tuple[bytes, dict[str, str]]:
        import json

        tags = sorted(listing.get("tags") or [])
        n = max(1, min(int(query["n"][0]), self.max_page))
        last = query.get("last", [""])[0]
        if last:
            tags = [tag for tag in tags if tag > last]
        page = tags[:n]
        extra = {"Content-Type": "application/json"}
        if len(tags) > n:
            extra["Link"] = f'<{path}?{urlencode({"last": page[-1], "n": n})}>; rel="next"'
        return json.dumps({"name": listing.get("name"), "tags": page}).encode(), extra

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._client.close()

    def __enter__(self) -> PagingProxy:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
