"""The lock, `release/lock.toml`: which versions are pinned, with per-arch URLs and sha256.

Format (hand-editable; recording a sha256 edits only the image's own entry, so comments and
layout stay and the diff shows just what was recorded):

    [docker."24.0.9".x86-64]
    sources = [
        { url = "https://download.docker.com/linux/static/stable/x86_64/docker-24.0.9.tgz", sha256 = "…" },
    ]

    [wasmtime."29.0.1"]          # pinned by hand: URLs come from the recipe, sha256 on first fetch

The graph is computed from recipes + lock alone, so listing tasks never needs the network.
"""
from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

from sysext_bakery.model.arch import ARCHES
from sysext_bakery.errors import BakeryError
from sysext_bakery.model.image import SHA256_HEX
from sysext_bakery.files import write_atomic
from sysext_bakery.inputs import brief, brief_key, read_text, read_toml
from sysext_bakery.model.url import url_problem
from sysext_bakery.model.version import same_version_groups, same_version_phrase, version_problem

HEADER = ("# Pinned versions per recipe: per arch, each source's URL and sha256.\n"
          "# A version pinned by hand needs only its table, e.g. [wasmtime.\"29.0.1\"];\n"
          "# URLs then come from the recipe and the sha256 is recorded on first fetch.\n\n")


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    # arch -> list of {"url", "sha256"}; an arch missing here is derived from the recipe
    arches: dict[str, list[dict[str, str]]]


def load(path: Path, shown: str | None = None) -> dict[str, list[Pin]]:
    """recipe name -> its pins; raises BakeryError naming the lock (as `shown`) and the key."""
    pins, refused = load_checked(path, shown)
    if refused:
        raise refused[0].error
    return pins


class Refused(NamedTuple):
    """A lock entry withheld: its recipe, why, and the versions it names (none when the
    recipe's entry is no table of versions), so `doit build:<name>-<version>` fails over it
    instead of calling the version unpinned."""
    recipe: str
    error: BakeryError
    versions: tuple[str, ...] = ()


def load_checked(path: Path, shown: str | None = None
                 ) -> tuple[dict[str, list[Pin]], list[Refused]]:
    """The pins that are valid, plus a `Refused` for each entry refused: one bad
    entry withholds only its recipe's version, not the whole catalogue. A file that is not
    TOML at all still raises."""
    shown = shown or str(path)
    if not path.exists():
        return {}, []
    data = read_toml(path, shown, "fix the syntax by hand")
    pins: dict[str, list[Pin]] = {}
    refused: list[Refused] = []
    for name, versions in data.items():
        if not isinstance(versions, dict):
            refused.append(Refused(name, BakeryError(f"{shown}: {brief_key(name)}: expected a table of versions")))
            continue
        for version, arches in versions.items():
            try:
                pins.setdefault(name, []).append(Pin(name, version, _arches(shown, name, version, arches)))
            except BakeryError as e:
                refused.append(Refused(name, e, (version,)))
    for name, listed in pins.items():
        for same in same_version_groups([p.version for p in listed]):
            refused.append(Refused(name, same_version_error(shown, name, same), tuple(same)))
            pins[name] = [p for p in pins[name] if p.version not in same]
    return {n: p for n, p in pins.items() if p}, refused


def same_version_error(shown: str, name: str, same: list[str]) -> BakeryError:
    """Versions spelled differently that systemd orders as equal (1.0+1 and 1.0_1, 1.1 and
    1.01): their images would be two files sysupdate cannot tell which is newer, so neither
    is built."""
    return BakeryError(
        f"{shown}: {brief_key(name)}: versions {same_version_phrase(same)}, so "
        f"systemd-sysupdate cannot order their images; neither is built",
        f"keep one spelling: remove the other {brief_key(name)} table(s) from {shown} "
        f"(and from release/versions.toml, if it names them)")


def _arches(shown: str, name: str, version: str, arches: object) -> dict[str, list[dict[str, str]]]:
    where = f"{shown}: {brief_key(name)}.{brief_key(version)}"
    if what := version_problem(version):
        raise BakeryError(f"{where}: {what}",
                          "pin a version systemd-sysupdate accepts, mapped from upstream's spelling")
    if not isinstance(arches, dict):
        raise BakeryError(f"{where}: expected a table of arches")
    parsed: dict[str, list[dict[str, str]]] = {}
    for arch, entry in arches.items():
        if arch not in ARCHES:
            raise BakeryError(f"{where}: unknown arch {brief(arch)}",
                              f"arches are spelled as systemd does: {', '.join(ARCHES)}")
        sources = entry.get("sources") if isinstance(entry, dict) else None
        if not isinstance(sources, list) or not all(
                isinstance(s, dict) and set(s) <= {"url", "sha256"}
                and all(isinstance(v, str) for v in s.values()) for s in sources):
            raise BakeryError(f"{where}.{arch}: expected sources = [{{ url = \"…\", sha256 = \"…\" }}, …]")
        for i, source in enumerate(sources):
            if "url" in source and (problem := url_problem(source["url"])):
                raise BakeryError(f"{where}.{arch}.sources[{i}].url: {problem}",
                                  "remove the entry to re-pin it from the recipe")
            if source.get("sha256") and not SHA256_HEX.fullmatch(source["sha256"]):
                raise BakeryError(f"{where}.{arch}.sources[{i}].sha256: expected 64 "
                                  f"lower-case hex digits, got {brief(source['sha256'])}",
                                  "remove it to record it again on the next fetch")
        parsed[arch] = sources
    return parsed


def record_sha256(path: Path, name: str, version: str, arch: str,
                  sources: list[dict[str, str]]) -> None:
    """Write the URLs and sha256 of one image's sources into the lock (trust on first use)."""
    # imported here: tomlkit takes longer to import than the rest of `doit list`
    from sysext_bakery.recipe.lock_edit import with_sources

    edit(path, lambda text: with_sources(text, name, version, arch, sources, str(path)))


def edit(path: Path, change: Callable[[str], str]) -> bool:
    """Rewrite the lock as `change(old text)` ("" when there is none); True if it changed.

    Read-modify-write under an flock so parallel fetch tasks and `doit update` do not lose
    each other's entries; the new file is renamed into place so a crash never leaves half a
    lock.
    """
    guard = os.open(path.parent, os.O_RDONLY)   # flock on the directory: no stray lock file
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        # as it is (Path.read_text() would turn CRLF into LF and rewrite every line of the
        # file), and as an input: not UTF-8 (edited since it was loaded) is a BakeryError
        text = read_text(path, str(path), "lock") if path.exists() else ""
        new = change(text)
        return new != text and write_atomic(path, new)
    finally:
        os.close(guard)
