"""Version strings: what is allowed, how they order, which stream they belong to.

Both rules are systemd's, so that what the bakery builds and publishes is exactly what
systemd-sysupdate sees and picks:
- validity: sysupdate only lets `@v` match a version made of ASCII letters, digits and
  `. , _ - +` (its `version_is_valid`; anything else, `~` and `^` included, makes the file
  invisible to it). The bakery also refuses `-`, which separates name, version and arch in
  `<name>-<version>-<arch>.raw`: names may contain `-` too, so file names would be ambiguous.
- order: systemd's `strverscmp_improved`, the comparison sysupdate uses to pick the newest
  version and `systemd-analyze compare-versions` prints.
"""
from __future__ import annotations

import functools
import re

# Characters other than letters and digits that a version may contain.
VERSION_PUNCTUATION = ".,_+"
# One character that may not be in a version (torcx maps references through it).
NOT_VERSION_CHAR = re.compile(r"[^A-Za-z0-9.,_+]")
# sysupdate itself allows up to NAME_MAX (255) characters. 128 keeps the image file name
# `<name>-<version>-<arch>.raw` and its provenance `<img>.json` well below NAME_MAX for any
# sensible name, and is far above real upstream versions (`v1.32.2+k3s1` is 12): anything
# longer is a mis-parsed release page, not a version.
MAX_VERSION_LENGTH = 128
# A leading letter or digit is the bakery's own rule: it keeps out `.` and `..` (which
# sysupdate 254's file name check refuses) and versions such as `+1` or `_` that are not
# versions of anything.
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.,_+]*")


def version_problem(value: str) -> str | None:
    """What makes `value` unusable as an image version, or None."""
    allowed = ("a version is letters, digits and . , _ + only, starting with a letter or "
               f"digit, at most {MAX_VERSION_LENGTH} characters")
    if value == "":
        return f"version '' is empty; {allowed}"
    if len(value) > MAX_VERSION_LENGTH:
        return f"version {value[:40]!r}... is {len(value)} characters long; {allowed}"
    if _VERSION_RE.fullmatch(value):
        return None
    bad = NOT_VERSION_CHAR.search(value)
    if bad is None:
        return f"version {value!r} must not start with {value[0]!r}; {allowed}"
    why = ("it separates name, version and arch in <name>-<version>-<arch>.raw"
           if bad.group() == "-" else "systemd-sysupdate ignores versions with it")
    return f"version {value!r} must not contain {bad.group()!r} ({why}); {allowed}"


def version_vars(version: str) -> dict[str, str]:
    """The `{version*}` placeholders of URL templates."""
    bare = version[1:] if version[:1] in "vV" and version[1:2].isdigit() else version
    parts = re.split(r"[.+]", bare) + ["", "", ""]
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


def _cmp(x: object, y: object) -> int:
    return (x > y) - (x < y)   # type: ignore[operator]


def _is_digit(c: str) -> bool:
    return "0" <= c <= "9"


def _is_alpha(c: str) -> bool:
    return "a" <= c <= "z" or "A" <= c <= "Z"


def _is_version_char(c: str) -> bool:
    return _is_digit(c) or _is_alpha(c) or c in "~-^."


def _c_char(s: str, k: int) -> int:
    """s[k] as systemd's C code sees it on x86-64, where char is signed: the end is 0 and a
    non-ASCII character (its first UTF-8 byte) is negative. It only matters right after a `~`
    (systemd skips other characters before looking at them), for strings that are no valid
    version; on arm64, where char is unsigned, systemd itself orders them the other way."""
    if k >= len(s):
        return 0
    return ord(s[k]) if s[k] < "\x80" else -1


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as `a` is older than, as new as or newer than `b`, by systemd's
    strverscmp_improved. A version is a run of segments, each numeric (compared as a number,
    leading zeros ignored) or alphabetic (compared bytewise), each optionally after one of
    `~` (pre-release: older than anything, even the end of the version), `-`, `^`, `.`, in
    that order of age; a numeric segment is newer than an alphabetic one, a version with more
    segments is newer, and every other character only separates segments. So
    1.0~rc1 < 1.0 < 1.0^1 < 1.0.1 < 1.0+1, and 1.0+1, 1.0_1 and 1.0,1 are the same version
    (sysupdate then sees only one of them). Strings are cut at a NUL, as C strings are."""
    a, b = a.split("\0", 1)[0], b.split("\0", 1)[0]
    i, j, la, lb = 0, 0, len(a), len(b)

    def at_a(k: int) -> str:
        return a[k] if k < la else ""

    def at_b(k: int) -> str:
        return b[k] if k < lb else ""

    while True:
        while i < la and not _is_version_char(a[i]):
            i += 1
        while j < lb and not _is_version_char(b[j]):
            j += 1

        # '~' first: it makes a segment older even than the end of the other version
        if at_a(i) == "~" or at_b(j) == "~":
            if r := _cmp(at_a(i) != "~", at_b(j) != "~"):
                return r
            i, j = i + 1, j + 1

        if i >= la or j >= lb:
            return _cmp(_c_char(a, i), _c_char(b, j))

        for sep in "-^.":
            if at_a(i) == sep or at_b(j) == sep:
                if r := _cmp(at_a(i) != sep, at_b(j) != sep):
                    return r
                i, j = i + 1, j + 1

        if _is_digit(at_a(i)) or _is_digit(at_b(j)):
            ea, eb = i, j
            while _is_digit(at_a(ea)):
                ea += 1
            while _is_digit(at_b(eb)):
                eb += 1
            # a number is newer than no number (a letter or nothing)
            if r := _cmp(ea != i, eb != j):
                return r
            while at_a(i) == "0":
                i += 1
            while at_b(j) == "0":
                j += 1
            # without leading zeros, the longer number is the larger; else compare digits
            if r := _cmp(ea - i, eb - j) or _cmp(a[i:ea], b[j:eb]):
                return r
        else:
            ea, eb = i, j
            while _is_alpha(at_a(ea)):
                ea += 1
            while _is_alpha(at_b(eb)):
                eb += 1
            n = min(ea - i, eb - j)
            # the common length first, then the longer run is newer (abc < abcd)
            if r := _cmp(a[i:i + n], b[j:j + n]) or _cmp(ea - i, eb - j):
                return r
        i, j = ea, eb


_VersionKey = functools.cmp_to_key(compare_versions)


def version_key(version: str):   # -> an object ordered by compare_versions (not hashable)
    """A sort key ordering versions as systemd-sysupdate does (see compare_versions), for
    `sorted(..., key=version_key)` and `max(..., key=version_key)`."""
    return _VersionKey(version)


def same_version_groups(versions: list[str]) -> list[list[str]]:
    """The groups of two or more distinct spellings that systemd orders as equal (`1.0+1`,
    `1.0_1`, `1.0,1`; `1.1`, `1.01`), each sorted, in version order."""
    groups: list[list[str]] = []
    for v in sorted(set(versions), key=version_key):
        if groups and compare_versions(groups[-1][0], v) == 0:
            groups[-1].append(v)
        else:
            groups.append([v])
    return [sorted(g) for g in groups if len(g) > 1]


def same_version_phrase(same: list[str]) -> str:
    """How every refusal of a `same_version_groups` group words it (lock, versions.toml,
    update), so the three read alike."""
    return (f"{' and '.join(repr(v) for v in same)} are the same version to systemd "
            "(`systemd-analyze compare-versions` says ==)")
