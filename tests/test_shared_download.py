"""A download several images share is fetched once, even when they fetch at the same time:
in two processes sharing a cache, and in `doit -n 2 build` of two kubernetes minors that
share the CNI plugins tarball. A holder that dies releases the lock; one that hangs is
waited for only so long (build/tidy.py `download_lock`)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from catalogue import synthesize
from conftest import REPO, Project
from sysext_bakery.build import tidy
from sysext_bakery.build.fetch import fetch
from sysext_bakery.errors import BakeryError
from upstream import MirrorServer, Upstream

URL = "https://github.com/containernetworking/plugins/releases/download/v1.9.1/cni-plugins-linux-amd64-v1.9.1.tgz"
PATH = "/" + URL.removeprefix("https://")
BODY = os.urandom(256 * 1024)
DIGEST = hashlib.sha256(BODY).hexdigest()

FETCH = textwrap.dedent("""
    import sys
    from pathlib import Path
    from sysext_bakery.build.fetch import fetch
    got = fetch(sys.argv[1], sys.argv[2], Path(sys.argv[3]), mirror=sys.argv[4])
    print(got.sha256)
""")
HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from sysext_bakery.build import tidy
    with tidy.download_lock(Path(sys.argv[1]), sys.argv[2], 60):
        print("held", flush=True)
        time.sleep(120)
""")


@pytest.fixture
def server(tmp_path: Path):
    up = Upstream(tmp_path / "upstream")
    up.add(URL, BODY)
    mirror = MirrorServer(up.root)
    yield mirror
    mirror.gate.set()
    mirror.close()


def start(script: str, *args: str, stderr=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=stderr)


def wait_for(predicate, what: str, seconds: float = 60) -> None:
    end = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def gets(server: MirrorServer, path: str = PATH) -> int:
    return sum(1 for r in server.requests if r.split("?", 1)[0] == path)


def test_two_processes_fetching_one_url_download_it_once(server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    server.gate.clear()          # the first GET hangs until the other process waits too
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start(FETCH, URL, DIGEST, str(cache), server.url, stderr=log.open("w")) for log in logs]
    try:
        wait_for(lambda: gets(server) >= 1, "the first download")
        wait_for(lambda: any("waiting for another download" in log.read_text() for log in logs),
                 "the second process to wait for the lock")
        server.gate.set()
        outs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [log.read_text() for log in logs]
    assert [o.strip() for o in outs] == [DIGEST, DIGEST]
    assert gets(server) == 1
    assert (cache / DIGEST).read_bytes() == BODY
    assert list((cache / tidy.DOWNLOAD_LOCKS).iterdir()) == []     # released locks leave nothing


def test_a_holder_killed_mid_download_releases_the_lock(server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    holder = start(HOLD, str(cache), URL)
    try:
        assert holder.stdout.readline().strip() == "held"
        result: dict[str, object] = {}
        waiter = threading.Thread(target=lambda: result.update(
            got=fetch(URL, DIGEST, cache, mirror=server.url)))
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive() and gets(server) == 0     # it waits for the holder
        os.kill(holder.pid, signal.SIGKILL)
        waiter.join(60)
    finally:
        holder.kill()
        holder.wait()
    assert result["got"].sha256 == DIGEST
    assert gets(server) == 1


def test_a_hanging_holder_is_waited_for_only_so_long(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    holder = start(HOLD, str(cache), URL)
    try:
        assert holder.stdout.readline().strip() == "held"
        start_at = time.monotonic()
        with pytest.raises(BakeryError) as err:
            with tidy.download_lock(cache, URL, wait=0.3):
                pass
        assert time.monotonic() - start_at < 5
    finally:
        holder.kill()
        holder.wait()
    assert URL in err.value.message and f"pid {holder.pid}" in err.value.message
    assert "BAKERY_DEADLINE" in err.value.hint


def test_threads_of_one_process_take_turns(server, tmp_path: Path) -> None:
    """doit -P thread: each call opens its own file description, so threads exclude each other."""
    cache = tmp_path / "cache"
    server.gate.clear()
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(
        fetch(URL, DIGEST, cache, mirror=server.url).sha256)) for _ in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: gets(server) >= 1, "the first download")
    time.sleep(0.3)
    server.gate.set()
    for t in threads:
        t.join(60)
    assert results == [DIGEST] * 3
    assert gets(server) == 1


def test_doit_n2_build_of_two_kubernetes_minors_fetches_the_cni_plugins_once(tmp_path: Path) -> None:
    up = Upstream(tmp_path / "upstream")
    versions = ["v1.34.1", "v1.35.0"]
    synthesized = synthesize(REPO / "recipes", "kubernetes", versions, up, arches=["x86-64"])
    # a slow link: each answer takes 0.3 s, so both fetch tasks are in flight together
    mirror = MirrorServer(up.root, delay=0.3)
    try:
        lock = {"kubernetes": {v: {"x86-64": {"sources": [
            {"url": a.url, "sha256": up.sha256[a.url]} for a in synthesized.artifacts if a.version == v]}}
            for v in versions}}
        (tmp_path / "bakery").mkdir()
        project = Project(tmp_path / "bakery", mirror, lock)
        shared = [a.url for a in synthesized.artifacts if "containernetworking" in a.url]
        assert len(shared) == 2 and len(set(shared)) == 1
        proc = project.doit("-n", "2", *(f"build:kubernetes-{v}" for v in versions),
                            env={"BAKERY_ARCH": "x86-64", "BAKERY_COMPRESSION": "gzip"})
        assert sorted(p.name for p in project.images.glob("*.raw")) == [
            f"kubernetes-{v}-x86-64.raw" for v in versions]
        assert gets(mirror, "/" + shared[0].removeprefix("https://")) == 1, proc.stderr
        # doit -n 2's children share the run's id, so their stage tasks skip re-hashing
        records = [json.loads(p.read_text()) for p in (project.root / "build/state/fetch").glob("*.json")]
        assert len(records) == 2 and all(r["verified"]["run"] for r in records)
    finally:
        mirror.close()


def test_a_lock_that_cannot_be_made_is_a_clear_error(server, tmp_path: Path) -> None:
    """cache/.locks in the way (a file, or a lock path that is a symlink: O_NOFOLLOW) is a
    BakeryError naming the path, not a traceback."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / tidy.DOWNLOAD_LOCKS).write_text("not a directory")
    with pytest.raises(BakeryError) as err:
        fetch(URL, DIGEST, cache, mirror=server.url)
    assert str(cache / tidy.DOWNLOAD_LOCKS) in err.value.message and URL in err.value.message
    assert "BAKERY_CACHE" in err.value.hint
    (cache / tidy.DOWNLOAD_LOCKS).unlink()
    (cache / tidy.DOWNLOAD_LOCKS).mkdir()
    lock = cache / tidy.DOWNLOAD_LOCKS / hashlib.sha256(URL.encode()).hexdigest()
    lock.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BakeryError) as err:
        fetch(URL, DIGEST, cache, mirror=server.url)
    assert str(lock) in err.value.message
    assert not (tmp_path / "elsewhere").exists()
    assert gets(server) == 0
