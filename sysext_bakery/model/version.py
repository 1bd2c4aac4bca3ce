"""Version strings: what is allowed, how they order, which stream they belong to."""
from __future__ import annotations

import re

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~^]*$")


def version_problem(value: str) -> str | None:
    """What makes `value` unusable as an image version, or None."""
    if VERSION_RE.match(value):
        return None
    return (f"version {value!r} must not contain '-', '/' or spaces "
            "(it must survive MatchPattern=<name>-@v-%a.raw)")


def version_vars(version: str) -> dict[str, str]:
    """The `{version*}` placeholders of URL templates."""
    bare = version[1:] if version[:1] in "vV" and version[1:2].isdigit() else version
    parts = re.split(r"[.+~^]", bare) + ["", "", ""]
    return {"version": version, "version_bare": bare, "version_major": parts[0],
            "version_minor": parts[1], "version_patch": parts[2]}


def stream_of(version: str, policy: str) -> str | None:
    """docker 24.0.9 -> "24" (major); kubernetes v1.32.2 -> "v1.32" (minor); None for "none"."""
    if policy == "none":
        return None
    prefix = version[0] if version[:1] in "vV" else ""
    v = version_vars(version)
    if policy == "major":
        return prefix + v["version_major"]
    return f"{prefix}{v['version_major']}.{v['version_minor']}" if v["version_minor"] else None


def version_key(version: str) -> tuple:
    """Orders versions as systemd-sysupdate does (its strverscmp_improved): numbers compare
    numerically (1.10 > 1.9) and beat letters, and a `~` part sorts before everything, even
    the end of the version, so 1.0~rc1 < 1.0 < 1.0.1."""
    key = []
    for part in re.findall(r"~|\d+|[^\d.+~_^-]+", version):
        if part == "~":
            key.append((-1, 0, ""))
        elif part.isdigit():
            key.append((2, int(part), ""))
        else:
            key.append((1, 0, part))
    return tuple(key) + ((0, 0, ""),)   # the end of the version: after ~, before anything else
