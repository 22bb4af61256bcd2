"""All devstack services together, and the environment the code location reads to use them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Self

from .nginx import Nginx
from .postgres import Postgres, WalArchive
from .prometheus import PrometheusServer
from .registry import Registry
from .release_target import API_JOB, ReleaseTarget
from .s3 import S3Server
from .sample import SAMPLE_DATABASE, seed_sample
from .sample_api import SAMPLE_APP_DIR, SampleApi
from .traffic import Traffic

BACKUP_BUCKET = "thehotpotspot-backups"
# Where the server archives its WAL (barman-cloud's layout), as the settings' defaults name it.
PITR_PREFIX = "pitr/"
BARMAN_SERVER_NAME = "hotpot-db"
TRAFFIC_RATE = 20.0  # requests per second: enough for the default plan's min_requests at a 20 % weight
TRAFFIC_SECONDS = 3600.0
# Hits kept for inspection: the last ten minutes at the default rate.
TRAFFIC_HISTORY = 12_000


class DevStack:
    """PostgreSQL (seeded with the sample database), S3 (with the backup bucket), the registry, and a release
    target: the sample app as blue and green behind nginx (blue live at 100 %), both scraped by Prometheus,
    with synthetic traffic through nginx at `traffic_rate` requests per second for at most `traffic_seconds`.
    """

    def __init__(
        self,
        traffic_rate: float = TRAFFIC_RATE,
        traffic_seconds: float = TRAFFIC_SECONDS,
        sample_size: str = "small",
    ) -> None:
        self.s3 = S3Server()
        # WAL archived to the stack's S3, as CloudNativePG does in production: point-in-time drills work.
        self.postgres = Postgres(
            wal_archive=WalArchive(self.s3, BACKUP_BUCKET, PITR_PREFIX, BARMAN_SERVER_NAME)
        )
        self.registry = Registry()
        self.sample_api = SampleApi()
        self.release_target: ReleaseTarget | None = None
        self.traffic: Traffic | None = None
        self.traffic_rate = traffic_rate
        self.traffic_seconds = traffic_seconds
        self.sample_size = sample_size

    @property
    def nginx(self) -> Nginx:
        return self._target().nginx

    @property
    def prometheus(self) -> PrometheusServer:
        return self._target().prometheus

    def _target(self) -> ReleaseTarget:
        if self.release_target is None:
            raise RuntimeError("the devstack is not running")
        return self.release_target

    def _start_release_target(self) -> None:
        # nginx and Prometheus are configured with the colours' ports, known once they run.
        self.sample_api.start()
        self.release_target = ReleaseTarget(self.sample_api.addresses).start()

    def _start_database(self) -> None:
        self.s3.start()
        self.postgres.start()

    def _stop_database(self) -> None:
        # PostgreSQL's shutdown archives its last WAL segment: S3 must still answer until it is down.
        self.postgres.stop()
        self.s3.stop()

    def start(self) -> Self:
        try:
            # In parallel: each start is mostly waiting for a child process to get ready.
            with ThreadPoolExecutor(4) as pool:
                # PostgreSQL archives into S3 from its first segment on: S3 comes first.
                starts = [self._start_database, self.registry.start, self._start_release_target]
                for future in [pool.submit(start) for start in starts]:
                    future.result()
            seed_sample(self.postgres, SAMPLE_DATABASE, self.sample_size)
            self.s3.create_bucket(BACKUP_BUCKET)
            self.traffic = Traffic(
                self.nginx.url,
                self.traffic_rate,
                self.traffic_seconds,
                concurrency=4,
                history=TRAFFIC_HISTORY,
            ).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.traffic is not None:
            self.traffic.stop()
        # In parallel, as they start: each stop is mostly waiting for a process to exit (10 s for all).
        stops = [self.sample_api.stop, self.registry.stop, self._stop_database]
        if self.release_target is not None:
            stops.append(self.release_target.stop)
        with ThreadPoolExecutor(len(stops)) as pool:
            for future in [pool.submit(stop) for stop in stops]:
                future.result()

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
            "HOTPOT_PITR_PREFIX": PITR_PREFIX,
            "HOTPOT_BARMAN_SERVER_NAME": BARMAN_SERVER_NAME,
            **self.s3.env(),
            "HOTPOT_REGISTRY": self.registry.host,
            "HOTPOT_APP_SOURCE": str(SAMPLE_APP_DIR),
            # The release router and canary analysis: this nginx, the sample app's colours, this Prometheus.
            **self._target().env(),
        }

    def summary(self) -> str:
        """Where each service listens, without the database password."""
        pg = self.postgres
        colors = "  ".join(f"{color} {address}" for color, address in self.sample_api.addresses.items())
        return "\n".join(
            [
                f"PostgreSQL {pg.version}  {pg.host}:{pg.port}  database {SAMPLE_DATABASE}, user {pg.user}",
                f"S3 (moto)      {self.s3.endpoint_url}  bucket {BACKUP_BUCKET}",
                f"registry       {self.registry.host}",
                f"sample app     {colors}",
                f"nginx          {self.nginx.url}  upstreams {self.nginx.upstream_conf}",
                f"Prometheus     {self.prometheus.url}  job {API_JOB}, label color=blue|green",
                f"traffic        {self.traffic_rate:g} requests/s through nginx for at most "
                f"{self.traffic_seconds / 3600:g} h",
            ]
        )
