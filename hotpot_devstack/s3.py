"""An S3 API on 127.0.0.1 from moto's server.

moto runs in a child process (`python -m moto.server`) rather than as an in-process ThreadedMotoServer:
moto keeps its buckets in process-global state, so two threaded servers in one interpreter would share
every bucket and a "private" server would not be private. A child process also makes `stop()` a real
outage: the port refuses connections afterwards.
"""

from __future__ import annotations

import importlib.util
import sys

import httpx

from ._process import INSTALL_HINT, MissingProgram, Service, free_port


class S3Server(Service):
    name = "s3"

    def __init__(self, region: str = "us-east-1", startup_timeout: float = 60.0):
        super().__init__()
        self.region = region
        self.startup_timeout = startup_timeout
        # moto accepts any credentials; these make the intent obvious in logs and env files.
        self.access_key = "devstack-access-key"
        self.secret_key = "devstack-secret-key"
        self.host = "127.0.0.1"
        self.port = 0

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """The AWS variables that point boto3 (and the code location) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,  # the name boto3 itself reads
        }

    def client(self, **kwargs):
        """A boto3 S3 client for this server; `kwargs` go to `boto3.client` (e.g. `config=`)."""
        import boto3  # imported on use: slow to import, and most devstack users never need it

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            **kwargs,
        )

    def create_bucket(self, name: str) -> None:
        client = self.client()
        if self.region == "us-east-1":  # S3 rejects an explicit LocationConstraint for us-east-1
            client.create_bucket(Bucket=name)
        else:
            client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": self.region})

    def _start(self) -> None:
        if importlib.util.find_spec("moto.server") is None or importlib.util.find_spec("flask") is None:
            raise MissingProgram(
                "moto server", f"install the Python package `moto[server]` into the venv {INSTALL_HINT}"
            )
        self.port = free_port()
        self._spawn([sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)])
        self._wait_until(self._answers, f"moto to answer on {self.endpoint_url}")

    def _answers(self) -> bool:
        return httpx.get(f"{self.endpoint_url}/moto-api/data.json", timeout=2).status_code == 200
