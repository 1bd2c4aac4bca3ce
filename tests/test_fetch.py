"""fetch against real loopback servers: pytest-httpserver for plain responses, and a small
http.server origin (below) that can cut a body mid-way and answer Range requests."""
from __future__ import annotations

import hashlib
import os
import pty
import re
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from werkzeug import Request, Response

from sysext_bakery.errors import BakeryError
from sysext_bakery.build.fetch import MAX_RESUMES, Fetched, fetch, fetch_text, parse_checksum

UPSTREAM = "https://download.example.org/linux/static/stable/x86_64/docker-24.0.9.tgz"
MIRRORED = "/download.example.org/linux/static/stable/x86_64/docker-24.0.9.tgz"
BODY = os.urandom(3 * 1024 * 1024 + 123)
DIGEST = hashlib.sha256(BODY).hexdigest()


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAKERY_FETCH_BACKOFF", "0.01")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def leftovers(cache: Path) -> list[str]:
    """Everything in the cache: entries and temp files."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())


# --- the cutting origin ------------------------------------------------------------------

class Origin(ThreadingHTTPServer):
    """Serves `body` at every path; `cuts[i]` bytes of the i-th response are sent before the
    connection is dropped (None = the whole body). Records the headers of every request."""
    daemon_threads = True

    def __init__(self, body: bytes, cuts: list[int | None], honour_range: bool = True,
                 redirect_ranges_to: str | None = None, range_from_zero: bool = False):
        super().__init__(("127.0.0.1", 0), OriginHandler)
        self.body = memoryview(body)  # slices of a memoryview are not copies
        self.cuts = list(cuts)
        self.honour_range = honour_range
        self.redirect_ranges_to = redirect_ranges_to
        self.range_from_zero = range_from_zero  # a broken server: 206, but not the range asked
        self.seen: list[dict[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class OriginHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Origin

    def do_GET(self) -> None:
        srv = self.server
        srv.seen.append(dict(self.headers))
        size = len(srv.body)
        start = 0
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if wanted and srv.redirect_ranges_to:
            self.send_response(302)
            self.send_header("Location", srv.redirect_ranges_to + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if wanted and srv.honour_range:
            start = 0 if srv.range_from_zero else int(wanted.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(size - start))
        self.send_header("ETag", '"v1"')
        self.end_headers()
        cut = srv.cuts.pop(0) if srv.cuts else None
        end = size if cut is None else start + cut
        self.wfile.write(srv.body[start:end])
        if cut is not None:
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def origin():
    servers: list[Origin] = []

    def start(body: bytes, cuts: list[int | None], **options) -> Origin:
        srv = Origin(body, cuts, **options)
        threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


# --- download, cache, trust ---------------------------------------------------------------

def test_download_then_cache_hit_without_network(httpserver, cache: Path, capsys) -> None:
    httpserver.expect_request(MIRRORED).respond_with_data(BODY)
    mirror = httpserver.url_for("/")

    got = fetch(UPSTREAM, DIGEST, cache, mirror=mirror)
    assert got == Fetched(cache / DIGEST, DIGEST, first_use=False)
    assert got.path.read_bytes() == BODY
    assert leftovers(cache) == [DIGEST]
    assert len(httpserver.log) == 1

    again = fetch(UPSTREAM, DIGEST.upper(), cache, mirror=mirror)
    assert again == got
    assert len(httpserver.log) == 1  # served from the cache

    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"fetched docker-24.0.9.tgz 3.1 MB sha256 {DIGEST[:12]}…\n"


def test_first_use_when_no_sha256_is_known(httpserver, cache: Path) -> None:
    httpserver.expect_request(MIRRORED).respond_with_data(BODY)
    got = fetch(UPSTREAM, None, cache, mirror=httpserver.url_for("/"))
    assert got == Fetched(cache / DIGEST, DIGEST, first_use=True)
    assert got.path.read_bytes() == BODY
    assert (got.path.stat().st_mode & 0o777) == 0o644


def test_bad_pinned_sha256_is_refused(cache: Path) -> None:
    with pytest.raises(BakeryError, match=r"docker-24\.0\.9\.tgz: pinned sha256 'abc' is not 64"):
        fetch(UPSTREAM, "abc", cache)


def test_checksum_file_with_several_lines(httpserver, cache: Path) -> None:
    sums = (f"{'1' * 64}  docker-24.0.8.tgz\n"
            f"{DIGEST.upper()} *dist/docker-24.0.9.tgz\n"
            f"{'2' * 64}  docker-24.0.9.tgz.asc\n")
    httpserver.expect_request(MIRRORED).respond_with_data(BODY)
    httpserver.expect_request("/download.example.org/SHA256SUMS").respond_with_data(sums)

    got = fetch(UPSTREAM, None, cache, checksum_url="https://download.example.org/SHA256SUMS",
                mirror=httpserver.url_for("/"))
    assert got == Fetched(cache / DIGEST, DIGEST, first_use=False)


def test_checksum_file_disagrees_with_download(httpserver, cache: Path) -> None:
    httpserver.expect_request(MIRRORED).respond_with_data(BODY)
    httpserver.expect_request(MIRRORED + ".sha256").respond_with_data("f" * 64 + "\n")
    with pytest.raises(BakeryError, match=f"sha256 mismatch: expected {'f' * 64}, got {DIGEST}"):
        fetch(UPSTREAM, None, cache, checksum_url=UPSTREAM + ".sha256",
              mirror=httpserver.url_for("/"))
    assert leftovers(cache) == []


def test_checksum_file_without_entry_names_it(httpserver, cache: Path) -> None:
    httpserver.expect_request("/download.example.org/SHA256SUMS").respond_with_data(
        f"{'1' * 64}  a.tgz\n{'2' * 64}  b.tgz\n")
    with pytest.raises(BakeryError) as err:
        fetch(UPSTREAM, None, cache, checksum_url="https://download.example.org/SHA256SUMS",
              mirror=httpserver.url_for("/"))
    assert err.value.message == (
        "https://download.example.org/SHA256SUMS: no sha256 entry for docker-24.0.9.tgz "
        f"(the file lists a.tgz, b.tgz); checksum file of {UPSTREAM}")
    assert [r.path for r, _ in httpserver.log] == ["/download.example.org/SHA256SUMS"]


def test_pinned_sha256_wins_over_checksum_url(httpserver, cache: Path) -> None:
    httpserver.expect_request(MIRRORED).respond_with_data(BODY)
    got = fetch(UPSTREAM, DIGEST, cache, checksum_url=UPSTREAM + ".sha256",
                mirror=httpserver.url_for("/"))
    assert got.sha256 == DIGEST
    assert [r.path for r, _ in httpserver.log] == [MIRRORED]


def test_parse_checksum_formats() -> None:
    url = "https://example.org/v1/tool.tar.gz"
    assert parse_checksum(f"{'A' * 64}\n", url, "c") == "a" * 64
    with pytest.raises(BakeryError, match="c: no sha256 entry for tool.tar.gz"):   # names another file
        parse_checksum(f"{'b' * 64}  tool-other-name\n", url, "c")
    assert parse_checksum(f"# sums\n{'c' * 64}  x\n\n{'d' * 64}  ./tool.tar.gz\n", url, "c") == "d" * 64
    with pytest.raises(BakeryError, match="c: conflicting sha256 entries for tool.tar.gz"):
        parse_checksum(f"{'c' * 64}  tool.tar.gz\n{'d' * 64}  tool.tar.gz\n", url, "c")
    with pytest.raises(BakeryError, match="c: no sha256 entry for tool.tar.gz"):
        parse_checksum("<html>not found</html>", url, "c")


def test_progress_bar_on_a_terminal(httpserver, cache: Path) -> None:
    """stderr a terminal: rich draws a (transient) bar there; stdout stays empty."""
    httpserver.expect_request(MIRRORED).respond_with_data(BODY)
    code = ("import sys; from pathlib import Path; from sysext_bakery.build.fetch import fetch; "
            "fetch(sys.argv[1], sys.argv[2], Path(sys.argv[3]), mirror=sys.argv[4])")
    main, term = pty.openpty()
    shown = bytearray()

    def read_terminal() -> None:
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO once the child has gone and the terminal is closed
                return
            if not data:
                return
            shown.extend(data)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    proc = subprocess.run([sys.executable, "-c", code, UPSTREAM, DIGEST, str(cache),
                           httpserver.url_for("/")], stdout=subprocess.PIPE, stderr=term,
                          env={**os.environ, "TERM": "xterm", "COLUMNS": "100"}, timeout=60)
    os.close(term)
    reader.join(10)
    os.close(main)
    assert proc.returncode == 0, shown.decode(errors="replace")
    assert proc.stdout == b""
    assert b"\x1b[?25l" in shown  # rich's live display hides the cursor while drawing
    assert b"fetched docker-24.0.9.tgz 3.1 MB" in shown
    assert (cache / DIGEST).read_bytes() == BODY


# --- failures -----------------------------------------------------------------------------

def test_mismatch_message_and_nothing_left(httpserver, cache: Path) -> None:
    httpserver.expect_request(MIRRORED).respond_with_data(BODY)
    wrong = "0" * 64
    with pytest.raises(BakeryError) as err:
        fetch(UPSTREAM, wrong, cache, mirror=httpserver.url_for("/"))
    assert err.value.message == f"{UPSTREAM}: sha256 mismatch: expected {wrong}, got {DIGEST}"
    assert err.value.hint == ("if upstream re-published the file on purpose, update the sha256 "
                              "in release/lock.toml; otherwise treat the download as compromised")
    assert leftovers(cache) == []


def test_404_names_upstream_and_mirror(httpserver, cache: Path) -> None:
    httpserver.expect_request(MIRRORED).respond_with_data("nope", status=404)
    mirror = httpserver.url_for("/m").removesuffix("/m")
    with pytest.raises(BakeryError) as err:
        fetch(UPSTREAM, DIGEST, cache, mirror=mirror)
    assert err.value.message == f"{UPSTREAM}: HTTP 404 Not Found (from {mirror}{MIRRORED})"
    assert "release/lock.toml" in err.value.hint and "mirror" in err.value.hint
    assert len(httpserver.log) == 1  # 404 is not retried
    assert leftovers(cache) == []


def test_credentials_in_mirror_url_stay_out_of_messages(httpserver, cache: Path) -> None:
    httpserver.expect_request(MIRRORED).respond_with_data("nope", status=404)
    mirror = httpserver.url_for("/").replace("http://", "http://bot:s3cret@")
    with pytest.raises(BakeryError) as err:
        fetch(UPSTREAM, DIGEST, cache, mirror=mirror)
    assert "s3cret" not in str(err.value)
    assert f"(from http://***@{httpserver.host}:{httpserver.port}/" in err.value.message


def test_503_then_200_is_retried(httpserver, cache: Path) -> None:
    httpserver.expect_ordered_request(MIRRORED).respond_with_data("busy", status=503)
    httpserver.expect_ordered_request(MIRRORED).respond_with_data(BODY)
    got = fetch(UPSTREAM, DIGEST, cache, mirror=httpserver.url_for("/"))
    assert got.path.read_bytes() == BODY
    assert len(httpserver.log) == 2


def test_503_forever_gives_up(httpserver, cache: Path) -> None:
    httpserver.expect_request(MIRRORED).respond_with_data("busy", status=503)
    with pytest.raises(BakeryError, match=r"HTTP 503 Service Unavailable"):
        fetch(UPSTREAM, DIGEST, cache, mirror=httpserver.url_for("/"))
    assert len(httpserver.log) == 6  # the first try and 5 retries
    assert leftovers(cache) == []


def test_retry_after_is_respected(httpserver, cache: Path) -> None:
    httpserver.expect_ordered_request(MIRRORED).respond_with_data(
        "slow down", status=429, headers={"Retry-After": "1"})
    httpserver.expect_ordered_request(MIRRORED).respond_with_data(BODY)
    began = time.monotonic()
    fetch(UPSTREAM, DIGEST, cache, mirror=httpserver.url_for("/"))
    assert time.monotonic() - began >= 0.9  # the backoff alone would be 0.01 s


def test_connection_refused_is_retried_then_reported(cache: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BakeryError, match=rf"{re.escape(UPSTREAM)}: cannot connect "
                                          rf"\(from http://127.0.0.1:{port}/download.*\): .*"
                                          "Connection refused") as err:
        fetch(UPSTREAM, DIGEST, cache, mirror=f"http://127.0.0.1:{port}")
    assert "BAKERY_MIRROR" in err.value.hint
    assert leftovers(cache) == []


def test_http_upstream_without_mirror_is_refused(cache: Path) -> None:
    url = "http://download.example.org/tool.tgz"
    with pytest.raises(BakeryError, match="only https:// upstream URLs") as err:
        fetch(url, None, cache)
    assert "BAKERY_MIRROR" in err.value.hint
    with pytest.raises(BakeryError, match="only https:// upstream URLs"):
        fetch_text(url)
    with pytest.raises(BakeryError, match="only https:// upstream URLs"):
        fetch(UPSTREAM, None, cache, checksum_url="http://download.example.org/SUMS")


def test_http_upstream_through_mirror_is_fine(httpserver, cache: Path) -> None:
    httpserver.expect_request("/download.example.org/tool.tgz").respond_with_data(BODY)
    got = fetch("http://download.example.org/tool.tgz", DIGEST, cache,
                mirror=httpserver.url_for("/"))
    assert got.path.read_bytes() == BODY


# --- resume -------------------------------------------------------------------------------

def test_body_cut_then_resumed_with_range(origin, cache: Path) -> None:
    srv = origin(BODY, cuts=[1_000_000, 700_001])
    got = fetch(UPSTREAM, DIGEST, cache, mirror=srv.url)
    assert got.path.read_bytes() == BODY
    assert [h.get("Range") for h in srv.seen] == [None, "bytes=1000000-", "bytes=1700001-"]
    assert srv.seen[1]["If-Range"] == '"v1"'
    assert leftovers(cache) == [DIGEST]


def test_server_ignoring_range_restarts_from_zero(origin, cache: Path) -> None:
    srv = origin(BODY, cuts=[1_000_000], honour_range=False)
    got = fetch(UPSTREAM, None, cache, mirror=srv.url)
    assert got.sha256 == DIGEST and got.path.read_bytes() == BODY
    assert [h.get("Range") for h in srv.seen] == [None, "bytes=1000000-"]


def test_partial_answer_at_the_wrong_offset_restarts(origin, cache: Path) -> None:
    srv = origin(BODY, cuts=[1_000_000], range_from_zero=True)
    got = fetch(UPSTREAM, DIGEST, cache, mirror=srv.url)
    assert got.path.read_bytes() == BODY
    assert [h.get("Range") for h in srv.seen] == [None, "bytes=1000000-", None]


def test_bad_backoff_setting(httpserver, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAKERY_FETCH_BACKOFF", "fast")
    with pytest.raises(BakeryError, match="BAKERY_FETCH_BACKOFF='fast' is not a number"):
        fetch(UPSTREAM, DIGEST, cache, mirror=httpserver.url_for("/"))
    assert leftovers(cache) == []


@pytest.mark.parametrize("etag, status", [("v1", 206), ("v2", 200)])
def test_resume_through_redirect_to_werkzeug(etag: str, status: int, httpserver, origin,
                                             cache: Path) -> None:
    """The origin cuts the body and redirects the resume request (as GitHub redirects release
    downloads); werkzeug's own Range/If-Range logic answers it. A changed ETag means the
    file was re-published: werkzeug sends it whole and the download starts over."""
    answers: list[tuple[str | None, str | None, int]] = []

    def handler(request: Request) -> Response:
        resp = Response(BODY, mimetype="application/gzip")
        resp.set_etag(etag)
        resp = resp.make_conditional(request, accept_ranges=True, complete_length=len(BODY))
        answers.append((request.headers.get("Range"), request.headers.get("If-Range"),
                        resp.status_code))
        return resp

    httpserver.expect_request(MIRRORED).respond_with_handler(handler)
    srv = origin(BODY, cuts=[123_456], redirect_ranges_to=httpserver.url_for("/").rstrip("/"))
    got = fetch(UPSTREAM, DIGEST, cache, mirror=srv.url)
    assert got.path.read_bytes() == BODY
    assert answers == [("bytes=123456-", '"v1"', status)]


def test_body_cut_every_time_gives_up(origin, cache: Path) -> None:
    srv = origin(BODY, cuts=[10_000] * 20)
    with pytest.raises(BakeryError, match=rf"download broke off {MAX_RESUMES + 1} times"):
        fetch(UPSTREAM, DIGEST, cache, mirror=srv.url)
    assert len(srv.seen) == MAX_RESUMES + 1
    assert leftovers(cache) == []


def test_memory_stays_flat(origin, cache: Path) -> None:
    body = bytes(64 * 1024 * 1024)
    srv = origin(body, cuts=[40_000_000])  # and one resume on the way
    tracemalloc.start()
    try:
        got = fetch("https://example.org/big.img", None, cache, mirror=srv.url)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.sha256 == hashlib.sha256(body).hexdigest()
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes for a 64 MiB download"


# --- local directory mirror and text ------------------------------------------------------

@pytest.mark.parametrize("form", ["{d}", "file://{d}/"])
def test_local_directory_mirror(form: str, tmp_path: Path, cache: Path) -> None:
    mirror_dir = tmp_path / "mirror"
    target = mirror_dir / MIRRORED.lstrip("/")
    target.parent.mkdir(parents=True)
    target.write_bytes(BODY)
    (target.parent / "SHA256SUMS").write_text(f"{DIGEST}  docker-24.0.9.tgz\n")

    got = fetch(UPSTREAM, None, cache, mirror=form.format(d=mirror_dir),
                checksum_url=UPSTREAM.rsplit("/", 1)[0] + "/SHA256SUMS")
    assert got == Fetched(cache / DIGEST, DIGEST, first_use=False)
    assert got.path.read_bytes() == BODY
    assert leftovers(cache) == [DIGEST]


def test_local_directory_mirror_missing_file(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(BakeryError, match=rf"{re.escape(UPSTREAM)}: not found in the mirror "
                                          rf"directory \({re.escape(str(tmp_path))}/download"):
        fetch(UPSTREAM, DIGEST, cache, mirror=str(tmp_path))
    assert leftovers(cache) == []
    with pytest.raises(BakeryError, match="sha256: not found in the mirror directory"):
        fetch_text(UPSTREAM + ".sha256", mirror=str(tmp_path))


def test_fetch_text_through_http_mirror(httpserver) -> None:
    httpserver.expect_request("/example.org/SUMS").respond_with_data("hello sums\n")
    httpserver.expect_request("/example.org/nope").respond_with_data("", status=404)
    assert fetch_text("https://example.org/SUMS", mirror=httpserver.url_for("/")) == "hello sums\n"
    with pytest.raises(BakeryError, match=r"https://example.org/nope: HTTP 404 Not Found \(from "):
        fetch_text("https://example.org/nope", mirror=httpserver.url_for("/"))
