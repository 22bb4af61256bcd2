"""A small client for the Docker Registry HTTP API v2 (the OCI distribution API), for builds and releases.

What it does: lists tags following pagination (`n` and the `Link` header), resolves a tag to its manifest
digest with one HEAD request (OCI and Docker manifest and index media types in `Accept`), reads manifests and
config blobs (for an image's creation time), uploads blobs and manifests (to publish an OCI layout), and
authenticates anonymously, with basic auth or with bearer tokens obtained through the `WWW-Authenticate`
challenge. 429 and 5xx answers and connection errors are retried with exponential backoff (honouring
`Retry-After`) through tenacity. Plain HTTP is used only for loopback hosts or when asked for explicitly.

Why not a library: `python-dxf` and `oras` were weighed. python-dxf (requests + jwcrypto + www-authenticate)
lists tags with pagination and handles token auth, but reads digests through GET (its HEAD is private and
asks only for Docker schema 2), has no backoff on 429/5xx and only an all-or-nothing `insecure` switch.
oras-py lists tags and handles token auth but resolves digests by GETting manifests and is built around
artifact push/pull. Both hide the number of HTTP requests they send, and the new-tag sensor is held to a
request budget (one per page plus one per new candidate). The part of the API needed here is a handful of
endpoints, so this module speaks it directly with httpx (already a dependency) and counts every request.

No Dagster import here: the resources in `hotpot_orchestration.release.image.resource` wrap this client.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urljoin

if TYPE_CHECKING:  # httpx is imported lazily: the code location loads without it
    import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_MEDIA_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
INDEX_MEDIA_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)
CREATED_ANNOTATION = "org.opencontainers.image.created"

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class RegistryError(RuntimeError):
    """The registry answered in a way the caller cannot go on from."""


class RegistryUnavailable(RegistryError):
    """The registry could not be reached, or kept answering 429/5xx after every retry."""


class RegistryAuthError(RegistryError):
    """The registry refused the credentials, or asked for credentials that were not given."""


class RepositoryNotFound(RegistryError):
    """The repository does not exist (no image was ever pushed to it)."""


class RegistryProtocolError(RegistryError):
    """A successful answer whose body is not what the API defines (not JSON, a field of the wrong type, a
    manifest without its config); the message names what was read and what was wrong with it."""


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


def _json_type(value: object) -> str:
    """How a JSON value's type reads in a message: "an object", "a number", "null"..."""
    number = isinstance(value, int | float)
    return _JSON_TYPES.get(type(value), "a number" if number else type(value).__name__)


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    """`body` parsed as a JSON object, or RegistryProtocolError naming `what` and why not."""
    try:
        value = json.loads(body)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise RegistryProtocolError(f"{what} is not JSON ({error})") from None
    if not isinstance(value, dict):
        raise RegistryProtocolError(f"{what} is {_json_type(value)}, not a JSON object")
    return value


def _field(document: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str, expected: str):
    """document[key] when it is absent (None) or of `kind`, else RegistryProtocolError."""
    value = document.get(key)
    if value is not None and not isinstance(value, kind):
        raise RegistryProtocolError(f"{what} has {key!r} as {_json_type(value)}, expected {expected}")
    return value


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        return _json_object(self.body, f"manifest {self.digest}")

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_MEDIA_TYPES or "manifests" in self.json


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1, with or without a port."""
    name = host
    if name.startswith("["):  # [::1]:5000
        name = name[1 : name.index("]")]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Split a `WWW-Authenticate` value into its scheme and parameters (quoted values may hold commas)."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for match in re.finditer(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))', rest):
        value = match.group(2) if match.group(2) is not None else match.group(3)
        params[match.group(1).lower()] = value.replace('\\"', '"')
    return scheme.lower(), params


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class RegistryClient:
    """One registry (HOST[:PORT]); thread-safe for concurrent reads, one connection pool.

    `requests_sent` counts every HTTP request, retries and token requests included.
    """

    def __init__(
        self,
        registry: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        plain_http: bool | None = None,
        timeout: float = 30.0,
        max_attempts: int = 5,
        backoff_initial: float = 0.5,
        backoff_max: float = 10.0,
        page_size: int = 100,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        import httpx

        if not registry or "/" in registry:
            raise ValueError(f"registry must be HOST[:PORT], got {registry!r}")
        if (username is None) != (password is None):
            raise ValueError("give both a registry username and a password, or neither")
        loopback = is_loopback(registry)
        if plain_http is None:
            plain_http = loopback
        self.registry = registry
        self.base_url = f"{'http' if plain_http else 'https'}://{registry}"
        self.page_size = page_size
        self.max_attempts = max(1, max_attempts)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._username = username
        self._password = password
        self._static_token = token
        self._sleep = sleep
        self._lock = threading.Lock()
        self._requests = 0
        # What the registry asked for: None until the first challenge, then "basic" or "bearer".
        self._scheme: str | None = "bearer" if token else None
        self._bearer_params: dict[str, str] = {}
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, expiry on the monotonic clock)
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
            follow_redirects=True,  # blob downloads may redirect to storage
            headers={"User-Agent": "hotpot-orchestration"},
        )

    # ------------------------------------------------------------------ plumbing

    @property
    def requests_sent(self) -> int:
        return self._requests

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _send(self, method: str, url: str, **kwargs) -> httpx.Response:
        """One HTTP request, counted; transport errors and 429/5xx become `_Retryable`."""
        import httpx

        with self._lock:
            self._requests += 1
        try:
            response = self._http.request(method, url, **kwargs)
        except (httpx.TransportError, httpx.DecodingError) as error:
            raise _Retryable(f"{type(error).__name__}: {error}") from error
        if response.status_code in RETRY_STATUSES:
            retry_after = response.headers.get("Retry-After", "")
            seconds = float(retry_after) if re.fullmatch(r"\d+(\.\d+)?", retry_after.strip()) else None
            response.close()
            raise _Retryable(f"HTTP {response.status_code} from {method} {url}", seconds)
        return response

    def _with_backoff(self, method: str, url: str, **kwargs) -> httpx.Response:
        from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt
        from tenacity.wait import wait_exponential_jitter

        exponential = wait_exponential_jitter(
            multiplier=self.backoff_initial, max=self.backoff_max, jitter=self.backoff_initial
        )

        def wait(retry_state) -> float:
            error = retry_state.outcome.exception() if retry_state.outcome else None
            if isinstance(error, _Retryable) and error.retry_after is not None:
                return min(error.retry_after, self.backoff_max)
            return exponential(retry_state)

        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait,
            retry=retry_if_exception_type(_Retryable),
            sleep=self._sleep,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._send(method, url, **kwargs)
        except RetryError as error:
            last = error.last_attempt.exception()
            raise RegistryUnavailable(
                f"registry {self.registry} unavailable after {self.max_attempts} attempts: {last}"
            ) from last
        raise AssertionError("unreachable")

    def _auth_header(self, scope: str) -> dict[str, str]:
        if self._static_token:
            return {"Authorization": f"Bearer {self._static_token}"}
        if self._scheme == "basic" and self._username is not None:
            raw = f"{self._username}:{self._password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        if self._scheme == "bearer":
            cached = self._tokens.get(scope)
            if cached and cached[1] > time.monotonic():
                return {"Authorization": f"Bearer {cached[0]}"}
        return {}

    def _fetch_token(self, params: dict[str, str], scope: str) -> None:
        realm = params.get("realm")
        if not realm:
            raise RegistryAuthError(f"registry {self.registry} sent a bearer challenge without a realm")
        query = {"service": params["service"]} if params.get("service") else {}
        if scope:
            query["scope"] = scope
        headers = {}
        if self._username is not None:
            raw = f"{self._username}:{self._password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        url = realm + ("&" if "?" in realm else "?") + urlencode(query) if query else realm
        response = self._with_backoff("GET", url, headers=headers)
        if response.status_code in (401, 403):
            raise RegistryAuthError(
                f"token service {realm} refused the {'credentials' if headers else 'anonymous request'}"
                f" for {scope or 'the registry'} (HTTP {response.status_code})"
            )
        if response.status_code != 200:
            raise RegistryError(f"token service {realm} answered HTTP {response.status_code}")
        what = f"the answer of token service {realm}"
        body = _json_object(response.content, what)
        token = _field(body, "token", str, what, "a string")
        token = token or _field(body, "access_token", str, what, "a string")
        if not token:
            raise RegistryAuthError(f"token service {realm} answered without a token")
        lifetime = float(_field(body, "expires_in", int | float, what, "a number of seconds") or 60)
        self._tokens[scope] = (token, time.monotonic() + max(lifetime - 10, 5))

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        scope: str = "",
        headers: dict[str, str] | None = None,
        **kwargs,
    ) -> httpx.Response:
        """Send a request with backoff, answering at most one auth challenge. Non-2xx answers are returned."""
        url = path_or_url if "://" in path_or_url else self.base_url + path_or_url
        for _ in range(2):
            if self._scheme == "bearer" and self._bearer_params and not self._auth_header(scope):
                self._fetch_token(self._bearer_params, scope)  # known token service: skip the 401 round trip
            response = self._with_backoff(
                method, url, headers={**(headers or {}), **self._auth_header(scope)}, **kwargs
            )
            if response.status_code != 401:
                return response
            challenge = response.headers.get("WWW-Authenticate", "")
            scheme, params = parse_challenge(challenge) if challenge else ("", {})
            sent_auth = bool(self._auth_header(scope))
            if scheme == "basic":
                if self._username is None:
                    raise RegistryAuthError(f"registry {self.registry} requires a username and password")
                if self._scheme == "basic" and sent_auth:
                    raise RegistryAuthError(f"registry {self.registry} refused the username and password")
                self._scheme = "basic"
            elif scheme == "bearer":
                if self._static_token:
                    raise RegistryAuthError(f"registry {self.registry} refused the bearer token")
                if self._scheme == "bearer" and sent_auth:
                    raise RegistryAuthError(
                        f"registry {self.registry} refused the token it issued for {scope or 'the registry'}"
                    )
                self._scheme = "bearer"
                self._bearer_params = params
                self._fetch_token(params, params.get("scope") or scope)
                if params.get("scope") and params["scope"] != scope:
                    self._tokens[scope] = self._tokens[params["scope"]]
            else:
                raise RegistryAuthError(
                    f"registry {self.registry} answered 401 with an unsupported challenge {challenge!r}"
                )
        raise RegistryAuthError(f"registry {self.registry} kept answering 401 for {method} {url}")

    @staticmethod
    def _pull_scope(repository: str) -> str:
        return f"repository:{repository}:pull"

    @staticmethod
    def _push_scope(repository: str) -> str:
        return f"repository:{repository}:pull,push"

    def _raise_for(self, response: httpx.Response, what: str, repository: str) -> None:
        if response.status_code < 300:
            return
        code = ""
        try:
            errors = response.json().get("errors") or []
            code = str(errors[0].get("code", "")) if errors else ""
        except (ValueError, AttributeError, TypeError, KeyError, IndexError):
            pass  # an error body that is not the API's: the status alone says enough
        if response.status_code == 404 and code == "NAME_UNKNOWN":
            raise RepositoryNotFound(f"repository {repository} does not exist on {self.registry}")
        if response.status_code in (401, 403):
            raise RegistryAuthError(
                f"{what}: registry {self.registry} denied access (HTTP {response.status_code})"
            )
        detail = f" ({code})" if code else ""
        raise RegistryError(f"{what}: registry {self.registry} answered HTTP {response.status_code}{detail}")

    # ------------------------------------------------------------------ reading

    def iter_tag_pages(self, repository: str, page_size: int | None = None) -> Iterator[list[str]]:
        """Yield the repository's tags one page at a time (one request per page)."""
        n = page_size or self.page_size
        url: str | None = f"/v2/{repository}/tags/list?n={n}"
        scope = self._pull_scope(repository)
        seen_urls = set()
        while url:
            seen_urls.add(url)
            response = self.request("GET", url, scope=scope)
            self._raise_for(response, f"listing tags of {repository}", repository)
            what = f"the tag list of {repository} from {self.registry}"
            listing = _json_object(response.content, what)
            tags = _field(listing, "tags", list, what, "an array of strings") or []
            wrong = next((tag for tag in tags if not isinstance(tag, str)), None)
            if wrong is not None:
                raise RegistryProtocolError(f"{what} has a tag that is {_json_type(wrong)}: {wrong!r}")
            yield tags
            next_link = response.links.get("next", {}).get("url")
            url = urljoin(self.base_url + "/", next_link) if next_link else None
            if url and url.startswith(self.base_url):
                url = url[len(self.base_url) :]
            if url in seen_urls:
                raise RegistryError(f"registry {self.registry} sent a pagination loop at {url}")

    def list_tags(self, repository: str, page_size: int | None = None) -> list[str]:
        return [tag for page in self.iter_tag_pages(repository, page_size) for tag in page]

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The digest of the manifest (or index) a tag points to, by one HEAD request; None if absent."""
        response = self.request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            scope=self._pull_scope(repository),
            headers={"Accept": MANIFEST_ACCEPT},
        )
        if response.status_code == 404:
            return None
        self._raise_for(response, f"resolving {repository}:{reference}", repository)
        digest = self._digest_header(response, f"{repository}:{reference}")
        if not digest:
            # Not required of every registry on HEAD: fall back to hashing the manifest body.
            return self.get_manifest(repository, reference).digest
        return digest

    def _digest_header(self, response: httpx.Response, what: str) -> str | None:
        """The manifest digest the registry reports, if any; one that is not a sha256 digest is refused
        (it would name the image a release pins)."""
        digest = response.headers.get("Docker-Content-Digest")
        if digest and not is_digest(digest):
            raise RegistryProtocolError(
                f"registry {self.registry} sent Docker-Content-Digest {digest!r} for {what}, "
                "not a sha256 digest"
            )
        return digest

    def get_manifest(self, repository: str, reference: str) -> Manifest:
        response = self.request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            scope=self._pull_scope(repository),
            headers={"Accept": MANIFEST_ACCEPT},
        )
        self._raise_for(response, f"reading the manifest of {repository}:{reference}", repository)
        body = response.content
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        digest = self._digest_header(response, f"{repository}:{reference}") or sha256_digest(body)
        if not media_type or media_type == "application/json":
            what = f"the manifest of {repository}:{reference} ({digest})"
            media_type = _field(_json_object(body, what), "mediaType", str, what, "a string") or ""
        return Manifest(digest=digest, media_type=media_type, body=body)

    def get_blob(self, repository: str, digest: str) -> bytes:
        response = self.request("GET", f"/v2/{repository}/blobs/{digest}", scope=self._pull_scope(repository))
        self._raise_for(response, f"reading blob {digest} of {repository}", repository)
        if sha256_digest(response.content) != digest:
            raise RegistryError(f"blob {digest} of {repository} does not match its digest")
        return response.content

    def image_config(
        self,
        repository: str,
        reference: str,
        platform: tuple[str, str] = ("linux", "amd64"),
        manifest: Manifest | None = None,
    ) -> tuple[Manifest, dict[str, Any]]:
        """The manifest a reference points to (pass it if already read), and the image config (the
        platform's image, for an index)."""
        top = manifest or self.get_manifest(repository, reference)
        image = top
        if top.is_index:
            what = f"the index {repository}:{reference} ({top.digest})"
            entries = _field(top.json, "manifests", list, what, "an array of objects") or []
            if not all(
                isinstance(entry, dict)
                and isinstance(entry.get("platform") or {}, dict)
                and isinstance(entry.get("digest"), str)
                for entry in entries
            ):
                raise RegistryProtocolError(f"{what} lists a manifest that is not an object with a digest")
            wanted = [
                entry
                for entry in entries
                if (entry.get("platform") or {}).get("os") == platform[0]
                and (entry.get("platform") or {}).get("architecture") == platform[1]
            ]
            if not wanted:
                raise RegistryError(f"{repository}:{reference} has no {platform[0]}/{platform[1]} image")
            image = self.get_manifest(repository, wanted[0]["digest"])
        what = f"the manifest of {repository}:{reference} ({image.digest})"
        config = _field(image.json, "config", dict, what, "an object")
        if config is None or not isinstance(config.get("digest"), str):
            raise RegistryProtocolError(f"{what} has no config digest, so the image's config cannot be read")
        config_digest = config["digest"]
        blob = self.get_blob(repository, config_digest)
        return top, _json_object(blob, f"the image config {config_digest} of {repository}:{reference}")

    def image_created(self, repository: str, reference: str) -> tuple[str, datetime | None]:
        """(manifest digest, creation time or None): the manifest's `org.opencontainers.image.created`
        annotation when it has one (one request), else the image config's `created` (two or three)."""
        top = self.get_manifest(repository, reference)
        what = f"the manifest of {repository}:{reference} ({top.digest})"
        annotations = _field(top.json, "annotations", dict, what, "an object") or {}
        annotated = _field(annotations, CREATED_ANNOTATION, str, f"{what}'s annotations", "a string")
        if annotated and parse_created(annotated):
            return top.digest, parse_created(annotated)
        _, config = self.image_config(repository, reference, manifest=top)
        created = _field(config, "created", str, f"the image config of {repository}:{reference}", "a string")
        return top.digest, parse_created(created) if created else None

    # ------------------------------------------------------------------ writing

    def blob_exists(self, repository: str, digest: str) -> bool:
        response = self.request(
            "HEAD", f"/v2/{repository}/blobs/{digest}", scope=self._push_scope(repository)
        )
        if response.status_code == 404:
            return False
        self._raise_for(response, f"checking blob {digest} in {repository}", repository)
        return True

    def upload_blob(self, repository: str, digest: str, path: Path) -> bool:
        """Upload a blob from a file unless the registry has it; True if it was uploaded."""
        if self.blob_exists(repository, digest):
            return False
        scope = self._push_scope(repository)
        started = self.request("POST", f"/v2/{repository}/blobs/uploads/", scope=scope)
        self._raise_for(started, f"starting an upload to {repository}", repository)
        location = started.headers.get("Location")
        if not location:
            raise RegistryError(f"registry {self.registry} started an upload without a Location")
        location = urljoin(self.base_url + "/", location)
        separator = "&" if "?" in location else "?"
        data = path.read_bytes()
        response = self.request(
            "PUT",
            f"{location}{separator}{urlencode({'digest': digest})}",
            scope=scope,
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        self._raise_for(response, f"uploading blob {digest} to {repository}", repository)
        return True

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        """Store a manifest under a tag (or its digest); returns the digest the registry reports."""
        response = self.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scope=self._push_scope(repository),
            content=body,
            headers={"Content-Type": media_type},
        )
        self._raise_for(response, f"pushing {repository}:{reference}", repository)
        digest = response.headers.get("Docker-Content-Digest") or sha256_digest(body)
        if digest != sha256_digest(body):
            raise RegistryError(f"registry {self.registry} stored {repository}:{reference} as {digest}")
        return digest


def parse_created(value: str) -> datetime | None:
    """An RFC 3339 time from an image config (nanoseconds cut to microseconds); None if unreadable."""
    text = value.strip().replace("Z", "+00:00")
    match = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)", text)
    if not match:
        return None
    fraction = (match.group(2) or "")[:7]
    try:
        return datetime.fromisoformat(match.group(1) + fraction + (match.group(3) or "+00:00"))
    except ValueError:
        return None


def is_digest(value: str) -> bool:
    return bool(_DIGEST.fullmatch(value))
