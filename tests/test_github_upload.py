"""Where and how the GitHub publisher uploads: the one upload origin the configured API
implies (the token goes nowhere else), and images streamed from their files, whole on every
attempt."""
from __future__ import annotations

import hashlib
import http.server
import os
import threading
import tracemalloc
from pathlib import Path

import pytest

from sysext_bakery.publish import github as gh_publisher
from sysext_bakery.publish import sysupdate as release
from sysext_bakery.build import sums
from sysext_bakery.errors import BakeryError
from sysext_bakery.model import github as github_api
from test_publish import fake_image, run

from github_emulator import TOKEN, assets_of, github, project  # noqa: F401


def random_file(path: Path, size: int) -> bytes:
    """`size` random bytes written to `path` a MiB at a time; returns their sha256 (hex)."""
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(size >> 20):
            block = os.urandom(1 << 20)
            digest.update(block)
            f.write(block)
    return digest.hexdigest()


def test_an_image_is_hashed_and_uploaded_streamed_from_its_file(tmp_path, github):
    """A 64 MiB image goes up without being read whole into memory: the sync peaks far
    below the image's size (the emulator, in this process too, keeps only digests), the
    upload carries the file's size as Content-Length, and the asset's digest is the one its
    SHA256SUMS names."""
    gh, api = github
    gh.keep = False
    size = 64 << 20
    image = tmp_path / "docker-24.0.9-x86-64.raw"
    sha = random_file(image, size)
    manifest = sums.render({image.name: sha}).encode()
    client = gh_publisher.GitHub("owner/bakery", TOKEN, api, backoff=0.01)
    rel = client.release("docker-24.0.9", None, "body")
    tracemalloc.start()
    try:
        uploaded = client.sync(rel, {image.name: image, "SHA256SUMS": manifest})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert uploaded == [image.name, "SHA256SUMS"]
    assert peak < size // 8, f"the upload peaked at {peak >> 20} MiB"
    assets = {a["name"]: a for a in gh.assets.values()}
    assert (assets[image.name]["size"], assets[image.name]["digest"]) == (size, f"sha256:{sha}")
    assert assets["SHA256SUMS"]["digest"] == "sha256:" + hashlib.sha256(manifest).hexdigest()
    assert gh.upload_headers[0] == (str(size), None)   # Content-Length, not chunked

    # synced again: compared by digest and size, nothing goes up
    gh.log.clear()
    assert client.sync(rel, {image.name: image, "SHA256SUMS": manifest}) == []
    assert not [p for m, p in gh.log if m in ("POST", "DELETE")]


@pytest.mark.parametrize("cut", [None, 500, 429])
def test_an_upload_cut_off_midway_is_sent_again_whole(tmp_path, github, monkeypatch, capsys, cut):
    """The first attempt's body is cut off after a MiB: the connection dropped (a broken
    POST, retried by the publisher), a 500 (likewise) or a 429 (retried by urllib3 itself).
    The next attempt sends the file from its start, so the asset holds every byte."""
    monkeypatch.setenv("BAKERY_READ_TIMEOUT", "20")   # a body short of its length stalls
    gh, api = github
    image = tmp_path / "a.raw"
    sha = random_file(image, 24 << 20)   # more than the socket buffers hold
    client = gh_publisher.GitHub("owner/bakery", TOKEN, api, backoff=0.01)
    rel = client.release("docker-24.0.9", None, "body")
    gh.cut_uploads = [cut]
    assert client.sync(rel, {"a.raw": image, "SHA256SUMS": f"{sha}  a.raw\n".encode()}) == [
        "a.raw", "SHA256SUMS"]
    assert not gh.cut_uploads and gh.uploads == [(rel["id"], "a.raw"), (rel["id"], "SHA256SUMS")]
    assert assets_of(gh, "docker-24.0.9")["a.raw"] == image.read_bytes()
    asset = next(a for a in gh.assets.values() if a["name"] == "a.raw")
    assert asset["digest"] == f"sha256:{sha}"
    assert gh.upload_headers[:2] == [(str(24 << 20), None)] * 2
    err = capsys.readouterr().err
    assert ("(HTTP 429), attempt 1/5" if cut == 429 else "retrying POST http://127.0.0.1:") in err
    assert TOKEN not in err


def test_an_empty_file_is_uploaded_with_content_length_zero(tmp_path, github):
    """requests would send an empty file chunked; it goes as an empty body instead."""
    gh, api = github
    (tmp_path / "empty.conf").write_bytes(b"")
    client = gh_publisher.GitHub("owner/bakery", TOKEN, api, backoff=0.01)
    rel = client.release("docker-24.0.9", None, "body")
    assert client.sync(rel, {"empty.conf": tmp_path / "empty.conf"}) == ["empty.conf"]
    assert gh.upload_headers == [("0", None)]
    assert assets_of(gh, "docker-24.0.9") == {"empty.conf": b""}


class Elsewhere:
    """Another host (127.0.0.2, not the API's 127.0.0.1): records every request it gets, with
    its Authorization header, and answers 404."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []   # (method, path, Authorization)
        seen = self.seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                seen.append((self.command, self.path, self.headers.get("Authorization")))
                data = b'{"message": "Not Found"}'
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.url = f"http://127.0.0.2:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def elsewhere():
    other = Elsewhere()
    yield other
    other.close()


def pointing_to(upload_url: str):
    """A release answer whose upload_url is `upload_url` (the template part appended)."""
    return lambda doc: {**doc, "upload_url": upload_url + "{?name,label}"}


@pytest.mark.parametrize("api, uploads", [
    ("https://api.github.com", "https://uploads.github.com"),
    ("https://api.github.com/", "https://uploads.github.com"),
    ("https://API.GitHub.com:443", "https://uploads.github.com"),
    ("https://api.octocorp.ghe.com", "https://uploads.octocorp.ghe.com"),   # Enterprise Cloud
    ("https://ghe.example.com/api/v3", "https://ghe.example.com"),         # Enterprise Server
    ("https://api.corp.example/api/v3/", "https://api.corp.example"),     # ... named api.*
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),                    # an emulation
    ("http://[::1]:8080/", "http://[::1]:8080"),
    ("ftp://api.github.com", None), ("api.github.com", None), ("https://:80", None),
    ("https://user:pw@api.github.com", None), ("https://api.github.com:99999", None),
])
def test_the_upload_origin_follows_the_configured_api(api, uploads):
    assert github_api.upload_origin(api) == uploads


@pytest.mark.parametrize("upload_url, refused", [
    ("https://uploads.github.com/repos/o/r/releases/1/assets", False),
    ("https://Uploads.GitHub.com:443/repos/o/r/releases/1/assets", False),
    ("http://uploads.github.com/repos/o/r/releases/1/assets", True),        # downgraded
    ("https://uploads.github.com:8443/repos/o/r/releases/1/assets", True),
    ("https://api.github.com/repos/o/r/releases/1/assets", True),
    ("https://uploads.github.com.example/repos/o/r/releases/1/assets", True),
    ("https://uploads.github.com@evil.example/repos/o/r/releases/1/assets", True),
    ("https://evil.example/repos/o/r/releases/1/assets", True),
    ("https://x@uploads.github.com/repos/o/r/releases/1/assets", True),    # credentials
])
def test_only_the_documented_upload_host_gets_github_coms_token(upload_url, refused):
    problem = github_api.upload_problem(upload_url, github_api.API)
    assert (problem is not None) == refused
    if refused:
        assert "https://uploads.github.com" in problem


@pytest.mark.parametrize("step", ["get release", "create release"])
@pytest.mark.parametrize("where", ["other host", "other port", "https", "userinfo", "token"])
def test_an_upload_url_elsewhere_is_refused_and_never_contacted(github, elsewhere, step, where):
    """A tampered or broken answer names an upload_url on another host: the release is
    refused before any upload, and that host never hears from the publisher (let alone
    gets the token)."""
    gh, api = github
    port = api.rsplit(":", 1)[1]
    path = "/uploads/repos/owner/bakery/releases/9/assets"
    target = {"other host": f"{elsewhere.url}{path}",
              "other port": f"http://127.0.0.1:{elsewhere.url.rsplit(':', 1)[1]}{path}",
              "https": f"https://127.0.0.1:{port}{path}",
              "userinfo": f"http://127.0.0.1:{port}@{elsewhere.url.removeprefix('http://')}{path}",
              "token": f"{elsewhere.url}/{TOKEN}{path}"}[where]
    client = gh_publisher.GitHub("owner/bakery", TOKEN, api, attempts=2, backoff=0.01)
    if step == "get release":
        client.release("docker-24.0.9", None, "body")
    gh.log.clear()
    gh.mangle = [pointing_to(target)]
    with pytest.raises(BakeryError) as err:
        client.release("docker-24.0.9", None, "body")
    assert not gh.mangle                       # the answer meant was the one refused
    message = err.value.message
    assert message.startswith(f"GitHub: {api}/repos/owner/bakery/releases/tags/docker-24.0.9: "
                              "the release's 'upload_url' "), message
    assert f"is not on {api}," in message and "refused" in message
    assert "GITHUB_API_URL" in err.value.hint
    assert TOKEN not in str(err.value)
    if where == "userinfo":
        assert f"http://***@{elsewhere.url.removeprefix('http://')}{path}" in message
    elif where != "token":
        assert target in message
    assert elsewhere.seen == []
    assert gh.uploads == [] and not [p for m, p in gh.log if m == "POST" and "uploads" in p]


def test_a_publish_whose_release_names_another_upload_host_uploads_nothing(
        tmp_path, github, elsewhere, project):
    gh, api = github
    env = {"GITHUB_TOKEN": TOKEN, "GITHUB_API_URL": api}
    config = release.ReleaseConfig("https://x.invalid/")
    fake_image(tmp_path, "docker", "24.0.9", b"amd")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    gh.mangle = [pointing_to(f"{elsewhere.url}/uploads/repos/owner/bakery/releases/2/assets")]
    with pytest.raises(BakeryError) as err:
        gh_publisher.publish_github(dest, "owner/bakery", config, project, env)
    assert elsewhere.seen == []                # not asked, so never given the token
    assert "the release's 'upload_url' " in err.value.message and "refused" in err.value.message
    assert gh.uploads == [] and gh.assets == {}
    assert "metadata" not in {r["tag_name"] for r in gh.releases.values()}
    # the release was created; once the answers are right again, the publish completes
    uploaded = gh_publisher.publish_github(dest, "owner/bakery", config, project, env)
    assert "docker-24.0.9/docker-24.0.9-x86-64.raw" in uploaded and elsewhere.seen == []


def test_sync_refuses_a_release_whose_upload_url_is_elsewhere_before_any_request(
        github, elsewhere):
    gh, api = github
    client = gh_publisher.GitHub("owner/bakery", TOKEN, api, backoff=0.01)
    rel = {"id": 5, "upload_url": f"{elsewhere.url}/uploads/assets{{?name,label}}"}
    with pytest.raises(BakeryError, match="is refused"):
        client.sync(rel, {"a.raw": b"image"})
    assert gh.log == [] and elsewhere.seen == []


@pytest.mark.parametrize("value", ["api.github.com", "ftp://api.github.com", "https://:443",
                                   f"https://x:{TOKEN}@ghe.example/api/v3"])
def test_an_unusable_github_api_url_is_named_before_any_request(tmp_path, github, project, value):
    gh, _ = github
    with pytest.raises(BakeryError, match="GITHUB_API_URL") as err:
        gh_publisher.publish_github(tmp_path, "owner/bakery", release.ReleaseConfig("https://x.invalid/"),
                                    project, {"GITHUB_TOKEN": TOKEN, "GITHUB_API_URL": value})
    assert "api.github.com" in err.value.hint and TOKEN not in str(err.value)
    assert gh.log == []


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_redirect_to_another_host_does_not_carry_the_token(github, elsewhere, method):
    """requests drops Authorization when a redirect changes the host (should_strip_auth):
    a redirected release lookup or upload reaches the other host without the token."""
    gh, api = github
    client = gh_publisher.GitHub("owner/bakery", TOKEN, api, attempts=1, backoff=0.01)
    rel = client.release("docker-24.0.9", None, "body")
    gh.redirects = {method: f"{elsewhere.url}/moved"}
    if method == "GET":   # the lookup's 404 reads as "no such release": the POST finds it
        assert client.release("docker-24.0.9", None, "body")["id"] == rel["id"]
    else:                 # an upload answered 404 is an error, naming no token
        with pytest.raises(BakeryError, match="HTTP 404") as err:
            client.sync(rel, {"a.raw": b"image"})
        assert TOKEN not in str(err.value)
    assert not gh.redirects
    assert [(m, p) for m, p, _ in elsewhere.seen] == [(method, "/moved")]
    assert elsewhere.seen[0][2] is None   # no Authorization header
