"""Types shared by the classifier and its format readers (archives, office, pdf).

The readers never call each other: they report findings and hand the objects they find inside
(archive members, embedded files, object streams) back to the walker, which classifies them with
the same rules, at depth + 1, against the same budget.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.mime.names import BIDI_CONTROLS
from gateway.sanitize.profile import MailProfile


def show(name: str) -> str:
    """A name for a reason or log line: bidi and control characters spelled out, never applied."""
    out = []
    for ch in name[:300]:
        if ch in BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Cf"):
            out.append(f"<U+{ord(ch):04X}>")
        else:
            out.append(ch)
    return "".join(out) + ("…" if len(name) > 300 else "")


@dataclass(frozen=True)
class Finding:
    category: str  # one of CATEGORIES
    reason: str  # human readable, names where it was found: "PE32 executable at invoice.zip/setup.exe"


class LimitHit(Exception):
    """An inspection limit was reached: the rest of the part is not inspected (category "limit")."""


class Uninspectable(Exception):
    """The content cannot be inspected (corrupt, unsupported or encrypted container)."""


class Budget:
    """What one part may cost to inspect, shared by every nested container in it."""

    def __init__(self, profile: MailProfile) -> None:
        self.bytes_left = profile.archive_max_total_bytes
        self.members_left = profile.archive_max_members
        self.max_depth = profile.archive_max_depth
        self.max_ratio = profile.archive_max_ratio

    def take_bytes(self, n: int, where: str) -> None:
        self.bytes_left -= n
        if self.bytes_left < 0:
            raise LimitHit(f"more than archive_max_total_bytes decompressed (at {where})")

    def take_member(self, where: str) -> None:
        self.members_left -= 1
        if self.members_left < 0:
            raise LimitHit(f"more than archive_max_members members (at {where})")

    def enter(self, depth: int, where: str) -> None:
        """Opening a container whose members will be at `depth`."""
        if depth > self.max_depth:
            raise LimitHit(f"containers nested deeper than archive_max_depth={self.max_depth} (at {where})")


# Below this many decompressed bytes a high ratio is not a bomb (a small text of one repeated
# line compresses several hundred to one).
RATIO_FLOOR = 1 << 20


def check_ratio(out: int, compressed: int, budget: Budget, where: str) -> None:
    if out > RATIO_FLOOR and out > budget.max_ratio * max(compressed, 1):
        raise LimitHit(f"compression ratio above archive_max_ratio={budget.max_ratio} (at {where})")


class Walker(Protocol):
    """What a format reader may ask of the classifier walking a part."""

    budget: Budget

    def add(self, finding: Finding) -> None:
        """Record a finding."""

    def member(self, data: bytes, names: Sequence[str], where: str, depth: int, *, allowlist: bool = True) -> None:
        """Classify an object found inside a container. `names` are what a user would see (checked
        for name tricks; empty if none); `allowlist`: whether its type must be allowed by the profile
        (archive members and embedded files: yes; internal parts of an Office document: no, only
        their active content counts)."""
