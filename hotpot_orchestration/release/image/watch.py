"""One evaluation of the new-image-tag watch: list tags, pick the newest candidate, decide to release it.

Plain Python with a cursor of its own (JSON), so `new_image_tag_sensor` stays a thin wrapper:
- the cursor remembers the digests already proposed (dedupe by digest: two tags of one image are one
  release), the creation time of every tag it has read (commit tags are immutable, so a time is read once),
  and the digest of the last winner;
- the digest running in production is never proposed;
- a registry that is down, a repository with no images yet, or a malformed answer (bad JSON, wrong types,
  a manifest without config) gives a reason to skip naming what was wrong, never an exception.

Requests per tick: one per page of tags, plus, for the `semver` order, one HEAD when the winning tag is new
(or on every tick if tags are declared mutable); for the `created` order, one manifest read for every tag
never seen before when the manifest carries the `org.opencontainers.image.created` annotation (as images
built by `api_image` do), plus a config read when it does not (resolved in parallel, at most
`max_new_per_tick` per tick).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from hotpot_orchestration.platform.registry import (
    RegistryClient,
    RegistryError,
    RegistryProtocolError,
    RegistryUnavailable,
    RepositoryNotFound,
)
from hotpot_orchestration.release.image.policy import TagPolicy

CURSOR_VERSION = 1
MAX_SEEN = 200


@dataclass
class WatchState:
    seen: list[str] = field(default_factory=list)  # digests proposed, oldest first
    created: dict[str, int] = field(default_factory=dict)  # tag -> image creation time (epoch seconds)
    resolved: dict[str, str] = field(default_factory=dict)  # tag -> digest, for the last winner only

    @classmethod
    def from_cursor(cls, cursor: str | None) -> WatchState:
        if not cursor:
            return cls()
        try:
            data = json.loads(cursor)
        except ValueError:
            return cls()
        if not isinstance(data, dict) or data.get("v") != CURSOR_VERSION:
            return cls()
        return cls(
            seen=[str(d) for d in data.get("seen", [])],
            created={str(t): int(c) for t, c in (data.get("created") or {}).items()},
            resolved={str(t): str(d) for t, d in (data.get("resolved") or {}).items()},
        )

    def to_cursor(self) -> str:
        data = {"v": CURSOR_VERSION, "seen": self.seen[-MAX_SEEN:], "resolved": self.resolved}
        if self.created:
            data["created"] = self.created
        return json.dumps(data, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class Candidate:
    tag: str
    digest: str
    created: int | None = None  # epoch seconds, for the `created` order


@dataclass(frozen=True)
class WatchResult:
    state: WatchState
    candidate: Candidate | None = None  # a new release to start
    skip_reason: str | None = None
    requests: int = 0


def _resolve_created(client: RegistryClient, repository: str, tag: str) -> tuple[str, str | None, int]:
    digest, created = client.image_created(repository, tag)
    return tag, digest, int(created.timestamp()) if created else 0


def evaluate(
    client: RegistryClient,
    repository: str,
    policy: TagPolicy,
    state: WatchState,
    production_digest: str | None = None,
    *,
    immutable_tags: bool = True,
    max_new_per_tick: int = 1000,
    workers: int = 8,
) -> WatchResult:
    start_requests = client.requests_sent
    state = WatchState(list(state.seen), dict(state.created), dict(state.resolved))

    def skip(reason: str) -> WatchResult:
        return WatchResult(state, None, reason, client.requests_sent - start_requests)

    where = f"{client.registry}/{repository}"
    try:
        tags = client.list_tags(repository)
        winner_digest: str | None = None
        if policy.order == "semver":
            ranked = policy.rank_semver(tags)
            if not ranked:
                return skip(f"no tag of {where} matches /{policy.pattern}/ as a semantic version")
            best, best_created = ranked[0], None
        else:
            candidates = policy.candidates(tags)
            if not candidates:
                return skip(f"no tag of {where} matches /{policy.pattern}/")
            present = set(candidates)
            state.created = {tag: time for tag, time in state.created.items() if tag in present}
            unknown = [tag for tag in candidates if tag not in state.created]
            batch, fresh_digests = unknown[:max_new_per_tick], {}
            if batch:
                with ThreadPoolExecutor(max_workers=max(1, min(workers, len(batch)))) as pool:
                    for tag, digest, created in pool.map(
                        lambda t: _resolve_created(client, repository, t), batch
                    ):
                        state.created[tag], fresh_digests[tag] = created, digest
            if len(unknown) > len(batch):
                return skip(
                    f"read the creation time of {len(state.created)} of {len(candidates)} tags of {where} so"
                    " far; the newest is chosen once all are known"
                )
            best = max(candidates, key=lambda tag: (state.created[tag], tag))
            best_created = state.created[best]
            winner_digest = fresh_digests.get(best)
        if winner_digest is None and immutable_tags:
            winner_digest = state.resolved.get(best)
        if winner_digest is None:
            winner_digest = client.manifest_digest(repository, best)
            if winner_digest is None:
                return skip(f"{where}:{best} disappeared while the tags were read")
        state.resolved = {best: winner_digest}
    except RepositoryNotFound:
        return skip(f"{where} has no images yet")
    except RegistryUnavailable as error:
        return skip(f"registry unavailable: {error}")
    except RegistryProtocolError as error:
        return skip(f"malformed answer from the registry: {error}")
    except RegistryError as error:
        return skip(f"registry error: {error}")

    if winner_digest == production_digest:
        return skip(f"newest candidate {best} ({winner_digest}) is already in production")
    if winner_digest in state.seen:
        return skip(f"newest candidate {best} ({winner_digest}) was already proposed")
    state.seen.append(winner_digest)
    state.seen = state.seen[-MAX_SEEN:]
    return WatchResult(
        state, Candidate(best, winner_digest, best_created), None, client.requests_sent - start_requests
    )
