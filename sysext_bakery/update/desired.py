"""The desired state, `release/versions.toml` (hand-edited): per recipe which upstream versions
`doit update` pins and how many stay pinned. Loading checks every key and names it; `resolve`
is the pure rule that turns what upstream offers plus what is pinned into adds and drops.

    [docker]
    streams = 2              # the newest version of each of the 2 newest streams (majors)
    keep-per-stream = 1      # retention: pinned versions kept per stream (default 1 with streams)
    keep-streams = 2         # retention: streams kept pinned (default: `streams`)
    keep = 6                 # retention: pinned versions kept in all (default: no limit;
                             #   with "latest" and no streams: the newest + the exact versions)
    versions = ["24.0.9"]    # exact versions carried too (never dropped); "latest": the newest
    hold = ["28"]            # never pin these versions, or any version of these streams
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sysext_bakery.errors import BakeryError
from sysext_bakery.inputs import brief, brief_key, read_toml
from sysext_bakery.model.version import (same_version_groups, same_version_phrase, stream_of,
                                         version_key, version_problem)

VERSIONS = "release/versions.toml"    # relative to the project root; how messages name it
LATEST = "latest"
KEYS = ("versions", "streams", "keep", "keep-per-stream", "keep-streams", "hold")
HINT = "see docs/ci.md, 'What to carry: release/versions.toml'"


@dataclass(frozen=True)
class Desired:
    """One recipe's entry. `None` limits mean "no limit"."""
    name: str
    versions: tuple[str, ...] = ()          # exact versions and/or "latest"
    streams: int | None = None              # the newest N streams
    keep: int | None = None
    keep_per_stream: int | None = None
    keep_streams: int | None = None
    hold: tuple[str, ...] = ()

    @property
    def exact(self) -> tuple[str, ...]:
        return tuple(v for v in self.versions if v != LATEST)

    @property
    def discovers(self) -> bool:
        """Whether resolving needs upstream's list (exact versions alone do not)."""
        return self.streams is not None or LATEST in self.versions


@dataclass(frozen=True)
class Resolution:
    add: tuple[str, ...]                    # newest first
    drop: tuple[str, ...]
    keep: tuple[str, ...]                   # pinned and staying
    why_dropped: dict[str, str]


def load(path: Path, shown: str = VERSIONS) -> dict[str, Desired]:
    """recipe name -> its entry; a missing file means nothing is tracked. Raises BakeryError
    naming the file and the key."""
    if not path.exists():
        return {}
    data = read_toml(path, shown, HINT)
    return {name: parse_entry(name, entry, shown) for name, entry in data.items()}


def parse_entry(name: str, entry: Any, shown: str) -> Desired:
    where = f"{shown}: {brief_key(name)}"
    if not isinstance(entry, dict):
        raise BakeryError(f"{where}: expected a table [{brief_key(name)}]", HINT)
    for key in entry:
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            raise BakeryError(f"{where}.{brief_key(key)}: unknown key" + (f" (did you mean {close[0]!r}?)" if close else ""),
                              f"known keys: {', '.join(KEYS)}; {HINT}")
    lists = {}
    for key in ("versions", "hold"):
        value = entry.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BakeryError(f"{where}.{key}: expected a list of strings, e.g. [\"1.2.3\"]", HINT)
        for v in value:
            if v != LATEST and (problem := version_problem(v)):
                raise BakeryError(f"{where}.{key}: {problem}", HINT)
        for same in same_version_groups([v for v in value if v != LATEST]):
            raise BakeryError(f"{where}.{key}: {same_version_phrase(same)}",
                              "list one spelling: systemd-sysupdate could not order the two images")
        lists[key] = tuple(value)
    if LATEST in lists["hold"]:
        raise BakeryError(f"{where}.hold: \"latest\" cannot be held", "name versions or streams")
    ints = {}
    for key in ("streams", "keep", "keep-per-stream", "keep-streams"):
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise BakeryError(f"{where}.{key}: expected a whole number >= 1, got {brief(value)}", HINT)
        ints[key] = value
    if not lists["versions"] and ints["streams"] is None:
        raise BakeryError(f"{where}: says nothing to carry",
                          "set streams = N, or versions = [\"latest\"] or exact versions; " + HINT)
    streams = ints["streams"]
    # with "latest" and no streams, retention defaults to the newest plus the exact versions
    latest_only = LATEST in lists["versions"] and streams is None
    exact = len(set(lists["versions"]) - {LATEST})
    return Desired(
        name=name, versions=lists["versions"], streams=streams,
        keep=ints["keep"] if ints["keep"] is not None else (1 + exact if latest_only else None),
        keep_per_stream=ints["keep-per-stream"] if ints["keep-per-stream"] is not None
        else (1 if streams else None),
        keep_streams=ints["keep-streams"] if ints["keep-streams"] is not None else streams,
        hold=lists["hold"])


def check_recipe(want: Desired, policy: str, shown: str = VERSIONS) -> None:
    """Cross-check an entry with its recipe's `streams` policy."""
    if policy == "none" and (want.streams or want.keep_per_stream or want.keep_streams):
        key = "streams" if want.streams else "keep-per-stream" if want.keep_per_stream else "keep-streams"
        raise BakeryError(f"{shown}: {want.name}.{key}: recipes/{want.name}.toml has no streams "
                          "(streams = \"none\")",
                          "set streams = \"major\" or \"minor\" in the recipe, or carry "
                          "versions = [\"latest\"] here")


def resolve(want: Desired, offered: tuple[str, ...], pinned: tuple[str, ...],
            policy: str) -> Resolution:
    """What to pin and what to drop. `offered` is upstream's list, newest first.

    Targets: the exact versions, the newest offered ("latest") and the newest of each of the
    newest `streams` streams, held versions and streams left out. Targets and exact versions
    are never dropped; other pins are kept per the retention limits, newest first."""
    def stream(v: str) -> str:
        return stream_of(v, policy) or ""

    held = set(want.hold)
    usable = [v for v in offered if v not in held and stream(v) not in held]
    targets: list[str] = list(want.exact)
    if LATEST in want.versions and usable:
        targets.append(usable[0])
    if want.streams:
        seen: list[str] = []
        for v in usable:
            if stream(v) not in seen:
                seen.append(stream(v))
                if len(seen) > want.streams:
                    break
                targets.append(v)
    protected = set(targets)
    newest_first = sorted(set(pinned) | protected, key=version_key, reverse=True)
    why: dict[str, str] = {}
    order: list[str] = []                       # streams, by their newest version
    count: dict[str, int] = {}
    kept: list[str] = []
    for v in newest_first:
        s = stream(v)
        if s not in order:
            order.append(s)
        if v in protected:
            kept.append(v)
            count[s] = count.get(s, 0) + 1
            continue
        if want.keep_streams is not None and order.index(s) >= want.keep_streams:
            why[v] = f"keep-streams = {want.keep_streams}: stream {s} is not among the newest"
        elif want.keep_per_stream is not None and count.get(s, 0) >= want.keep_per_stream:
            why[v] = f"keep-per-stream = {want.keep_per_stream}"
        else:
            kept.append(v)
            count[s] = count.get(s, 0) + 1
    if want.keep is not None:
        extra = len(kept) - want.keep
        for v in reversed(list(kept)):
            if extra <= 0:
                break
            if v not in protected:
                kept.remove(v)
                why[v] = f"keep = {want.keep}"
                extra -= 1
    add = tuple(v for v in kept if v not in pinned)
    drop = tuple(v for v in sorted(pinned, key=version_key, reverse=True) if v not in kept)
    return Resolution(add, drop, tuple(v for v in kept if v in pinned),
                      {v: why[v] for v in drop})
