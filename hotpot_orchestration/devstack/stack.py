"""All devstack services together, and the environment the code location reads to use them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Self

from ._process import Service
from .nginx import Nginx
from .postgres import Postgres
from .prometheus import Prometheus
from .registry import Registry
from .s3 import S3Server
from .sample import SAMPLE_DATABASE, seed_sample

BACKUP_BUCKET = "thehotpotspot-backups"


class DevStack:
    """PostgreSQL (seeded with the sample database), S3 (with the backup bucket), registry, nginx, Prometheus.

    nginx starts with no upstream (503) until a release routes traffic; Prometheus scrapes itself.
    """

    def __init__(self) -> None:
        self.postgres = Postgres()
        self.s3 = S3Server()
        self.registry = Registry()
        self.nginx = Nginx()
        self.prometheus = Prometheus(scrape_self=True)

    @property
    def services(self) -> list[Service]:
        return [self.postgres, self.s3, self.registry, self.nginx, self.prometheus]

    def start(self) -> Self:
        try:
            # In parallel: each start is mostly waiting for a child process to get ready.
            with ThreadPoolExecutor(len(self.services)) as pool:
                for future in [pool.submit(service.start) for service in self.services]:
                    future.result()
            seed_sample(self.postgres, SAMPLE_DATABASE)
            self.s3.create_bucket(BACKUP_BUCKET)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """The design's environment variables for this stack (the database URLs hold the password)."""
        return {
            "HOTPOT_DATABASE_URL": self.postgres.url_for(SAMPLE_DATABASE),
            "HOTPOT_DRILL_DATABASE_URL": self.postgres.url,
            "HOTPOT_PG_BIN_DIR": str(self.postgres.bin_dir),
            "HOTPOT_BACKUP_BUCKET": BACKUP_BUCKET,
            "AWS_ENDPOINT_URL": self.s3.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.s3.access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
            "AWS_REGION": self.s3.region,
            "AWS_DEFAULT_REGION": self.s3.region,  # the name boto3 itself reads
            "HOTPOT_REGISTRY": self.registry.host,
            "HOTPOT_PROMETHEUS_URL": self.prometheus.url,
            "HOTPOT_ROUTER": "nginx",
            # Where the local router lives, for `nginx -p PREFIX -c CONF -s reload` after rewriting CONF.
            "HOTPOT_NGINX_URL": self.nginx.url,
            "HOTPOT_NGINX_CONF": str(self.nginx.conf_path),
            "HOTPOT_NGINX_PREFIX": str(self.nginx.prefix),
        }

    def summary(self) -> str:
        """Where each service listens, without the database password."""
        pg = self.postgres
        return "\n".join(
            [
                f"PostgreSQL {pg.version}  {pg.host}:{pg.port}  database {SAMPLE_DATABASE}, user {pg.user}",
                f"S3 (moto)      {self.s3.endpoint_url}  bucket {BACKUP_BUCKET}",
                f"registry       {self.registry.host}",
                f"nginx          {self.nginx.url}  config {self.nginx.conf_path}",
                f"Prometheus     {self.prometheus.url}",
            ]
        )
