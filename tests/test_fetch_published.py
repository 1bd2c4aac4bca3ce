"""scripts/fetch-published restores a published directory served over HTTP (as the release
workflow's publish job does from GitHub Pages), verified, so that publishing only the new
images into it keeps the earlier ones in SHA256SUMS and index.json."""
from __future__ import annotations

import functools
import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sysext_bakery.build import sums
from test_publish import fake_image, run

REPO = Path(__file__).resolve().parent.parent
FETCH = REPO / "scripts" / "fetch-published"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory and the loopback URL it is served at."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def fetch(url: str, dest: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(FETCH), url, str(dest)], capture_output=True, text=True, timeout=60)


def published_names(dest: Path) -> set[str]:
    return set(sums.parse((dest / "SHA256SUMS").read_text(), "SHA256SUMS"))


def test_publishing_new_images_into_the_restored_directory_keeps_the_old(tmp_path, served):
    root, url = served
    fake_image(tmp_path / "earlier", "docker", "27.5.1", b"docker 27")
    run(tmp_path / "earlier", root)
    fake_image(tmp_path / "new", "wasmtime", "30.0.0", b"wasmtime 30")

    restored = tmp_path / "restored"
    proc = fetch(url, restored)
    assert proc.returncode == 0, proc.stderr
    assert "restored 1 image(s)" in proc.stdout
    assert (restored / "docker-27.5.1-x86-64.raw").read_bytes() == b"docker 27"
    assert (restored / "index.json").read_bytes() == (root / "index.json").read_bytes()
    run(tmp_path / "new", restored)
    both = {"docker-27.5.1-x86-64.raw", "wasmtime-30.0.0-x86-64.raw"}
    assert published_names(restored) == both
    index = json.loads((restored / "index.json").read_text())
    assert {i["name"] for i in (index["images"] if isinstance(index, dict) else index)} == {
        "docker", "wasmtime"}

    # what the publish job would do without the restore: the earlier image is gone
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    run(tmp_path / "new", fresh)
    assert published_names(fresh) == {"wasmtime-30.0.0-x86-64.raw"}


def test_nothing_published_yet_leaves_the_directory_empty(tmp_path, served):
    _, url = served
    proc = fetch(url, tmp_path / "restored")
    assert proc.returncode == 0, proc.stderr
    assert "nothing published" in proc.stdout
    assert list((tmp_path / "restored").iterdir()) == []


def test_a_file_that_does_not_match_sha256sums_fails(tmp_path, served):
    root, url = served
    fake_image(tmp_path / "earlier", "docker", "27.5.1", b"docker 27")
    run(tmp_path / "earlier", root)
    (root / "docker-27.5.1-x86-64.raw").write_bytes(b"tampered")
    proc = fetch(url, tmp_path / "restored")
    assert proc.returncode != 0
    assert "do not match its SHA256SUMS" in proc.stderr
    # no manifest in place: a later doit release would not take the file in
    assert not (tmp_path / "restored" / "SHA256SUMS").exists()


def test_a_name_that_is_not_a_plain_image_file_is_refused(tmp_path, served):
    root, url = served
    (root / "SHA256SUMS").write_text(f"{'0' * 64}  ../../etc/passwd.raw\n")
    proc = fetch(url, tmp_path / "restored")
    assert proc.returncode != 0
    assert "unexpected line" in proc.stderr
    assert not (tmp_path / "etc").exists()


def test_a_missing_image_fails(tmp_path, served):
    root, url = served
    fake_image(tmp_path / "earlier", "docker", "27.5.1", b"docker 27")
    run(tmp_path / "earlier", root)
    (root / "docker-27.5.1-x86-64.raw").unlink()
    proc = fetch(url, tmp_path / "restored")
    assert proc.returncode != 0
    assert "HTTP 404" in proc.stderr
