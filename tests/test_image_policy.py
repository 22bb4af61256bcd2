"""Tag policy and the watch's decisions, against an in-memory registry answered through httpx's MockTransport.

The same decisions against a real registry are in test_image_sensor.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest

from hotpot_orchestration.platform.registry import OCI_MANIFEST, RegistryClient, sha256_digest
from hotpot_orchestration.release.image.policy import SemVer, TagPolicy, is_ignored
from hotpot_orchestration.release.image.watch import WatchState, evaluate


def test_semver_precedence():
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
    ]
    ordered += ["1.0.0-rc.1", "1.0.0", "1.0.1", "1.2.0", "1.10.0", "2.0.0"]
    parsed = [SemVer.parse(tag) for tag in ordered]
    assert parsed == sorted(parsed)
    assert SemVer.parse("v1.2.3") == SemVer.parse("1.2.3+build.5")
    for bad in ("1.2", "01.2.3", "1.2.3.4", "latest", "abc1234"):
        assert SemVer.parse(bad) is None


def test_ignored_tags():
    sig = "sha256-" + "a" * 64
    for tag in ("latest", f"{sig}.sig", f"{sig}.att", f"{sig}.sbom", sig):
        assert is_ignored(tag)
    assert not is_ignored("1.2.3") and not is_ignored("0123456789ab")


def test_semver_policy_ranks_and_filters():
    policy = TagPolicy(pattern=r"v?\d+\.\d+\.\d+(-.*)?", order="semver")
    tags = ["1.2.3", "v1.10.0", "1.11.0-rc.1", "latest", "0123456789ab", "1.9.9"]
    assert policy.rank_semver(tags) == ["v1.10.0", "1.9.9", "1.2.3"]
    with_pre = TagPolicy(pattern=r".*", order="semver", allow_prerelease=True)
    assert with_pre.rank_semver(tags)[0] == "1.11.0-rc.1"


def test_default_policy_takes_commit_tags_only():
    policy = TagPolicy()
    sig = "sha256-" + "b" * 64 + ".sig"
    assert policy.candidates(["latest", "0123456789ab", "1.2.3", sig, "deadbee", "feature-x"]) == [
        "0123456789ab",
        "deadbee",
    ]


def test_bad_policy_is_refused():
    with pytest.raises(ValueError, match="order"):
        TagPolicy(order="alphabetical")
    with pytest.raises(ValueError, match="regex"):
        TagPolicy(pattern="(")


def test_cursor_round_trip_and_garbage():
    state = WatchState(
        seen=["sha256:" + "1" * 64], created={"abc1234": 5}, resolved={"abc1234": "sha256:" + "1" * 64}
    )
    assert WatchState.from_cursor(state.to_cursor()) == state
    assert WatchState.from_cursor("not json") == WatchState()
    assert WatchState.from_cursor('{"v": 99}') == WatchState()
    assert WatchState.from_cursor(None) == WatchState()


class FakeRegistry:
    """Tags -> images with a creation time; answers tag lists (paged), HEAD/GET manifests and config blobs."""

    def __init__(self):
        self.images: dict[str, tuple[bytes, bytes]] = {}  # tag -> (manifest, config)
        self.requests: list[str] = []

    def push(self, tag: str, created: datetime | None, payload: str = "") -> str:
        config = json.dumps(
            {"created": created.isoformat() if created else None, "payload": payload or tag}
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"digest": sha256_digest(config)},
                "layers": [],
            }
        ).encode()
        self.images[tag] = (manifest, config)
        return sha256_digest(manifest)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        path = request.url.path
        if path.endswith("/tags/list"):
            tags = sorted(self.images)
            n, last = int(request.url.params.get("n", 1000)), request.url.params.get("last")
            rest = [t for t in tags if not last or t > last]
            headers = {"Link": f'<{path}?n={n}&last={rest[n - 1]}>; rel="next"'} if len(rest) > n else {}
            return httpx.Response(200, json={"tags": rest[:n]}, headers=headers)
        if "/manifests/" in path:
            reference = path.rsplit("/", 1)[1]
            for manifest, _ in self.images.values():
                if reference == sha256_digest(manifest):
                    break
            else:
                if reference not in self.images:
                    return httpx.Response(404)
                manifest = self.images[reference][0]
            headers = {"Docker-Content-Digest": sha256_digest(manifest), "Content-Type": OCI_MANIFEST}
            return httpx.Response(200, content=b"" if request.method == "HEAD" else manifest, headers=headers)
        if "/blobs/" in path:
            digest = path.rsplit("/", 1)[1]
            for _, config in self.images.values():
                if sha256_digest(config) == digest:
                    return httpx.Response(200, content=config)
        return httpx.Response(404)

    def client(self, page_size: int = 100) -> RegistryClient:
        return RegistryClient(
            "127.0.0.1:5000", transport=httpx.MockTransport(self.handler), page_size=page_size
        )


def at(hour: int) -> datetime:
    return datetime(2026, 1, 1, hour, tzinfo=UTC)


def test_semver_watch_costs_pages_plus_one_head_per_new_winner():
    fake = FakeRegistry()
    for i in range(250):
        fake.push(f"1.0.{i}", None)
    policy = TagPolicy(pattern=r".*", order="semver")
    client = fake.client(page_size=100)
    first = evaluate(client, "team/api", policy, WatchState())
    assert first.candidate.tag == "1.0.249"
    assert first.requests == 3 + 1  # three pages, one HEAD for the winner
    again = evaluate(client, "team/api", policy, first.state)
    assert again.candidate is None and "already proposed" in again.skip_reason
    assert again.requests == 3  # the winner's digest is remembered (immutable tags)
    mutable = evaluate(client, "team/api", policy, first.state, immutable_tags=False)
    assert mutable.requests == 4
    fake.push("1.1.0", None)
    third = evaluate(client, "team/api", policy, again.state)
    assert third.candidate.tag == "1.1.0" and third.requests == 3 + 1


def test_created_watch_reads_each_tag_once_and_picks_the_newest_build():
    fake = FakeRegistry()
    fake.push("aaaaaaa", at(3))
    fake.push("bbbbbbb", at(1))
    newest = fake.push("ccccccc", at(5))
    client = fake.client()
    first = evaluate(client, "team/api", TagPolicy(), WatchState())
    assert first.candidate.tag == "ccccccc" and first.candidate.digest == newest
    assert first.requests == 1 + 3 * 2  # one page; manifest and config of each tag
    assert first.candidate.created == int(at(5).timestamp())
    fake.push("ddddddd", at(2))  # an older build pushed later is not newer
    second = evaluate(client, "team/api", TagPolicy(), first.state)
    assert second.candidate is None and second.requests == 1 + 2
    fake.push("eeeeeee", at(9))
    third = evaluate(client, "team/api", TagPolicy(), second.state)
    assert third.candidate.tag == "eeeeeee" and third.requests == 1 + 2


def test_same_digest_under_two_tags_is_one_release():
    fake = FakeRegistry()
    fake.push("1.0.0", None, payload="same")
    first = evaluate(fake.client(), "team/api", TagPolicy(r".*", "semver"), WatchState())
    fake.images["v1.0.0"] = fake.images["1.0.0"]  # v1.0.0 outranks 1.0.0 by name, same image
    second = evaluate(fake.client(), "team/api", TagPolicy(r".*", "semver"), first.state)
    assert first.candidate is not None and second.candidate is None
    assert "already proposed" in second.skip_reason


def test_production_digest_is_never_proposed():
    fake = FakeRegistry()
    digest = fake.push("1.0.0", None)
    result = evaluate(
        fake.client(), "team/api", TagPolicy(r".*", "semver"), WatchState(), production_digest=digest
    )
    assert result.candidate is None and "already in production" in result.skip_reason


def test_skip_reasons_for_empty_unmatched_and_missing_repositories():
    fake = FakeRegistry()
    fake.push("latest", None)
    result = evaluate(fake.client(), "team/api", TagPolicy(), WatchState())
    assert result.candidate is None and "no tag of 127.0.0.1:5000/team/api matches" in result.skip_reason

    def missing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"errors": [{"code": "NAME_UNKNOWN"}]})

    client = RegistryClient("127.0.0.1:5000", transport=httpx.MockTransport(missing))
    assert "has no images yet" in evaluate(client, "team/api", TagPolicy(), WatchState()).skip_reason


def test_created_order_resolves_a_bounded_batch_per_tick():
    fake = FakeRegistry()
    for i in range(30):
        fake.push(f"{i:07x}", at(i % 24))
    client = fake.client()
    first = evaluate(client, "team/api", TagPolicy(), WatchState(), max_new_per_tick=20)
    assert first.candidate is None and "20 of 30" in first.skip_reason
    second = evaluate(client, "team/api", TagPolicy(), first.state, max_new_per_tick=20)
    assert second.candidate is not None and second.requests == 1 + 10 * 2
