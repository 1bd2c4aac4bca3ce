"""The naming rules every stage shares: recipe names, image ids and file names, sysupdate
match patterns, and the clash between two names that one pattern would both match.

Each rule is defined here once; tasks, release, torcx, update and compose import it.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Iterable

from sysext_bakery.model.arch import ARCHES

# Lower-case words joined by single '-' or '_': safe in file names, unit names and URLs.
NAME_RE = re.compile(r"[a-z0-9]+(?:[-_][a-z0-9]+)*")
NAME_MAX = 64
IMAGE_SUFFIX = ".raw"

_IMAGE_FILE = re.compile(r"(?P<name>[a-z0-9]+(?:[-_][a-z0-9]+)*?)"
                         r"-(?P<version>[^-/\s]+)-(?P<arch>" + "|".join(map(re.escape, ARCHES))
                         + r")" + re.escape(IMAGE_SUFFIX))


def name_problem(name: str) -> str | None:
    """What makes `name` unusable as a recipe or image name, or None."""
    if len(name) > NAME_MAX:
        return f"name {name[:20]!r}… is longer than {NAME_MAX} characters"
    if not NAME_RE.fullmatch(name):
        return (f"name {name!r} must be lower-case letters and digits, in words joined by "
                "single '-' or '_'")
    return None


def file_name_problem(name: str) -> str | None:
    """What makes `name` unusable as a file name listed in a directory's SHA256SUMS (the
    bakery lists its images; sha256sum may list any plain name), or None. A name read
    back from a damaged or tampered manifest must not reach out of the directory (`/`, `..`)
    nor carry a line break or escape sequence into a message or a file the bakery writes."""
    if name in ("", ".", ".."):
        return f"{name!r} is not a file name"
    if "/" in name:
        return f"file name {name!r} contains '/'"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return f"file name {name!r} contains a control character"
    return None


def image_id(name: str, version: str, arch: str) -> str:
    """`<name>-<version>-<arch>`: the image file stem and the per-image task name."""
    return f"{name}-{version}-{arch}"


def image_filename(name: str, version: str, arch: str) -> str:
    """`docker-24.0.9-x86-64.raw` (contract: build/images/ and the published directory)."""
    return image_id(name, version, arch) + IMAGE_SUFFIX


def parse_image_filename(filename: str) -> tuple[str, str, str] | None:
    """`docker-24.0.9-x86-64.raw` -> ("docker", "24.0.9", "x86-64"); None if not an image name."""
    m = _IMAGE_FILE.fullmatch(filename)
    return (m["name"], m["version"], m["arch"]) if m else None


def match_pattern(name: str, stream: str | None = None) -> str:
    """sysupdate MatchPattern= of a transfer: any version, or only versions of one stream
    (`<stream>.x`)."""
    return f"{name}-{stream}.@v-%a{IMAGE_SUFFIX}" if stream else f"{name}-@v-%a{IMAGE_SUFFIX}"


def extension_link(name: str) -> str:
    """Where a host enables an image: what sysupdate's CurrentSymlink= and Butane create."""
    return f"/etc/extensions/{name}{IMAGE_SUFFIX}"


def clash(name: str, others: Iterable[str]) -> str | None:
    """Another name whose images `name`'s pattern would match, or whose pattern would match
    `name`'s images: sysupdate's `@v` matches any characters, `-` included, so the transfer
    of `docker` (`docker-@v-%a.raw`) also takes `docker-compose-2.0-x86-64.raw`."""
    for other in sorted(set(others)):
        if other != name and (name.startswith(other + "-") or other.startswith(name + "-")):
            return other
    return None


def clash_hint(name: str, other: str) -> str:
    """How to get out of a clash: rename the longer name without the '-' that joins them."""
    short, long = sorted((name, other), key=len)
    return (f"rename {long!r} so that it does not start with {short + '-'!r}, "
            f"e.g. {short + '_' + long[len(short) + 1:]!r}")
