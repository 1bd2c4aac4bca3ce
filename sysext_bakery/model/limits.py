"""How much one source's archive may write into the tree: the defence against decompression
bombs (a 24 MB download that unpacks to 5 GB). A recipe's `[limits]` table raises these for
tools that really are large."""
from __future__ import annotations

import re
from dataclasses import dataclass

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
_UNITS = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB}
_SIZE = re.compile(r"(\d{1,15})\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)
MAX_RATIO = 1_000_000
# Below this much output the ratio is not enforced: small, very compressible files (a
# script, a sparse config) legitimately reach ratios of 1000:1 and fill no disk.
RATIO_FLOOR = 64 * MiB


@dataclass(frozen=True)
class ArchiveLimits:
    unpacked: int = 2 * GiB   # bytes written from one source, all members together
    member: int = 1 * GiB     # bytes written for one member (each copy of it counts)
    ratio: int = 200          # bytes written per byte of the download, once past RATIO_FLOOR


DEFAULT = ArchiveLimits()


def parse_size(text: str) -> int | None:
    """`"8G"`, `"512M"`, `"2GiB"`, `"4096"` (bytes) -> bytes (binary units); None if malformed."""
    m = _SIZE.fullmatch(text.strip())
    return int(m.group(1)) * _UNITS[m.group(2).upper()] if m else None


def size_problem(text: str) -> str | None:
    size = parse_size(text)
    if size is None:
        return f"{text!r} is not a size like \"8G\" or \"512M\" (binary units K, M, G, T)"
    return None if size > 0 else f"{text!r}: a size must be above zero"


def ratio_problem(value: int) -> str | None:
    return None if 1 <= value <= MAX_RATIO else f"ratio {value} must be between 1 and {MAX_RATIO}"


def from_table(table: dict) -> ArchiveLimits:
    """A recipe's validated `[limits]` table as limits. Raising `unpacked` alone raises the
    per-member limit with it: a large tool is usually large because of one big file."""
    unpacked = parse_size(table["unpacked"]) if "unpacked" in table else DEFAULT.unpacked
    member = parse_size(table["member"]) if "member" in table else \
        unpacked if "unpacked" in table else DEFAULT.member
    return ArchiveLimits(unpacked=unpacked, member=member, ratio=table.get("ratio", DEFAULT.ratio))


def show(size: int) -> str:
    """A byte count the way a recipe would write it."""
    for unit in ("T", "G", "M", "K"):
        if size >= _UNITS[unit] and size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]} {unit}iB"
    return f"{size} bytes"
