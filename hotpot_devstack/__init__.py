"""Real services on loopback for `make dev`, the test fixtures and the benchmarks.

Each service is a context manager with `start()` / `stop()` (idempotent, also run at interpreter exit), a free
port on 127.0.0.1 and a private temp dir removed on stop. Plain Python: no Dagster imports here.
"""

from ._process import MissingProgram, ServiceError, free_port, port_is_open
from .nginx import Nginx
from .postgres import Postgres
from .prometheus import PrometheusServer
from .registry import Registry, push_test_image
from .release_target import API_JOB, COLORS, ReleaseTarget
from .s3 import S3Server
from .sample import SAMPLE_DATABASE, seed_sample
from .sample_api import SampleApi
from .stack import BACKUP_BUCKET, DevStack
from .traffic import Traffic

__all__ = [
    "API_JOB",
    "BACKUP_BUCKET",
    "COLORS",
    "SAMPLE_DATABASE",
    "DevStack",
    "MissingProgram",
    "Nginx",
    "Postgres",
    "PrometheusServer",
    "Registry",
    "ReleaseTarget",
    "S3Server",
    "SampleApi",
    "ServiceError",
    "Traffic",
    "free_port",
    "port_is_open",
    "push_test_image",
    "seed_sample",
]
