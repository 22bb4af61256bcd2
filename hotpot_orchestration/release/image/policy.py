"""Which registry tags are release candidates, and which one is the newest (as Flux's ImagePolicy does).

A policy is a regex that a tag must match in full, and an order:
- `semver`: the highest semantic version (`1.2.3`, `v1.2.3`, `1.2.3-rc.1`; pre-releases only if allowed).
  Ordering needs nothing but the tag names, so only the winner is resolved to a digest.
- `created`: the image built last, by the `created` time of its image config. This needs the config of each
  candidate, so resolved times are remembered by the caller (commit tags are immutable) and only tags never
  seen before cost requests.
`latest` and signature/attestation tags (`sha256-<hex>.sig`, `.att`, `.sbom`, and the bare `sha256-<hex>`
referrers fallback) are never candidates, whatever the regex.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

ORDERS = ("semver", "created")
COMMIT_TAGS = r"[0-9a-f]{7,40}"
_IGNORED = re.compile(r"latest|sha256-[0-9a-f]{64}(\.[A-Za-z0-9_.-]+)?")
_SEMVER = re.compile(
    r"v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)


@total_ordering
@dataclass(frozen=True)
class SemVer:
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()

    @classmethod
    def parse(cls, tag: str) -> SemVer | None:
        match = _SEMVER.fullmatch(tag)
        if not match:
            return None
        pre = tuple(match.group(4).split(".")) if match.group(4) else ()
        return cls(int(match.group(1)), int(match.group(2)), int(match.group(3)), pre)

    def _key(self):
        # SemVer 2.0 precedence: a release outranks its pre-releases; numeric identifiers rank below
        # alphanumeric ones and compare as numbers.
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, not self.prerelease, pre)

    def __lt__(self, other: SemVer) -> bool:
        return self._key() < other._key()


def is_ignored(tag: str) -> bool:
    return bool(_IGNORED.fullmatch(tag))


@dataclass(frozen=True)
class TagPolicy:
    pattern: str = COMMIT_TAGS
    order: str = "created"
    allow_prerelease: bool = False

    def __post_init__(self):
        if self.order not in ORDERS:
            raise ValueError(f"tag order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        try:
            re.compile(self.pattern)
        except re.error as error:
            raise ValueError(f"tag pattern {self.pattern!r} is not a valid regex: {error}") from None

    def matches(self, tag: str) -> bool:
        if is_ignored(tag) or not re.fullmatch(self.pattern, tag):
            return False
        if self.order == "semver":
            version = SemVer.parse(tag)
            return version is not None and (self.allow_prerelease or not version.prerelease)
        return True

    def candidates(self, tags: list[str]) -> list[str]:
        return [tag for tag in tags if self.matches(tag)]

    def rank_semver(self, tags: list[str]) -> list[str]:
        """Candidates, highest version first (ties, like `1.2.3` and `v1.2.3`, by name for a stable order)."""
        chosen = self.candidates(tags)
        return sorted(chosen, key=lambda tag: (SemVer.parse(tag), tag), reverse=True)
