"""A loopback server implementing the documented GitHub REST endpoints the publisher uses
(release by tag, create release, list/upload/delete assets), as pytest fixtures."""
from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
import urllib.parse
from pathlib import Path

import git
import pytest


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


