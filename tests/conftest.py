"""Fixtures that start real services on 127.0.0.1 (see hotpot_devstack).

Session-scoped, shared by all tests (create your own databases, buckets and repositories with unique names):
  postgres    Postgres: .url, .url_for(db), .connect(db), .create_database/.drop_database, .bin_dir, .version
  s3          S3Server: .endpoint_url, .access_key, .secret_key, .region, .client(), .create_bucket(name)
  seaweedfs   SeaweedFSServer: the same interface, from SeaweedFS (checks part checksums as AWS S3 does)
  registry    Registry without auth: .host ("127.0.0.1:PORT"), .url, .push_test_image(repo, tag)
  prometheus  PrometheusServer scraping only itself: .url, .query(promql)
Function-scoped:
  s3_server        each test twice: once with `s3` (moto), once with `seaweedfs`
  fresh_s3         a private S3Server the test may stop ("S3 is down")
  sample_database  name of a new database on `postgres` seeded with the sample schema, dropped afterwards
  archiving_postgres  a Postgres of its own archiving WAL with barman-cloud into `s3` (a prefix of its own
                   in support.pitr.BUCKET; .wal_archive says where), stopped after the test
  nginx_factory    nginx_factory(upstreams, **Nginx options) -> a started Nginx, stopped after the test
  http_backend     http_backend(name) -> "127.0.0.1:PORT" of an HTTP server answering every GET with `name`
  webhook_receiver webhook_receiver(fail_next=0) -> a Slack-like webhook on loopback recording what it gets
Session-scoped, for the operator's end-to-end tests (which run last, see pytest_collection_modifyitems):
  devstack    DevStack: every service, seeded, as `make dev` starts them; .env()
  dagster_ui  DagsterServices: dagster-webserver + dagster-daemon with the devstack's environment; .graphql()
  alert_inbox the WebhookReceiver that dagster_ui's run_failure_alert_sensor posts to
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support import automation

from hotpot_devstack import (
    DevStack,
    Nginx,
    Postgres,
    PrometheusServer,
    Registry,
    S3Server,
    seed_sample,
)
from hotpot_devstack.dagster_services import DagsterServices
from hotpot_devstack.s3 import SeaweedFSServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests on the devstack run last, those on its Dagster instance (dagster_ui) after the others: the
    stack's traffic and scrapes, and the daemon's sensors, schedules and runs, then load the machine only
    while tests use them, not beside every module collected after the first that started them."""

    def stage(item: pytest.Item) -> int:
        fixtures = getattr(item, "fixturenames", ())
        return 2 if "dagster_ui" in fixtures else 1 if "devstack" in fixtures else 0

    items.sort(key=stage)  # stable: the order within each stage is kept


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    with Postgres() as server:
        yield server


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFSServer]:
    with SeaweedFSServer() as server:
        yield server


@pytest.fixture(params=["moto", "seaweedfs"])
def s3_server(request) -> S3Server:
    """The S3 API of each implementation in turn: moto, and SeaweedFS, which verifies checksums like S3."""
    return request.getfixturevalue("s3" if request.param == "moto" else "seaweedfs")


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    with Registry() as server:
        yield server


@pytest.fixture(scope="session")
def prometheus() -> Iterator[PrometheusServer]:
    with PrometheusServer(scrape_self=True) as server:
        yield server


@pytest.fixture
def fresh_s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture
def archiving_postgres(s3: S3Server) -> Iterator[Postgres]:
    from support.pitr import archiving_server

    with archiving_server(s3) as server:
        yield server


@pytest.fixture
def sample_database(postgres: Postgres) -> Iterator[str]:
    name = f"sample_{uuid.uuid4().hex[:12]}"
    seed_sample(postgres, name)
    yield name
    postgres.drop_database(name)


@pytest.fixture
def nginx_factory() -> Iterator[Callable[..., Nginx]]:
    started: list[Nginx] = []

    def start(upstreams=(), **options) -> Nginx:
        server = Nginx(upstreams, **options)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def http_backend() -> Iterator[Callable[[str], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(name: str) -> str:
        body = name.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class WebhookReceiver:
    """A Slack-like webhook on 127.0.0.1 that records what it gets in `messages`, and when in `received_at`
    (time.time(), one for each message); `fail_next` answers 503 first."""

    def __init__(self, fail_next: int = 0):
        self.messages: list[dict] = []
        self.received_at: list[float] = []
        self.fail_next = fail_next
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.fail_next:
                    receiver.fail_next -= 1
                    self.send_response(503)
                else:
                    receiver.received_at.append(time.time())
                    receiver.messages.append(json.loads(body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/T000/B000/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook_receiver() -> Iterator[Callable[..., WebhookReceiver]]:
    """webhook_receiver(fail_next=0) -> a started WebhookReceiver, closed after the test."""
    started: list[WebhookReceiver] = []

    def start(fail_next: int = 0) -> WebhookReceiver:
        started.append(WebhookReceiver(fail_next))
        return started[-1]

    yield start
    for receiver in started:
        receiver.close()


@pytest.fixture(scope="session")
def alert_inbox() -> Iterator[WebhookReceiver]:
    """The webhook the end-to-end Dagster instance posts its failure alerts to."""
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def devstack() -> Iterator[DevStack]:
    """Every service together, seeded, as `make dev` starts them (for the operator's end-to-end tests)."""
    with DevStack() as stack:
        yield stack


@pytest.fixture(scope="session")
def dagster_ui(devstack: DevStack, alert_inbox: WebhookReceiver) -> Iterator[DagsterServices]:
    """dagster-webserver + dagster-daemon on a private DAGSTER_HOME, with the devstack's environment."""
    # The drill schedule ticks every minute here, so a test can watch the daemon run a schedule.
    env = {
        **devstack.env(),
        "HOTPOT_RESTORE_DRILL_CRON": "* * * * *",
        "HOTPOT_ALERT_WEBHOOK_URL": alert_inbox.url,
    }
    with DagsterServices(env=env) as services:
        # On by default, as in production; stopped here until a test starts it, so that a drill is not
        # launched every minute of the session.
        automation.stop(services, "schedule", "restore_drill_schedule")
        yield services
