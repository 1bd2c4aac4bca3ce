"""Versions follow systemd exactly: the order is checked against systemd's own test vectors, the
host's real `systemd-analyze compare-versions` and the strverscmp_improved of the systemd
libraries on this machine (252 on the host, 254 that systemd-sysupdate runs with); the valid
characters against systemd-sysupdate itself."""
from __future__ import annotations

import ctypes
import functools
import glob
import itertools
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from sysext_bakery.model.version import (MAX_VERSION_LENGTH, compare_versions, stream_of,
                                   version_key, version_problem, version_vars)
from sysupdate import PRIVATE_DIR, Sysupdate, sysupdate  # noqa: F401

# --- systemd's test vectors (src/test/test-string-util.c, TEST(strverscmp_improved)) ---

# each is older than every one after it
ORDERED = ["~1", "", "ab", "abb", "abc", "0001", "002", "12", "122", "122.9", "123~rc1", "123",
           "123-a", "123-a.1", "123-a1", "123-a1.1", "123-3", "123-3.1", "123^patch1", "123^1",
           "123.a-1", "123.1-1", "123a-1", "124"]

OLDER_NEWER = [
    ("123.45-67.88", "123.45-67.89"), ("123.45-67.89", "123.45-67.89a"),
    ("123.45-67.ab", "123.45-67.89"), ("123.45-67.9", "123.45-67.89"),
    ("123.45-67", "123.45-67.89"), ("123.45-66.89", "123.45-67.89"),
    ("123.45-9.99", "123.45-67.89"), ("123.42-99.99", "123.45-67.89"),
    ("123-99.99", "123.45-67.89"),
    ("123~rc1-99.99", "123.45-67.89"), ("123~rc1-99.99", "123-45.67.89"),
    ("123~rc1-99.99", "123~rc2-67.89"), ("123~rc1-99.99", "123^aa2-67.89"),
    ("123~rc1-99.99", "123aa2-67.89"),
    ("123-99.99", "123^aa2-67.89"), ("123-99.99", "123aa2-67.89"),
    ("123^45-67.89", "123.45-67.89"), ("123^aa1-99.99", "123^aa2-67.89"),
    ("123^aa2-67.89", "123aa2-67.89"),
    ("123.aa2-67.89", "123aa2-67.89"), ("123.aa2-67.89", "123.ab2-67.89"),
]

# (a, b, sign of compare_versions(a, b)): the corner cases and rpm's rpmvercmp table as
# systemd's test adapts it (TEST(strverscmp_improved_rpm))
VECTORS = [
    ("123_aa2-67.89", "123aa+2-67.89", 0),
    ("123.", "123", 1), ("12_3", "123", -1), ("12_3", "12", 1), ("12_3", "12.3", 1),
    ("123.0", "123", 1), ("123_0", "123", 1), ("123..0", "123.0", -1),
    ("0_", "0", 0), ("_0_", "0", 0), ("_0", "0", 0), ("0", "0___", 0), ("", "_", 0),
    ("_", "", 0), ("_", "_", 0), ("", "~", 1), ("~", "", -1), ("~", "~", 0),
    ("1\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669", "1", 0),
    ("1\u0e50\u0e51\u0e52\u0e53\u0e54\u0e55\u0e56\u0e57\u0e58\u0e59", "1", 0),
    ("1.0", "1.0", 0), ("1.0", "2.0", -1), ("2.0.1", "2.0.1", 0), ("2.0", "2.0.1", -1),
    ("2.0.1a", "2.0.1", 1), ("5.5p1", "5.5p2", -1), ("5.5p1", "5.5p10", -1),
    ("10xyz", "10.1xyz", 1), ("xyz10", "xyz10.1", -1), ("xyz.4", "8", -1),
    ("xyz.4", "2", -1), ("5.5p2", "5.6p1", -1), ("5.6p1", "6.5p1", -1),
    ("6.0.rc1", "6.0", 1), ("10b2", "10a1", 1), ("10a2", "10b2", -1), ("1.0a", "1.0aa", -1),
    ("10.0001", "10.1", 0), ("10.0001", "10.0039", -1), ("4.999.9", "5.0", -1),
    ("20101121", "20101122", -1), ("2.0", "2_0", -1), ("2_0", "2.0", 1),
    ("a+", "a_", 0), ("+a", "_a", 0), ("_+", "+_", 0), ("+", "_", 0),
    ("1.0~rc1", "1.0", -1), ("1.0~rc1", "1.0~rc2", -1), ("1.0~rc1~git123", "1.0~rc1", -1),
    ("1.0^", "1.0", 1), ("1.0^git1", "1.0", 1), ("1.0^git1", "1.0^git2", -1),
    ("1.0^git1", "1.01", -1), ("1.0^20160101", "1.0.1", -1),
    ("1.0^20160102", "1.0^20160101^git1", 1), ("1.0~rc1^git1", "1.0~rc1", 1),
    ("1.0^git1", "1.0^git1~pre", 1),
    ("1b.fc17", "1.fc17", 1), ("1g.fc17", "1.fc17", 1),
    ("1.1.\u03b1", "1.1.\u03b2", 0), ("~\u00e9", "~", -1), ("~,", "~", 1), ("1.1.\u03b1\u03b1", "1.1.\u03b1", 0),
    # the facts the bakery relies on (docs/design)
    ("1.0+1", "1.0.1", 1), ("1.0^1", "1.0.1", -1), ("1.32", "1.32.0", -1),
    ("24.0.10", "24.0.9", 1), ("1.0~rc1", "1.0", -1), ("v1.32.2+k3s1", "v1.32.2", 1),
    ("1.0+1", "1.0_1", 0), ("1.0,1", "1.0+1", 0),
]


@pytest.mark.parametrize("older, newer", [*itertools.combinations(ORDERED, 2), *OLDER_NEWER])
def test_systemd_vectors_older_newer(older: str, newer: str) -> None:
    assert compare_versions(older, newer) == -1
    assert compare_versions(newer, older) == 1
    assert compare_versions(older, older) == compare_versions(newer, newer) == 0


@pytest.mark.parametrize("a, b, expected", VECTORS)
def test_systemd_vectors(a: str, b: str, expected: int) -> None:
    assert compare_versions(a, b) == expected
    assert compare_versions(b, a) == -expected


def test_version_key_sorts_and_picks_the_newest() -> None:
    shuffled = ORDERED[::2][::-1] + ORDERED[1::2]
    assert sorted(shuffled, key=version_key) == ORDERED
    assert max(["1.32.2+k3s1", "1.32.10", "1.32.9"], key=version_key) == "1.32.10"
    # inside tuples too, as release.py sorts (name, version_key(version), arch)
    rows = [("docker", version_key(v), a) for v in ("24.0.10", "24.0.9") for a in ("x86-64", "arm64")]
    assert [(r[1].obj, r[2]) for r in sorted(rows)] == [
        ("24.0.9", "arm64"), ("24.0.9", "x86-64"), ("24.0.10", "arm64"), ("24.0.10", "x86-64")]


# --- generated pairs against the real systemd ---

# pieces that stress every branch: leading zeros, numbers of different lengths, letters of both
# cases, every prefix systemd knows, separators it ignores, and characters it skips
PIECES = ["0", "00", "007", "1", "01", "2", "9", "10", "99", "100", "a", "b", "z", "A", "Z",
          "rc", "abc", ".", ".", "+", "~", "^", "-", "_", ",", " ", "\u00e9"]
piece_runs = st.lists(st.sampled_from(PIECES), max_size=7).map("".join)
# a shared prefix makes the comparison go deep before the versions differ
pairs = st.one_of(
    st.tuples(piece_runs, piece_runs),
    st.builds(lambda p, x, y: (p + x, p + y), piece_runs, piece_runs, piece_runs),
    st.tuples(st.text("019aAzZ.+~^-_", max_size=8), st.text("019aAzZ.+~^-_", max_size=8)),
)


def systemd_analyze_compare(a: str, b: str) -> int:
    # `--`: a version may start with '-'. Exit status: 0 equal, 11 b is older, 12 a is older.
    proc = subprocess.run(["systemd-analyze", "compare-versions", "--", a, b],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode in (0, 11, 12), f"systemd-analyze {a!r} {b!r}: {proc.stderr}"
    return {0: 0, 11: 1, 12: -1}[proc.returncode]


# a failing batch lists every wrong pair: shrinking 100-pair batches would take minutes
BATCH_PHASES = (Phase.explicit, Phase.generate)
_analyzed: dict[tuple[str, str], int] = {}   # also makes hypothesis' shrinking cheap


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze (systemd >= 250) is the oracle and is not installed")
@settings(max_examples=int(os.environ.get("BAKERY_COMPARE_BATCHES", "16")), deadline=None,
          database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
          phases=BATCH_PHASES)
@given(st.lists(pairs, min_size=60, max_size=60))
def test_order_matches_systemd_analyze(batch: list[tuple[str, str]]) -> None:
    """16 batches of 60 pairs (~1000; BAKERY_COMPARE_BATCHES=100 for 6000), each batch run
    concurrently: one systemd-analyze process costs ~10 ms, so the bulk of the generated
    pairs goes to test_order_matches_systemd_library."""
    todo = [p for p in dict.fromkeys(batch) if p not in _analyzed]
    with ThreadPoolExecutor(4) as pool:
        _analyzed.update(zip(todo, pool.map(lambda p: systemd_analyze_compare(*p), todo)))
    wrong = [(a, b, _analyzed[a, b], compare_versions(a, b)) for a, b in batch
             if compare_versions(a, b) != _analyzed[a, b]]
    assert not wrong, f"(a, b, systemd, ours): {wrong}"


def systemd_libraries() -> list[Path]:
    found = glob.glob("/usr/lib/*/systemd/libsystemd-shared-*.so")
    found += glob.glob(str(PRIVATE_DIR / "usr/lib/*/systemd/libsystemd-shared-*.so"))
    return [Path(p) for p in sorted(found)]


@functools.cache
def library_compare(library: Path):
    """systemd's own strverscmp_improved, called in-process: the code that both
    `systemd-analyze compare-versions` and systemd-sysupdate run, thousands of pairs a second."""
    function = ctypes.CDLL(str(library)).strverscmp_improved
    function.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    function.restype = ctypes.c_int
    return lambda a, b: (lambda r: (r > 0) - (r < 0))(function(a.encode(), b.encode()))


@pytest.mark.parametrize("library", systemd_libraries() or [
    pytest.param(None, marks=pytest.mark.skip(reason="no libsystemd-shared-*.so on this host"))],
    ids=lambda p: p.name if p else "none")
@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
          phases=BATCH_PHASES)
@given(batch=st.lists(pairs, min_size=100, max_size=100))
def test_order_matches_systemd_library(library: Path, batch: list[tuple[str, str]]) -> None:
    """3000 pairs per library, drawn 100 at a time (hypothesis' cost is per draw)."""
    systemd = library_compare(library)
    wrong = [(a, b, systemd(a, b), compare_versions(a, b)) for a, b in batch
             if compare_versions(a, b) != systemd(a, b)]
    assert not wrong, f"(a, b, systemd, ours): {wrong}"


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
          phases=BATCH_PHASES)
@given(st.lists(piece_runs, min_size=25, max_size=25))
def test_order_is_a_total_order(versions: list[str]) -> None:
    """Sorting with version_key and then comparing every pair checks transitivity;
    each pair both ways checks antisymmetry."""
    ordered = sorted(versions, key=version_key)
    for i, x in enumerate(ordered):
        assert compare_versions(x, x) == 0
        for y in ordered[i + 1:]:
            assert compare_versions(x, y) <= 0 and compare_versions(y, x) == -compare_versions(x, y)
    assert max(versions, key=version_key) is ordered[-1] or \
        compare_versions(max(versions, key=version_key), ordered[-1]) == 0


# --- which versions are allowed ---

ACCEPTED = ["1", "24.0.9", "v1.32.2+k3s1", "1.0+custom1", "1.2_rc1", "1.0,1", "20240101",
            "com.coreos.cl", "V2", "a" * MAX_VERSION_LENGTH]
REFUSED = {
    "": "is empty",
    "1.0~rc1": "must not contain '~' (systemd-sysupdate ignores versions with it)",
    "1.0^1": "must not contain '^' (systemd-sysupdate ignores",
    "24.0-rc1": "must not contain '-' (it separates name, version and arch",
    "../x": "must not contain '/'",
    "1/2": "must not contain '/'",
    "1 0": "must not contain ' '",
    "29.0.1\n": r"must not contain '\n'",
    "\n29.0.1": r"must not contain '\n'",
    "1\t2": r"must not contain '\t'",
    "1\x00": r"must not contain '\x00'",
    "1\x7f": r"must not contain '\x7f'",
    "1:2": "must not contain ':'",
    "1.0\u00e9": "must not contain '\u00e9'",
    "\uff11": "must not contain '\uff11'",       # a fullwidth digit: str.isalnum() would pass it
    ".1": "must not start with '.'",
    "+1": "must not start with '+'",
    "_": "must not start with '_'",
    "a" * (MAX_VERSION_LENGTH + 1): f"is {MAX_VERSION_LENGTH + 1} characters long",
}


@pytest.mark.parametrize("version", ACCEPTED)
def test_accepted_versions(version: str) -> None:
    assert version_problem(version) is None


@pytest.mark.parametrize("version, message", REFUSED.items(), ids=repr)
def test_refused_versions_say_why_and_what_is_allowed(version: str, message: str) -> None:
    problem = version_problem(version)
    assert problem is not None and message in problem
    assert problem.startswith(f"version {version[:40]!r}")
    assert problem.endswith("a version is letters, digits and . , _ + only, starting with a "
                            f"letter or digit, at most {MAX_VERSION_LENGTH} characters")


def test_vars_and_streams_split_on_dot_and_plus() -> None:
    assert version_vars("v1.32.2+k3s1") == {
        "version": "v1.32.2+k3s1", "version_bare": "1.32.2+k3s1", "version_major": "1",
        "version_minor": "32", "version_patch": "2"}
    assert version_vars("2.0+k3s1")["version_patch"] == "k3s1"
    assert stream_of("v1.32.2+k3s1", "minor") == "v1.32"
    assert stream_of("1.32.2+k3s1", "minor") == "1.32"
    assert stream_of("24+1", "major") == "24" and stream_of("24", "minor") is None


@pytest.mark.root
def test_sysupdate_sees_exactly_the_accepted_versions_newest_first(
        tmp_path: Path, sysupdate: Sysupdate) -> None:
    """A directory of images under every kind of version, listed by the real
    systemd-sysupdate 254 through the bakery's MatchPattern: it ignores the versions with
    characters it refuses (`~`, `^`), lists the others newest first, in our order. `-` it
    would take, the bakery refuses for its file names."""
    visible = ["1.0", "1.0+k3s1", "1.0_rc1", "1.0,2", "v1.1", "1.0.1"]
    dashed, invisible = ["1.1-1"], ["1.1~rc1", "1.1^1"]
    assert [v for v in visible + dashed + invisible if version_problem(v) is None] == visible
    source = tmp_path / "source"
    source.mkdir()
    for v in visible + dashed + invisible:
        (source / f"docker-{v}-x86-64.raw").write_bytes(b"")
    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "docker.conf").write_text(
        "[Transfer]\nVerify=false\n"
        f"[Source]\nType=regular-file\nPath={source}\nMatchPattern=docker-@v-x86-64.raw\n"
        "[Target]\nType=regular-file\nPath=/opt/extensions/docker\n"
        "MatchPattern=docker-@v-x86-64.raw\n")
    root = tmp_path / "root"
    (root / "opt/extensions/docker").mkdir(parents=True)
    proc = sysupdate.run(defs, root, "list", "--json=short")
    assert proc.returncode == 0, proc.stderr
    listed = [entry["version"] for entry in json.loads(proc.stdout)]
    assert listed == sorted(visible + dashed, key=version_key, reverse=True)
