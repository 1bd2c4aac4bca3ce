"""The GitHub Releases publisher against a loopback server implementing the documented REST
endpoints it uses (release by tag, create release, list/upload/delete assets)."""
from __future__ import annotations

import email.utils
import hashlib
import http.server
import json
import os
import socket
import threading
import time
import tracemalloc
import urllib.parse
from pathlib import Path

import git
import pytest

from sysext_bakery.publish import github as gh_publisher
from sysext_bakery.publish import sysupdate as release
from sysext_bakery.build import sums
from sysext_bakery.errors import BakeryError
from sysext_bakery.model import github as github_api
from sysupdate import gpg_key, write_provenance  # noqa: F401
from test_publish import fake_image, run

TOKEN = "ghp_secret_token_value_123"
CUT = 1 << 20   # bytes of a cut-off upload's body the emulator reads


class FakeGitHub:
    def __init__(self) -> None:
        self.releases: dict[int, dict] = {}
        self.assets: dict[int, dict] = {}      # asset id -> asset (+ "release_id", "data")
        self.log: list[tuple[str, str]] = []
        self.uploads: list[tuple[int, str]] = []    # (release id, asset name), in order
        self.failures: list[tuple[int, dict]] = []   # (status, headers) served before real answers
        self.fail_after: list[int] = []   # statuses answered to POSTs *after* doing their work
        self.fail_uploads: list[int] = []  # statuses answered to uploads, storing nothing
        self.raw: list[bytes] = []   # bodies answered (200, JSON) before real answers: hostile ones
        self.mangle: list = []   # functions applied in turn to the next successful JSON answers
        self.redirects: dict[str, str] = {}   # method -> Location: its next request gets a 307
        # uploads cut off after CUT bytes of their body: answered with the status early (the
        # rest read and dropped), or, for None, the connection dropped; nothing is stored
        self.cut_uploads: list[int | None] = []
        self.upload_headers: list[tuple[str | None, str | None]] = []   # Content-Length, TE
        self.keep = True   # keep uploaded bytes as "data" (off: only their digest and size)
        self.next_id = 1

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id


def make_handler(gh: FakeGitHub, base: list[str]):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def reply(self, status: int, body=None, headers: dict | None = None) -> None:
            if status < 300 and body is not None and gh.mangle:
                body = gh.mangle.pop(0)(body)
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def receive(self, length: int) -> tuple[bytes | None, int, str] | None:
            """An upload's body read in pieces, as (data if kept, size, digest); None if the
            connection ended first: like GitHub, nothing of it is stored."""
            digest, kept, left = hashlib.sha256(), bytearray(), length
            while left:
                piece = self.rfile.read(min(left, 1 << 20))
                if not piece:
                    self.close_connection = True
                    return None
                digest.update(piece)
                left -= len(piece)
                if gh.keep:
                    kept += piece
            return (bytes(kept) if gh.keep else None), length, "sha256:" + digest.hexdigest()

        def cut(self, status: int | None, length: int) -> None:
            self.rfile.read(min(length, CUT))
            self.close_connection = True
            if status is None:
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.reply(status, {"message": "Server Error"}, {"Retry-After": "0"})
            self.wfile.flush()
            left = length - min(length, CUT)
            while left and (piece := self.rfile.read(min(left, 1 << 20))):
                left -= len(piece)

        def handle_any(self, method: str) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            length = int(self.headers.get("Content-Length") or 0)
            gh.log.append((method, url.path))
            upload = url.path.startswith("/uploads/")
            if upload:
                gh.upload_headers.append((self.headers.get("Content-Length"),
                                          self.headers.get("Transfer-Encoding")))
                if gh.cut_uploads:
                    return self.cut(gh.cut_uploads.pop(0), length)
                received = self.receive(length)
                if received is None:
                    return
                body = b""
            else:
                body = self.rfile.read(length) if length else b""
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self.reply(401, {"message": "Bad credentials"})
            if method in gh.redirects:
                return self.reply(307, None, {"Location": gh.redirects.pop(method)})
            if gh.raw:
                data = gh.raw.pop(0)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                return self.wfile.write(data)
            if gh.failures:
                status, headers = gh.failures.pop(0)
                return self.reply(status, {"message": "try again"}, headers)
            parts = url.path.strip("/").split("/")
            if parts[:1] == ["uploads"]:   # POST /uploads/repos/o/r/releases/{id}/assets?name=
                rid = int(parts[5])
                if gh.fail_uploads:
                    return self.reply(gh.fail_uploads.pop(0), {"message": "Server Error"})
                if any(a["release_id"] == rid and a["name"] == query["name"]
                       for a in gh.assets.values()):
                    return self.reply(422, {"message": "Validation Failed",
                                            "errors": [{"code": "already_exists"}]})
                data, size, digest = received
                asset = {"id": gh.new_id(), "name": query["name"], "size": size,
                         "digest": digest, "release_id": rid, "data": data}
                gh.assets[asset["id"]] = asset
                gh.uploads.append((rid, query["name"]))
                if gh.fail_after:
                    return self.reply(gh.fail_after.pop(0), {"message": "Server Error"})
                return self.reply(201, {k: v for k, v in asset.items() if k != "data"})
            if parts[:1] != ["repos"] or parts[3:4] != ["releases"]:
                return self.reply(404, {"message": "Not Found"})
            rest = parts[4:]
            if method == "GET" and rest[:1] == ["tags"]:
                found = [r for r in gh.releases.values() if r["tag_name"] == rest[1]]
                return self.reply(200, found[0]) if found else self.reply(404, {"message": "Not Found"})
            if method == "POST" and not rest:
                data = json.loads(body)
                if any(r["tag_name"] == data["tag_name"] for r in gh.releases.values()):
                    return self.reply(422, {"message": "Validation Failed"})
                rid = gh.new_id()
                gh.releases[rid] = {
                    "id": rid, "tag_name": data["tag_name"], "name": data.get("name"),
                    "target_commitish": data.get("target_commitish", "main"),
                    "upload_url": f"{base[0]}/uploads/repos/{parts[1]}/{parts[2]}/releases/"
                                  f"{rid}/assets{{?name,label}}"}
                if gh.fail_after:
                    return self.reply(gh.fail_after.pop(0), {"message": "Server Error"})
                return self.reply(201, gh.releases[rid])
            if method == "GET" and len(rest) == 2 and rest[1] == "assets":
                mine = [{k: v for k, v in a.items() if k != "data"} for a in gh.assets.values()
                        if a["release_id"] == int(rest[0])]
                per_page, page = int(query.get("per_page", 30)), int(query.get("page", 1))
                return self.reply(200, mine[(page - 1) * per_page: page * per_page])
            if method == "DELETE" and rest[:1] == ["assets"]:
                gh.assets.pop(int(rest[1]), None)
                return self.reply(204)
            return self.reply(404, {"message": "Not Found"})

        def do_GET(self):
            self.handle_any("GET")

        def do_POST(self):
            self.handle_any("POST")

        def do_DELETE(self):
            self.handle_any("DELETE")

    return Handler


@pytest.fixture
def github():
    gh, base = FakeGitHub(), [""]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(gh, base))
    base[0] = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield gh, base[0]
    server.shutdown()
    server.server_close()


def assets_of(gh: FakeGitHub, tag: str) -> dict[str, bytes]:
    rid = next(r["id"] for r in gh.releases.values() if r["tag_name"] == tag)
    return {a["name"]: a["data"] for a in gh.assets.values() if a["release_id"] == rid}


@pytest.fixture
def project(tmp_path) -> Path:
    repo = git.Repo.init(tmp_path / "project")
    (tmp_path / "project/README").write_text("x\n")
    repo.index.add(["README"])
    repo.index.commit("init", author=git.Actor("t", "t@example.invalid"),
                      committer=git.Actor("t", "t@example.invalid"))
    return tmp_path / "project"


def test_publishes_releases_and_skips_equal_assets(tmp_path, github, project, capsys):
    gh, api = github
    env = {"GITHUB_TOKEN": TOKEN, "GITHUB_API_URL": api}
    fake_image(tmp_path, "docker", "24.0.9", b"amd", stream="24")
    fake_image(tmp_path, "docker", "24.0.9", b"arm", stream="24", arch="arm64")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    config = release.ReleaseConfig(base_url="https://x.invalid/")
    uploaded = gh_publisher.publish_github(dest, "owner/bakery", config, project, env)
    assert "docker-24.0.9/docker-24.0.9-x86-64.raw" in uploaded

    per_version = assets_of(gh, "docker-24.0.9")
    assert set(per_version) == {"docker-24.0.9-x86-64.raw", "docker-24.0.9-arm64.raw", "SHA256SUMS",
                                "docker.conf", "docker.transfer", "docker-24.conf", "docker-24.transfer"}
    assert per_version["docker-24.0.9-x86-64.raw"] == b"amd"
    assert per_version["SHA256SUMS"] == (dest / "SHA256SUMS").read_bytes()
    meta = assets_of(gh, "metadata")
    assert {"SHA256SUMS", "noop.conf", "docker.conf", "index.json"} <= set(meta)
    assert not any(n.endswith(".raw") for n in meta)
    tag = git.Repo(project).tags["docker-24.0.9"]
    assert tag.tag is not None and tag.tag.message == "sysext docker 24.0.9"   # annotated

    gh.log.clear()
    assert gh_publisher.publish_github(dest, "owner/bakery", config, project, env) == []
    assert not [p for m, p in gh.log if m in ("POST", "DELETE")]

    # a new version: its own release; the metadata SHA256SUMS is replaced
    fake_image(tmp_path, "docker", "24.0.10", b"newer", stream="24")
    run(tmp_path, dest)
    uploaded = gh_publisher.publish_github(dest, "owner/bakery", config, project, env)
    assert "metadata/SHA256SUMS" in uploaded and "docker-24.0.10/docker-24.0.10-x86-64.raw" in uploaded
    assert assets_of(gh, "metadata")["SHA256SUMS"] == (dest / "SHA256SUMS").read_bytes()
    assert TOKEN not in capsys.readouterr().out


def test_retries_rate_limits_and_server_errors(tmp_path, github, project):
    gh, api = github
    fake_image(tmp_path, "docker", "24.0.9", b"amd")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    gh.failures = [(502, {}), (429, {"Retry-After": "0"}), (429, {"Retry-After": past}),
                   (403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "0"}), (503, {})]
    client = gh_publisher.GitHub("owner/bakery", TOKEN, api, backoff=0.01)
    rel = client.release("docker-24.0.9", None, "body")
    assert not gh.failures and rel["tag_name"] == "docker-24.0.9"
    assert client.sync(rel, {"a.raw": b"x"}) == ["a.raw"]


def test_errors_name_the_request_but_never_the_token(tmp_path, github, project):
    gh, api = github
    fake_image(tmp_path, "docker", "24.0.9", b"amd")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    config = release.ReleaseConfig(base_url="https://x.invalid/")
    with pytest.raises(BakeryError) as err:
        gh_publisher.publish_github(dest, "owner/bakery", config, project,
                               {"GITHUB_TOKEN": "wrong-token", "GITHUB_API_URL": api})
    assert "401" in str(err.value) and "wrong-token" not in str(err.value)
    gh.failures = [(500, {})] * 10
    client = gh_publisher.GitHub("owner/bakery", TOKEN, api, attempts=3, backoff=0.01)
    with pytest.raises(BakeryError, match="HTTP 500") as err:
        client.release("x-1", None, "")
    assert TOKEN not in str(err.value)
    with pytest.raises(BakeryError, match="GITHUB_TOKEN"):
        gh_publisher.publish_github(dest, "owner/bakery", config, project, {})


def test_an_upload_that_landed_despite_a_502_is_not_repeated(github, capsys):
    """GitHub stored the asset but the answer was a 502: a blind retry would meet a 422
    (name taken); the client lists the assets instead and finds its upload there."""
    gh, api = github
    client = gh_publisher.GitHub("owner/bakery", TOKEN, api, backoff=0.01)
    gh.fail_after = [502]                       # the release is created, the answer is lost
    rel = client.release("docker-24.0.9", None, "body")
    assert [r["tag_name"] for r in gh.releases.values()] == ["docker-24.0.9"]
    gh.fail_after = [502]
    gh.log.clear()
    assert client.sync(rel, {"a.raw": b"image"}) == ["a.raw"]
    assert gh.uploads == [(rel["id"], "a.raw")]           # exactly one upload
    assert assets_of(gh, "docker-24.0.9") == {"a.raw": b"image"}
    assert [m for m, _ in gh.log].count("POST") == 1
    assert "HTTP 502" not in capsys.readouterr().err       # nothing to retry: it had landed


def test_an_upload_that_did_not_land_is_retried(github, capsys):
    gh, api = github
    client = gh_publisher.GitHub("owner/bakery", TOKEN, api, backoff=0.01)
    rel = client.release("docker-24.0.9", None, "body")
    gh.fail_uploads = [502]                      # refused before storing anything
    assert client.sync(rel, {"a.raw": b"image"}) == ["a.raw"]
    assert gh.uploads == [(rel["id"], "a.raw")]
    assert assets_of(gh, "docker-24.0.9") == {"a.raw": b"image"}
    err = capsys.readouterr().err
    assert "retrying POST http://127.0.0.1:" in err and "(HTTP 502), attempt 1/5" in err
    assert TOKEN not in err


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


def test_images_go_up_before_the_manifest(tmp_path, github, project):
    gh, api = github
    fake_image(tmp_path, "docker", "24.0.9", b"amd", stream="24")
    fake_image(tmp_path, "docker", "24.0.9", b"arm", stream="24", arch="arm64")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    gh_publisher.publish_github(dest, "owner/bakery", release.ReleaseConfig("https://x.invalid/"),
                                project, {"GITHUB_TOKEN": TOKEN, "GITHUB_API_URL": api})
    rid = next(r["id"] for r in gh.releases.values() if r["tag_name"] == "docker-24.0.9")
    order = [name for r, name in gh.uploads if r == rid]
    assert order[-1] == "SHA256SUMS"
    assert set(order[:2]) == {"docker-24.0.9-x86-64.raw", "docker-24.0.9-arm64.raw"}
    assert sorted(["SHA256SUMS.gpg", "SHA256SUMS", "a.conf", "b.raw"],
                  key=gh_publisher.upload_order) == ["b.raw", "a.conf", "SHA256SUMS", "SHA256SUMS.gpg"]


def test_a_published_image_asset_is_never_replaced(tmp_path, github, project):
    gh, api = github
    env = {"GITHUB_TOKEN": TOKEN, "GITHUB_API_URL": api}
    config = release.ReleaseConfig("https://x.invalid/")
    fake_image(tmp_path, "docker", "24.0.9", b"first")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    gh_publisher.publish_github(dest, "owner/bakery", config, project, env)
    # the directory was published afresh (CI starts empty) from a build with other bytes
    fresh = tmp_path / "fresh"
    fake_image(fresh, "docker", "24.0.9", b"second")
    run(fresh, tmp_path / "pub2")
    on_github = "sha256:" + hashlib.sha256(b"first").hexdigest()
    gh.log.clear()
    with pytest.raises(BakeryError) as err:
        gh_publisher.publish_github(tmp_path / "pub2", "owner/bakery", config, project, env)
    assert on_github in str(err.value)
    assert hashlib.sha256(b"second").hexdigest() in str(err.value)
    assert "docker-24.0.9-x86-64.raw" in str(err.value)
    assert not [p for m, p in gh.log if m in ("POST", "DELETE")]
    assert assets_of(gh, "docker-24.0.9")["docker-24.0.9-x86-64.raw"] == b"first"


def test_a_version_release_gets_only_its_own_transfer_files(tmp_path, github, project):
    gh, api = github
    fake_image(tmp_path, "docker", "24.0.9", b"amd", stream="24")
    fake_image(tmp_path, "docker", "25.0.0", b"new", stream="25")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    (dest / "docker-compose.conf").write_text("another recipe's transfer\n")
    (dest / "docker-compose.transfer").write_text("another recipe's transfer\n")
    gh_publisher.publish_github(dest, "owner/bakery", release.ReleaseConfig("https://x.invalid/"),
                                project, {"GITHUB_TOKEN": TOKEN, "GITHUB_API_URL": api})
    assert {n for n in assets_of(gh, "docker-24.0.9") if not n.endswith(".raw")} == {
        "SHA256SUMS", "docker.conf", "docker.transfer", "docker-24.conf", "docker-24.transfer"}


def test_a_tag_without_a_committer_identity_says_how_to_set_one(project, monkeypatch):
    monkeypatch.setenv("HOME", str(project.parent))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME",
                "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(var, raising=False)
    git.Repo(project).config_writer().set_value("user", "useConfigOnly", "true").release()
    with pytest.raises(BakeryError) as err:
        gh_publisher.tag_locally(project, "docker-24.0.9", None, "sysext docker 24.0.9")
    assert "docker-24.0.9" in str(err.value) and "GIT_COMMITTER_EMAIL" in str(err.value)
    assert "docker-24.0.9" not in git.Repo(project).tags


def test_the_metadata_release_drops_assets_no_longer_published(tmp_path, github, project, gpg_key):
    """A release that went unsigned: SHA256SUMS.gpg and the key leave the metadata release
    too, rather than sit beside a SHA256SUMS they never signed."""
    from sysext_bakery.publish import sign
    gh, api = github
    env = {"GITHUB_TOKEN": TOKEN, "GITHUB_API_URL": api}
    config = release.ReleaseConfig("https://x.invalid/")
    fake_image(tmp_path, "docker", "24.0.9", b"amd")
    dest = tmp_path / "pub"
    with sign.signer_from_env({"BAKERY_SIGNING_KEY": gpg_key.armored_secret}) as signer:
        run(tmp_path, dest, signer)
    gh_publisher.publish_github(dest, "owner/bakery", config, project, env)
    assert {"SHA256SUMS.gpg", "bakery-signing-key.gpg"} <= set(assets_of(gh, "metadata"))
    version_assets = set(assets_of(gh, "docker-24.0.9"))

    fake_image(tmp_path, "docker", "24.0.10", b"newer")
    run(tmp_path, dest, allow_unsigned=True)
    gh_publisher.publish_github(dest, "owner/bakery", config, project, env)
    meta = assets_of(gh, "metadata")
    assert "SHA256SUMS.gpg" not in meta and "bakery-signing-key.gpg" not in meta
    assert meta["SHA256SUMS"] == (dest / "SHA256SUMS").read_bytes()
    assert {"docker.conf", "index.json", "noop.conf"} <= set(meta)
    assert set(assets_of(gh, "docker-24.0.9")) == version_assets   # the archive stays
    gh.log.clear()
    gh_publisher.publish_github(dest, "owner/bakery", config, project, env)
    assert not [p for m, p in gh.log if m in ("POST", "DELETE")]


@pytest.mark.parametrize("answer, said", [
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON: nested too deeply (more than 64 levels)"),
    # parses within Python's recursion limit, but past the bound every JSON answer shares
    (b'{"a": ' * 65 + b"1" + b"}" * 65, "not valid JSON: nested too deeply (more than 64 levels)"),
    (b"<html>Sign in</html>", "not valid JSON: Expecting value"),
    (b"[1, 2]", "the answer is a JSON array, not an object"),
    # JSON objects, but without what the publisher goes on to read
    (b'{"tag_name": "docker-24.0.9"}', "the answer has no 'id' field"),
    (b'{"id": true, "upload_url": "https://uploads.example/x"}', "'id' is a JSON boolean, expected an integer"),
    (b'{"id": 7, "upload_url": null}', "'upload_url' is a JSON null, expected a string"),
])
def test_a_hostile_or_foreign_answer_is_a_clear_error(github, answer: bytes, said: str):
    """The API's answers go through discovery's one JSON rule (model/reply.parse_json): a
    deeply nested answer is a BakeryError naming the request, not a RecursionError."""
    gh, api = github
    client = gh_publisher.GitHub("owner/bakery", TOKEN, api, attempts=2, backoff=0.01)
    gh.raw = [answer]
    with pytest.raises(BakeryError) as err:
        client.release("docker-24.0.9", None, "body")
    url = f"{api}/repos/owner/bakery/releases/tags/docker-24.0.9"
    assert err.value.message.startswith(f"GitHub: {url}: ")
    assert said in err.value.message and "GITHUB_API_URL" in err.value.hint
    assert len(err.value.message) < 300 and TOKEN not in str(err.value)
    # the asset list must be a list of objects
    rel = client.release("docker-24.0.9", None, "body")
    gh.raw = [b'[{"name": "a.raw", "id": 3}, "b.raw"]']
    with pytest.raises(BakeryError, match="entry 1 of the answer is a JSON string, not an object"):
        client.assets(rel)
    gh.raw = [b'{"name": "a.raw", "id": 3}']
    with pytest.raises(BakeryError, match="the answer is a JSON object, not an array"):
        client.assets(rel)
    gh.raw = [b'[{"name": "a.raw", "id": 3}, {"name": "b.raw"}]']
    with pytest.raises(BakeryError, match="entry 1 of the answer has no 'id' field"):
        client.assets(rel)


def without(key: str, value=None):
    """An answer (an object, or the first entry of a list) without `key`, or with `value`."""
    def change(obj: dict) -> dict:
        return {k: v for k, v in obj.items() if k != key} | ({key: value} if value else {})
    return lambda doc: [change(doc[0]), *doc[1:]] if isinstance(doc, list) else change(doc)


@pytest.mark.parametrize("step, change, said", [
    ("get release", without("id"), "the answer has no 'id' field"),
    ("get release", without("upload_url"), "the answer has no 'upload_url' field"),
    ("get release", without("upload_url", 7), "the answer: 'upload_url' is a JSON integer, "
                                              "expected a string"),
    ("get release", without("id", "12"), "the answer: 'id' is a JSON string, expected an integer"),
    ("get release", without("id", True), "the answer: 'id' is a JSON boolean, expected an integer"),
    ("get release", without("upload_url", "uploads/{?name}"), "the release's 'upload_url' is "
                                                             "unusable: URL 'uploads/' must start"),
    ("create release", without("id"), "the answer has no 'id' field"),
    ("create release", without("upload_url"), "the answer has no 'upload_url' field"),
    ("list assets", without("name"), "entry 0 of the answer has no 'name' field"),
    ("list assets", without("id"), "entry 0 of the answer has no 'id' field"),
    ("list assets", without("name", ["a.conf"]), "entry 0 of the answer: 'name' is a JSON array, "
                                                 "expected a string"),
    ("upload", without("id"), "the answer has no 'id' field"),
])
def test_an_answer_without_a_documented_field_is_a_clear_error(github, step, change, said):
    """A well-formed answer lacking a field the publisher reads (or with another type) is a
    BakeryError naming the request and the field, never a KeyError or TypeError."""
    gh, api = github
    client = gh_publisher.GitHub("owner/bakery", TOKEN, api, attempts=2, backoff=0.01)
    releases = f"{api}/repos/owner/bakery/releases"
    if step != "create release":
        rel = client.release("docker-24.0.9", None, "body")
        client.sync(rel, {"docker.conf": b"[Transfer]\n"})
    call = {"get release": lambda: client.release("docker-24.0.9", None, "body"),
            "create release": lambda: client.release("docker-24.0.10", None, "body"),
            "list assets": lambda: client.assets(rel),
            "upload": lambda: client.sync(rel, {"docker-24.0.9-x86-64.raw": b"image"})}[step]
    url = {"get release": f"{releases}/tags/docker-24.0.9", "create release": releases,
           "list assets": f"{releases}/", "upload": f"{api}/uploads/repos/owner/bakery/releases/"}
    # the upload's first successful answer is the asset list it looks at first
    gh.mangle = [lambda doc: doc, change] if step == "upload" else [change]
    with pytest.raises(BakeryError) as err:
        call()
    assert err.value.message.startswith(f"GitHub: {url[step]}"), err.value.message
    assert said in err.value.message, err.value.message
    assert "GITHUB_API_URL" in err.value.hint and TOKEN not in str(err.value)
    assert not gh.mangle   # the answer meant was the one refused


@pytest.mark.parametrize("name", ["SHA256SUMS", "index.json"])
def test_a_published_file_that_is_not_utf8_is_named_before_any_request(tmp_path, github, project,
                                                                        name):
    gh, api = github
    fake_image(tmp_path, "docker", "24.0.9", b"amd")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    (dest / name).write_bytes(b"\xff" + (dest / name).read_bytes())
    with pytest.raises(BakeryError) as err:
        gh_publisher.publish_github(dest, "owner/bakery", release.ReleaseConfig("https://x.invalid/"),
                                    project, {"GITHUB_TOKEN": TOKEN, "GITHUB_API_URL": api})
    assert err.value.message.startswith(f"{dest / name}: ") and "utf-8" in err.value.message.lower()
    assert gh.log == []


@pytest.mark.parametrize("name", ["SHA256SUMS", "index.json"])
def test_a_published_file_past_the_index_limit_is_named_before_any_request(tmp_path, github,
                                                                           project, name):
    gh, api = github
    fake_image(tmp_path, "docker", "24.0.9", b"amd")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    with (dest / name).open("ab") as f:
        f.truncate(release.MAX_INDEX + 1)          # sparse: no disk space spent
    with pytest.raises(BakeryError) as err:
        gh_publisher.publish_github(dest, "owner/bakery", release.ReleaseConfig("https://x.invalid/"),
                                    project, {"GITHUB_TOKEN": TOKEN, "GITHUB_API_URL": api})
    assert err.value.message.startswith(f"{dest / name}: larger than "), err.value.message
    assert gh.log == []


# ---- where the token may go: the API and its one upload origin ---------------------------

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
