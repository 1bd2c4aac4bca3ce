"""Guarantee 5 of issue 13 (docs/security.md): SIGKILL at random points of `doit build` and
`doit release` never leaves anything partial under a final name, the next run converges to
the same bytes as an uninterrupted run, and it removes what the killed run left behind.

BAKERY_CRASH_LOOPS sets the number of kills per command (default 6, what CI runs)."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from conftest import Project, lock_for

LOOPS = int(os.environ.get("BAKERY_CRASH_LOOPS", "6"))
ONE_ARCH = {"BAKERY_ARCH": "x86-64"}   # five images: half the time, the same code paths
KINDS = ("cache/.tmp/", "stage/.unpacked/.", "images/.", "stage/.")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_of(directory: Path) -> dict[str, str]:
    """name -> sha256 of every plain file directly in `directory`."""
    return {p.name: sha(p) for p in directory.iterdir() if p.is_file()} if directory.is_dir() else {}


def tree_of(directory: Path) -> dict[str, str]:
    """Relative path -> what it is (mode and content hash, or link target) of a whole tree."""
    found = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(directory))
        if path.is_symlink():
            found[rel] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[rel] = f"{st.st_mode:o} {sha(path)}"
        else:
            found[rel] = f"{st.st_mode:o}"
    return found


def kill_during(project: Project, args: list[str], at: float,
                when: Callable[[], bool] | None = None) -> None:
    """Start the real doit CLI and SIGKILL it, with every child (mksquashfs, decompressors),
    `at` seconds later, or as soon as `when()` holds (polled every millisecond or so): a
    fixture build writes each temporary file for milliseconds only, random times alone
    would hardly ever hit one."""
    env = {**os.environ, "BAKERY_MIRROR": project.mirror.url, **ONE_ARCH}
    proc = subprocess.Popen([sys.executable, "-m", "doit", *args], cwd=project.root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + at
    while proc.poll() is None and time.monotonic() < deadline and not (when and when()):
        time.sleep(0.001)
    if proc.poll() is None:      # once reaped, its pid (and group id) may be anyone's
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def temp_names(build: Path) -> list[str]:
    """Every temporary name a run makes under build/ (see build/tidy.py)."""
    found = []
    for sub in ("images", "state/fetch", "state/stage", "state/images", "stage", "stage/.unpacked"):
        d = build / sub
        if d.is_dir():
            found += [f"{sub}/{p.name}" for p in d.iterdir()
                      if p.name.startswith(".") and p.name != ".unpacked"]
    tmp = build / "cache" / ".tmp"
    found += [f"cache/.tmp/{p.name}" for p in tmp.iterdir()] if tmp.is_dir() else []
    return found


def check_build_invariants(build: Path, ref: dict) -> None:
    """What may be seen after a kill: only complete files under final names."""
    images = build / "images"
    for raw in images.glob("*.raw"):
        assert sha(raw) == ref["images"][raw.name], f"{raw} is partial"
    if (images / "SHA256SUMS").exists():
        listed = dict(line.split("  ")[::-1] for line in (images / "SHA256SUMS").read_text().splitlines())
        assert listed.items() <= {n: d for n, d in ref["images"].items() if n != "SHA256SUMS"}.items()
    for entry in (build / "cache").glob("[!.]*"):
        if entry.is_file():
            assert sha(entry) == entry.name, f"cache entry {entry} is not what its name says"
    stage = build / "stage"
    for tree in stage.iterdir() if stage.is_dir() else ():
        if not tree.name.startswith("."):
            assert tree_of(tree) == ref["stage"][tree.name], f"{tree} is incomplete"
    for record in (build / "state").glob("*/*.json"):
        json.loads(record.read_text())   # written atomically: never half a record


def snapshot(build: Path) -> dict:
    return {"images": files_of(build / "images"),
            "cache": sorted(p.name for p in (build / "cache").iterdir() if not p.name.startswith(".")),
            "stage": {t.name: tree_of(t) for t in (build / "stage").iterdir()
                      if not t.name.startswith(".")}}


def test_sigkill_during_build_and_release_converges(tmp_path, mirror, upstream):
    rng = random.Random(os.environ.get("BAKERY_CRASH_SEED", str(time.time_ns())))
    lock = lock_for(upstream)
    (tmp_path / "ref").mkdir()
    (tmp_path / "crash").mkdir()
    ref_project = Project(tmp_path / "ref", mirror, lock)
    started = time.monotonic()
    ref_project.doit("build", env=ONE_ARCH)
    build_time = time.monotonic() - started
    ref = snapshot(ref_project.root / "build")
    assert len([n for n in ref["images"] if n.endswith(".raw")]) == 5

    project = Project(tmp_path / "crash", mirror, lock)
    build = project.root / "build"
    left_behind: set[str] = set()
    for n in range(LOOPS):
        # every other kill waits for a temporary name of one kind to exist: a download, a
        # stage work directory, an unpacked-cache entry, an image, in turn
        kind = KINDS[n // 2 % len(KINDS)]
        kill_during(project, ["build"], rng.uniform(0.1, build_time / 2) if n % 2 == 0 else build_time,
                    (lambda: any(t.startswith(kind) for t in temp_names(build))) if n % 2 else None)
        check_build_invariants(build, ref)
        left_behind.update(temp_names(build))
    project.doit("build", env=ONE_ARCH)
    assert snapshot(build) == ref
    assert left_behind, "no kill hit a temporary file: the loop proves nothing about clean-up"
    assert temp_names(build) == [], f"left behind by killed runs: {left_behind}"

    # doit release: the reference publishes the very same build, uninterrupted
    started = time.monotonic()
    project.doit("release", "--dest", str(tmp_path / "ref-pub"))
    release_time = time.monotonic() - started
    published_ref = files_of(tmp_path / "ref-pub")
    dest = tmp_path / "pub"
    for n in range(LOOPS):
        kill_during(project, ["release", "--dest", str(dest)], rng.uniform(0.1, release_time),
                    (lambda: any(p.name.endswith(".tmp") for p in dest.glob(".*"))) if n % 2 else None)
        published = {n: d for n, d in files_of(dest).items() if not n.startswith(".")}
        # each file is complete, under its final name, and the one the full run writes
        assert published.items() <= published_ref.items()
        if "SHA256SUMS" in published:
            for line in (dest / "SHA256SUMS").read_text().splitlines():
                digest, name = line.split("  ")
                assert published.get(name) == digest, f"{name} disagrees with SHA256SUMS"
    project.doit("release", "--dest", str(dest))
    assert files_of(dest) == published_ref
    assert not [p for p in dest.iterdir() if p.name.endswith(".tmp")]


def test_the_next_run_removes_what_a_killed_run_left(project):
    """The leftovers of the issue (an unpacked work directory, a .tmp image) and their
    kin go; a download another live process is writing into a shared cache stays."""
    project.doit("build:wasmtime")
    build = project.root / "build"
    image = ".wasmtime-29.0.1-x86-64.raw.k1ll3d00.tmp"
    planted = [build / "images" / image, build / "state/fetch/.wasmtime-29.0.1-x86-64.json.ab12cd34.tmp",
               build / "stage/.wasmtime-29.0.1-x86-64.ab12cd34/usr/bin/wasmtime",
               build / "stage/.wasmtime-29.0.1-x86-64.ab12cd34.old/usr/bin/wasmtime",
               build / f"stage/.unpacked/.{'0' * 64}.ab12cd34/tree/usr/bin/wasmtime",
               build / "cache/.tmp/wasmtime-v29.0.1-x86_64-linux.tar.xz.ab12cd34"]
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 4096)
    live = build / "cache/.tmp/docker-24.0.9.tgz.11ve0000"
    live.write_bytes(b"half a download")
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)          # what fetch holds while it downloads
        done = project.doit("build:wasmtime")
    assert temp_names(build) == ["cache/.tmp/" + live.name]
    assert "removed 5 temporary file(s) a stopped run left behind" in done.stderr
    assert "removed 1 temporary file(s)" in done.stderr   # the cache's own line
    assert not [p for p in planted if p.exists()]
