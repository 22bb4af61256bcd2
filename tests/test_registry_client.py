"""The registry client against scripted HTTP answers (httpx's MockTransport): auth, pagination, backoff.

The same client is exercised against a real `docker-registry` in test_registry_live.py and test_image_*.py.
"""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from hotpot_orchestration.platform.registry import (
    MANIFEST_ACCEPT,
    OCI_MANIFEST,
    RegistryAuthError,
    RegistryClient,
    RegistryError,
    RegistryProtocolError,
    RegistryUnavailable,
    RepositoryNotFound,
    is_loopback,
    parse_challenge,
    parse_created,
    sha256_digest,
)

DIGEST = "sha256:" + "ab" * 32


def client(handler, registry="127.0.0.1:5000", **kwargs) -> tuple[RegistryClient, list[float]]:
    sleeps: list[float] = []
    kwargs.setdefault("backoff_initial", 0.01)
    return RegistryClient(
        registry, transport=httpx.MockTransport(handler), sleep=sleeps.append, **kwargs
    ), sleeps


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_loopback_and_scheme_rules():
    assert is_loopback("127.0.0.1:5000") and is_loopback("localhost") and is_loopback("[::1]:5000")
    assert is_loopback("127.3.4.5")
    assert not is_loopback("registry.example.com:5000") and not is_loopback("10.0.0.1")
    assert RegistryClient("127.0.0.1:5000").base_url == "http://127.0.0.1:5000"
    assert RegistryClient("registry.example.com").base_url == "https://registry.example.com"
    assert RegistryClient("registry.example.com", plain_http=True).base_url == "http://registry.example.com"
    assert RegistryClient("localhost:5000", plain_http=False).base_url == "https://localhost:5000"
    with pytest.raises(ValueError, match="HOST"):
        RegistryClient("https://registry.example.com")
    with pytest.raises(ValueError, match="both"):
        RegistryClient("localhost:5000", username="alice")


def test_parse_challenge_keeps_commas_inside_quotes():
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:team/api:pull,push"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example.com/token",
        "service": "registry.example.com",
        "scope": "repository:team/api:pull,push",
    }
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})


def test_parse_created_handles_nanoseconds_and_zones():
    assert parse_created("2024-05-01T10:00:00.123456789Z").isoformat() == "2024-05-01T10:00:00.123456+00:00"
    assert parse_created("2024-05-01T10:00:00+02:00").utcoffset().total_seconds() == 7200
    assert parse_created("yesterday") is None


def test_tag_listing_follows_link_pagination_one_request_per_page():
    tags = [f"t{i:03d}" for i in range(25)]
    seen_urls = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen_urls.append(str(request.url))
        n = int(request.url.params["n"])
        last = request.url.params.get("last")
        start = tags.index(last) + 1 if last else 0
        page = tags[start : start + n]
        headers = {}
        if start + n < len(tags):
            headers["Link"] = f'</v2/team/api/tags/list?n={n}&last={page[-1]}>; rel="next"'
        return httpx.Response(200, json={"name": "team/api", "tags": page}, headers=headers)

    registry, _ = client(handler)
    pages = list(registry.iter_tag_pages("team/api", page_size=10))
    assert [len(page) for page in pages] == [10, 10, 5]
    assert registry.list_tags("team/api", page_size=10) == tags
    assert registry.requests_sent == 6
    assert seen_urls[1] == "http://127.0.0.1:5000/v2/team/api/tags/list?n=10&last=t009"


def test_absolute_link_and_empty_repository():
    def handler(request: httpx.Request) -> httpx.Response:
        if "last" in request.url.params:
            return httpx.Response(200, json={"name": "team/api", "tags": None})
        link = '<http://127.0.0.1:5000/v2/team/api/tags/list?last=a&n=1>; rel="next"'
        return httpx.Response(200, json={"name": "team/api", "tags": ["a"]}, headers={"Link": link})

    registry, _ = client(handler)
    assert registry.list_tags("team/api", page_size=1) == ["a"]


def test_missing_repository_is_its_own_error():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            404, json={"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known"}]}
        )

    registry, _ = client(handler)
    with pytest.raises(RepositoryNotFound, match="team/api"):
        registry.list_tags("team/api")


def test_manifest_digest_by_head_with_every_manifest_media_type():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "HEAD"
        assert request.headers["Accept"] == MANIFEST_ACCEPT
        for media_type in (
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        ):
            assert media_type in request.headers["Accept"]
        if request.url.path.endswith("/missing"):
            return httpx.Response(404)
        return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})

    registry, _ = client(handler)
    assert registry.manifest_digest("team/api", "1.2.3") == DIGEST
    assert registry.manifest_digest("team/api", "missing") is None
    assert registry.requests_sent == 2


def test_basic_auth_after_challenge_then_sent_up_front():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") != basic("alice", "pw"):
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="Registry Realm"'})
        return httpx.Response(200, json={"tags": ["a"]})

    registry, _ = client(handler, username="alice", password="pw")
    assert registry.list_tags("team/api") == ["a"]
    assert registry.requests_sent == 2  # the challenge, then the answer
    assert registry.list_tags("team/api") == ["a"]
    assert registry.requests_sent == 3  # credentials now go with the first request


def test_basic_auth_errors_are_clear():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="Registry Realm"'})

    anonymous, _ = client(handler)
    with pytest.raises(RegistryAuthError, match="requires a username and password"):
        anonymous.list_tags("team/api")
    wrong, _ = client(handler, username="alice", password="nope")
    with pytest.raises(RegistryAuthError, match="refused the username and password"):
        wrong.list_tags("team/api")


def test_bearer_token_through_the_challenge_and_cached_per_scope():
    token_requests = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example.com":
            token_requests.append(dict(request.url.params))
            assert request.headers["Authorization"] == basic("alice", "pw")
            return httpx.Response(200, json={"token": "T-" + request.url.params["scope"], "expires_in": 300})
        scope = f"repository:{request.url.path.split('/')[2]}/{request.url.path.split('/')[3]}:pull"
        if request.headers.get("Authorization") != f"Bearer T-{scope}":
            challenge = f'Bearer realm="https://auth.example.com/token",service="reg",scope="{scope}"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})

    registry, _ = client(handler, registry="registry.example.com", username="alice", password="pw")
    assert registry.manifest_digest("team/api", "v1") == DIGEST
    assert token_requests == [{"service": "reg", "scope": "repository:team/api:pull"}]
    assert registry.requests_sent == 3  # 401, token, retry
    assert registry.manifest_digest("team/api", "v2") == DIGEST
    assert registry.requests_sent == 4  # token reused
    assert registry.manifest_digest("team/web", "v1") == DIGEST
    assert registry.requests_sent == 6  # new scope: token fetched up front, no 401 round trip
    assert len(token_requests) == 2


def test_anonymous_bearer_token():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            assert "Authorization" not in request.headers
            return httpx.Response(200, json={"access_token": "anon"})
        if request.headers.get("Authorization") != "Bearer anon":
            return httpx.Response(
                401, headers={"WWW-Authenticate": 'Bearer realm="https://registry.example.com/token"'}
            )
        return httpx.Response(200, json={"tags": ["x"]})

    registry, _ = client(handler, registry="registry.example.com")
    assert registry.list_tags("team/api") == ["x"]


def test_refused_token_is_an_auth_error():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return httpx.Response(401)
        return httpx.Response(
            401, headers={"WWW-Authenticate": 'Bearer realm="https://registry.example.com/token"'}
        )

    registry, _ = client(handler, registry="registry.example.com", username="alice", password="bad")
    with pytest.raises(RegistryAuthError, match="refused the credentials"):
        registry.list_tags("team/api")


@pytest.mark.parametrize(
    ("token_answer", "expected"),
    [
        (httpx.Response(200, text="<html>sign in</html>"), "the answer of token service https://"),
        (httpx.Response(200, json={"token": 42}), "has 'token' as a number, expected a string"),
        (httpx.Response(200, json={"token": "T", "expires_in": "soon"}), "has 'expires_in' as a string"),
    ],
)
def test_a_malformed_token_answer_is_a_protocol_error(token_answer, expected):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return token_answer
        return httpx.Response(
            401, headers={"WWW-Authenticate": 'Bearer realm="https://registry.example.com/token"'}
        )

    registry, _ = client(handler, registry="registry.example.com")
    with pytest.raises(RegistryProtocolError, match=expected):
        registry.list_tags("team/api")


def test_an_error_body_not_in_the_apis_shape_still_gives_the_status():
    registry, _ = client(lambda request: httpx.Response(400, json={"errors": {"code": "X"}}))
    with pytest.raises(RegistryError, match="answered HTTP 400"):
        registry.list_tags("team/api")


def test_backoff_on_429_and_5xx_honours_retry_after():
    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "2"}),
            httpx.Response(503),
            httpx.Response(502),
            httpx.Response(200, json={"tags": ["a"]}),
        ]
    )
    registry, sleeps = client(lambda request: next(answers))
    assert registry.list_tags("team/api") == ["a"]
    assert registry.requests_sent == 4
    assert sleeps[0] == 2.0
    assert len(sleeps) == 3 and all(0 < seconds <= 10 for seconds in sleeps)


def test_persistent_5xx_and_connection_errors_give_unavailable():
    registry, sleeps = client(lambda request: httpx.Response(500), max_attempts=3)
    with pytest.raises(RegistryUnavailable, match="after 3 attempts: HTTP 500"):
        registry.list_tags("team/api")
    assert registry.requests_sent == 3 and len(sleeps) == 2

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    down, _ = client(refuse, max_attempts=2)
    with pytest.raises(RegistryUnavailable, match="connection refused"):
        down.manifest_digest("team/api", "latest")


def test_real_port_with_nothing_listening_is_unavailable():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    registry = RegistryClient(f"127.0.0.1:{port}", max_attempts=2, backoff_initial=0.01)
    with pytest.raises(RegistryUnavailable, match=f"127.0.0.1:{port}"):
        registry.manifest_digest("team/api", "latest")


def test_image_config_of_an_index_picks_the_platform():
    config = json.dumps({"created": "2024-01-02T03:04:05Z", "architecture": "amd64"}).encode()
    image = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"digest": sha256_digest(config)},
            "layers": [],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"digest": "sha256:" + "00" * 32, "platform": {"os": "linux", "architecture": "arm64"}},
                {"digest": sha256_digest(image), "platform": {"os": "linux", "architecture": "amd64"}},
            ],
        }
    ).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/manifests/v1"):
            return httpx.Response(
                200, content=index, headers={"Content-Type": "application/vnd.oci.image.index.v1+json"}
            )
        if path.endswith("/manifests/" + sha256_digest(image)):
            return httpx.Response(200, content=image, headers={"Content-Type": OCI_MANIFEST})
        if path.endswith("/blobs/" + sha256_digest(config)):
            return httpx.Response(200, content=config)
        return httpx.Response(404)

    registry, _ = client(handler)
    digest, created = registry.image_created("team/api", "v1")
    assert digest == sha256_digest(index)
    assert created.isoformat() == "2024-01-02T03:04:05+00:00"
    assert registry.requests_sent == 3


def test_creation_time_from_the_manifest_annotation_costs_one_request():
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"digest": "sha256:" + "cd" * 32},
            "layers": [],
            "annotations": {"org.opencontainers.image.created": "2026-02-03T04:05:06Z"},
        }
    ).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        assert "/manifests/" in request.url.path  # the config blob is never needed
        return httpx.Response(200, content=manifest, headers={"Content-Type": OCI_MANIFEST})

    registry, _ = client(handler)
    digest, created = registry.image_created("team/api", "abc1234")
    assert digest == sha256_digest(manifest) and created.isoformat() == "2026-02-03T04:05:06+00:00"
    assert registry.requests_sent == 1
