"""An OCI registry on 127.0.0.1: Debian's `docker-registry` (CNCF distribution) with a generated config.

`push_test_image` is a few direct Registry HTTP API v2 calls with httpx: it only has to upload two blobs and a
manifest to a registry we started, which needs no token auth, pagination or the rest of a client library.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import secrets
import shutil
import subprocess
import tarfile
from collections.abc import Mapping

import httpx

from ._process import INSTALL_HINT, MissingProgram, Service, find_program, free_port

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd entry (the only hash docker-registry accepts): `bcrypt` module, else `htpasswd`."""
    try:
        import bcrypt
    except ImportError:
        htpasswd = shutil.which("htpasswd")
        if htpasswd is None:
            raise MissingProgram(
                "bcrypt",
                "registry basic auth needs the Python package `bcrypt` in the venv or `htpasswd` from the "
                f"Debian package `apache2-utils`; neither is installed {INSTALL_HINT}",
            ) from None
        # -i reads the password from stdin so it does not show up in the process list.
        result = subprocess.run(
            [htpasswd, "-niB", user], input=password, capture_output=True, text=True, check=True
        )
        return result.stdout.strip()
    # Cost 5, htpasswd's default: the registry checks the hash on every request of a throwaway server.
    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(payload: bytes) -> tuple[bytes, str]:
    """A gzipped tar holding one file with `payload`, and its diff id (digest of the uncompressed tar)."""
    tar_buffer = io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w") as tar:
        info = tarfile.TarInfo("payload")
        info.size = len(payload)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(payload))
    tar_bytes = tar_buffer.getvalue()
    return gzip.compress(tar_bytes, mtime=0), _digest(tar_bytes)


def push_test_image(
    registry_url: str,
    repo: str,
    tag: str,
    payload: bytes = b"hotpot test image\n",
    auth: tuple[str, str] | None = None,
) -> str:
    """Push a minimal valid OCI image (config + one layer + manifest) as `repo:tag`; return its digest."""
    layer, diff_id = _layer(payload)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"org.opencontainers.image.title": f"{repo}:{tag}"}},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    with httpx.Client(base_url=registry_url, auth=auth, timeout=30) as client:
        for blob in (config, layer):
            started = client.post(f"/v2/{repo}/blobs/uploads/")
            started.raise_for_status()
            upload_url = httpx.URL(registry_url).join(started.headers["Location"])
            client.put(
                upload_url.copy_add_param("digest", _digest(blob)),
                content=blob,
                headers={"Content-Type": "application/octet-stream"},
            ).raise_for_status()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": _digest(config), "size": len(config)},
                "layers": [{"mediaType": OCI_LAYER, "digest": _digest(layer), "size": len(layer)}],
            }
        ).encode()
        response = client.put(
            f"/v2/{repo}/manifests/{tag}", content=manifest, headers={"Content-Type": OCI_MANIFEST}
        )
        response.raise_for_status()
    return response.headers.get("Docker-Content-Digest", _digest(manifest))


class Registry(Service):
    """docker-registry on 127.0.0.1:<free port>, storage in its temp dir, deletes enabled.

    `users` ({"alice": "password"}) turns on htpasswd basic auth.
    """

    name = "registry"

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        program: str = "/usr/bin/docker-registry",
        startup_timeout: float = 30.0,
    ):
        super().__init__()
        self.users = dict(users or {})
        self.program = program
        self.startup_timeout = startup_timeout
        self.port = 0

    @property
    def host(self) -> str:
        """host:port, the form image references use."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def auth(self) -> tuple[str, str] | None:
        """Credentials of the first configured user, for httpx; None without auth."""
        return next(iter(self.users.items()), None)

    def push_test_image(self, repo: str, tag: str, payload: bytes = b"hotpot test image\n") -> str:
        return push_test_image(self.url, repo, tag, payload, auth=self.auth)

    def _start(self) -> None:
        program = find_program(self.program, "docker-registry")
        self.port = free_port()
        config: dict = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text"},
            "storage": {
                "filesystem": {"rootdirectory": str(self.tmp / "storage")},
                "delete": {"enabled": True},
            },
            "http": {"addr": self.host, "secret": secrets.token_hex(16)},
        }
        if self.users:
            htpasswd = self.tmp / "htpasswd"
            htpasswd.write_text("".join(htpasswd_line(u, p) + "\n" for u, p in self.users.items()))
            config["auth"] = {"htpasswd": {"realm": "hotpot-devstack", "path": str(htpasswd)}}
        config_path = self.tmp / "config.yml"
        config_path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
        self._spawn([program, "serve", str(config_path)])
        # /v2/ answers 200, or 401 with auth on: either way the registry is serving.
        self._wait_until(
            lambda: httpx.get(f"{self.url}/v2/", timeout=2).status_code in (200, 401),
            f"the registry to answer on {self.url}",
        )
