"""http.Http against real loopback servers: pytest-httpserver for ordinary answers, raw sockets
for servers that never answer, trickle or lie about Content-Length."""
from __future__ import annotations

import email.utils
import re
import socket
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from sysext_bakery import http as http_module
from sysext_bakery.errors import BakeryError
from sysext_bakery.build.fetch import fetch
from sysext_bakery.http import Http, Limits, retry_after_seconds
from sysext_bakery.model.url import mirror_url, redact, redirect_allowed

UPSTREAM = "https://download.example.org/linux/static/stable/x86_64/docker-24.0.9.tgz"
MIRRORED = "/download.example.org/linux/static/stable/x86_64/docker-24.0.9.tgz"
FAST = Limits(backoff=0.01)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def leftovers(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())


@pytest.fixture
def raw_server():
    """A TCP server on loopback whose every connection is handed to `serve(conn)`."""
    socks: list[socket.socket] = []

    def start(serve: Callable[[socket.socket], None] | None) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        socks.append(sock)
        if serve is not None:       # None: the kernel accepts, nobody ever answers

            def loop() -> None:
                while True:
                    try:
                        conn, _ = sock.accept()
                    except OSError:
                        return
                    threading.Thread(target=serve, args=(conn,), daemon=True).start()

            threading.Thread(target=loop, daemon=True).start()
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield start
    for sock in socks:
        sock.close()


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


# --- mirror_url ---------------------------------------------------------------------------

@pytest.mark.parametrize("mirror", ["http://127.0.0.1:8080/m", "http://127.0.0.1:8080/m/"])
def test_mirror_url_prefix(mirror: str) -> None:
    assert mirror_url(UPSTREAM, mirror) == "http://127.0.0.1:8080/m" + MIRRORED


def test_mirror_url_keeps_query_and_port() -> None:
    url = "https://api.example.org:8443/dl/file.bin?version=1.2&arch=amd64"
    assert (mirror_url(url, "https://proxy.corp/up")
            == "https://proxy.corp/up/api.example.org:8443/dl/file.bin?version=1.2&arch=amd64")


@pytest.mark.parametrize("form", ["{d}", "{d}/", "file://{d}"])
def test_mirror_url_directory(form: str, tmp_path: Path) -> None:
    mirror = form.format(d=tmp_path)
    assert mirror_url(UPSTREAM, mirror) == f"{tmp_path}{MIRRORED}"


def test_mirror_url_directory_unquotes_the_path(tmp_path: Path) -> None:
    url = "https://github.com/k3s-io/k3s/releases/download/v1.32.2%2Bk3s1/k3s"
    assert (mirror_url(url, str(tmp_path))
            == f"{tmp_path}/github.com/k3s-io/k3s/releases/download/v1.32.2+k3s1/k3s")


def test_mirror_url_without_mirror_is_the_url() -> None:
    assert mirror_url(UPSTREAM, None) == UPSTREAM
    assert mirror_url(UPSTREAM, "") == UPSTREAM


def test_mirror_url_refuses_relative_directory() -> None:
    with pytest.raises(BakeryError, match="neither an http.s. URL nor an absolute directory"):
        mirror_url(UPSTREAM, "mirror/dir")


def test_mirror_url_refuses_escaping_the_directory(tmp_path: Path) -> None:
    with pytest.raises(BakeryError, match="would escape mirror directory"):
        mirror_url("https://example.org/a/../../etc/passwd", str(tmp_path))



@pytest.mark.parametrize("url", ["https://../etc/passwd", "https://./x", "https://a..b/x"])
def test_mirror_refuses_hosts_that_would_escape(url: str) -> None:
    with pytest.raises(BakeryError, match="cannot be mapped into mirror"):
        mirror_url(url, "/srv/mirror")


# --- policy pieces ------------------------------------------------------------------------

def test_retry_after_takes_seconds_or_an_http_date():
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < retry_after_seconds(soon, 1.0) <= 30
    assert retry_after_seconds("7", 1.0) == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", 1.0) < 0
    assert retry_after_seconds("soon-ish", 1.5) == 1.5


def test_redact_userinfo_query_tokens_and_authorization():
    text = ("GET https://bot:s3cret@mirror.example/x?name=a&access_token=tok123&X-Amz-Signature=abc"
            " failed; headers {'Authorization': 'Bearer ghp_xyz'}")
    out = redact(text)
    assert "s3cret" not in out and "tok123" not in out and "abc" not in out and "ghp_xyz" not in out
    assert "https://***@mirror.example/x?name=a&access_token=***" in out
    assert redact("https://example.org/a?version=1") == "https://example.org/a?version=1"


def test_redirect_policy():
    assert redirect_allowed("https://a.example/x", "https://b.example/y")
    assert redirect_allowed("http://127.0.0.1:1/x", "http://127.0.0.1:2/y")   # a chosen http mirror
    assert redirect_allowed("http://127.0.0.1:1/x", "https://b.example/y")
    assert not redirect_allowed("https://a.example/x", "http://a.example/x")  # downgrade
    assert not redirect_allowed("http://127.0.0.1:1/x", "file:///etc/passwd")
    assert not redirect_allowed("http://127.0.0.1:1/x", "ftp://127.0.0.1/x")


def test_limits_from_env():
    limits = Limits.from_env({"BAKERY_LOW_SPEED_TIME": "2", "BAKERY_DEADLINE": "30",
                              "BAKERY_HTTP_RETRIES": "1"})
    assert (limits.low_speed_time, limits.deadline, limits.retries) == (2.0, 30.0, 1)
    with pytest.raises(BakeryError, match="BAKERY_DEADLINE='soon' is not a number"):
        Limits.from_env({"BAKERY_DEADLINE": "soon"})


def test_requests_and_urllib3_only_in_http_module():
    """One HTTP client: http.py, and its policy module, which nothing else imports."""
    package = Path(http_module.__file__).parent
    sources = {p.relative_to(package).as_posix(): p.read_text() for p in package.rglob("*.py")}
    users = sorted(name for name, text in sources.items()
                   if re.search(r"^\s*(import|from)\s+(requests|urllib3)\b", text, re.M))
    assert users == ["http.py", "http_policy.py"]
    policy_users = sorted(name for name, text in sources.items()
                          if re.search(r"\bhttp_policy\b", text) and name != "http_policy.py")
    assert policy_users == ["http.py"]


# --- retries ------------------------------------------------------------------------------

def test_retry_after_seconds_is_honoured_and_announced(httpserver, capsys):
    httpserver.expect_ordered_request("/example.org/x").respond_with_data(
        "busy", status=503, headers={"Retry-After": "1"})
    httpserver.expect_ordered_request("/example.org/x").respond_with_data("ok")
    began = time.monotonic()
    reply = Http(httpserver.url_for("/"), limits=FAST).get("https://example.org/x")
    assert time.monotonic() - began >= 0.9          # the backoff alone would be 0.01 s
    assert (reply.status, reply.body) == (200, b"ok")
    assert capsys.readouterr().err == (f"retrying {httpserver.url_for('/example.org/x')} in 1 s "
                                       "(HTTP 503), attempt 1/5\n")


def test_retry_after_http_date_is_honoured(httpserver, capsys):
    when = email.utils.formatdate(time.time() + 2, usegmt=True)   # whole seconds: 1-2 s away
    httpserver.expect_ordered_request("/example.org/x").respond_with_data(
        "slow down", status=429, headers={"Retry-After": when})
    httpserver.expect_ordered_request("/example.org/x").respond_with_data("ok")
    began = time.monotonic()
    assert Http(httpserver.url_for("/"), limits=FAST).get_text("https://example.org/x") == "ok"
    assert time.monotonic() - began >= 0.9
    assert re.fullmatch(r"retrying http://\S+/example.org/x in (1|1\.\d|2) s \(HTTP 429\), "
                        r"attempt 1/5\n", capsys.readouterr().err)


def test_retry_after_beyond_the_cap_gives_up(httpserver, capsys):
    httpserver.expect_request("/example.org/x").respond_with_data(
        "later", status=503, headers={"Retry-After": "3600"})
    began = time.monotonic()
    with pytest.raises(BakeryError, match=r"https://example.org/x: HTTP 503 Service Unavailable"):
        Http(httpserver.url_for("/"), limits=FAST).get_text("https://example.org/x")
    assert time.monotonic() - began < 2 and len(httpserver.log) == 1
    assert "would pass the 120 s cap" in capsys.readouterr().err


def test_a_retried_get_succeeds(httpserver):
    for status in (502, 500):
        httpserver.expect_ordered_request("/api.example.org/v1").respond_with_data("", status=status)
    httpserver.expect_ordered_request("/api.example.org/v1").respond_with_json({"v": [1, 2]})
    assert Http(httpserver.url_for("/"), limits=FAST).get_json("https://api.example.org/v1") == {
        "v": [1, 2]}
    assert len(httpserver.log) == 3


@pytest.mark.parametrize("body, said", [
    (b"<html>Sign in</html>", "not valid JSON: Expecting value"),
    (b"\xff\xfe{}", "not valid JSON: "),
    (b"[" * 65 + b"]" * 65, "not valid JSON: nested too deeply (more than 64 levels)"),
])
def test_get_json_names_an_answer_that_is_not_json(httpserver, body: bytes, said: str):
    """The one JSON rule for network answers (model/reply.parse_json), with the client's
    wording: the upstream URL asked for, never the mirror's, and the caller's hint."""
    httpserver.expect_request("/api.example.org/v1").respond_with_data(body)
    with pytest.raises(BakeryError) as err:
        Http(httpserver.url_for("/"), limits=FAST).get_json("https://api.example.org/v1",
                                                            hint="ask the API owner")
    assert err.value.message.startswith(f"https://api.example.org/v1: {said}")
    assert err.value.hint == "ask the API owner"


def test_a_post_is_not_retried_on_5xx_but_on_429(httpserver):
    client = Http(upstream=False, limits=FAST)
    httpserver.expect_ordered_request("/p", method="POST").respond_with_data("", status=502)
    assert client.request("POST", httpserver.url_for("/p"), data=b"x").status == 502
    assert len(httpserver.log) == 1
    httpserver.expect_ordered_request("/q", method="POST").respond_with_data(
        "", status=429, headers={"Retry-After": "0"})
    httpserver.expect_ordered_request("/q", method="POST").respond_with_data("done", status=201)
    assert client.request("POST", httpserver.url_for("/q"), data=b"x").status == 201
    assert len(httpserver.log) == 3


def test_a_file_body_is_sent_whole_with_its_length_on_every_attempt(httpserver, tmp_path):
    """A Path body is streamed from the file (not read whole by the caller), with its size as
    Content-Length; urllib3's own retry (a 429) sends it again from its start."""
    body = bytes(range(256)) * 4096   # 1 MiB
    (tmp_path / "image.raw").write_bytes(body)
    client = Http(upstream=False, limits=FAST)
    httpserver.expect_ordered_request("/up", method="POST").respond_with_data(
        "", status=429, headers={"Retry-After": "0"})
    httpserver.expect_ordered_request("/up", method="POST").respond_with_data("done", status=201)
    assert client.request("POST", httpserver.url_for("/up"), data=tmp_path / "image.raw").status == 201
    assert [(r.headers.get("Content-Length"), r.headers.get("Transfer-Encoding"), r.get_data())
            for r, _ in httpserver.log] == [(str(len(body)), None, body)] * 2
    with pytest.raises(BakeryError, match=r"/up: cannot read .*missing\.raw: No such file"):
        client.request("POST", httpserver.url_for("/up"), data=tmp_path / "missing.raw")
    assert len(httpserver.log) == 2   # nothing sent for a file that cannot be read


def test_a_plain_403_is_not_retried(httpserver):
    httpserver.expect_request("/example.org/x").respond_with_data("no", status=403)
    assert Http(httpserver.url_for("/"), limits=FAST).get("https://example.org/x").status == 403
    assert len(httpserver.log) == 1


# --- slow, silent and lying servers -------------------------------------------------------

def test_a_server_that_never_answers_fails_within_the_read_timeout(raw_server, capsys):
    base = raw_server(None)
    limits = Limits(read_timeout=0.5, retries=1, backoff=0.01)
    began = time.monotonic()
    with pytest.raises(BakeryError) as err:
        Http(base, limits=limits).get("https://example.org/silent")
    assert time.monotonic() - began < 3
    assert err.value.message == (f"https://example.org/silent: no answer within 0.5 s "
                                 f"(from {base}/example.org/silent)")
    assert "retrying" in capsys.readouterr().err


def trickle(conn: socket.socket, every: float, length: int = 100) -> None:
    with conn:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length)
        try:
            for _ in range(length):
                conn.sendall(b"x")
                time.sleep(every)
        except OSError:
            pass


def test_a_trickling_server_is_aborted_by_the_low_speed_limit(raw_server, cache, monkeypatch):
    base = raw_server(lambda conn: trickle(conn, every=2.0))
    monkeypatch.setenv("BAKERY_LOW_SPEED_TIME", "1")
    began = time.monotonic()
    with pytest.raises(BakeryError, match=r"docker-24.0.9.tgz: too slow: 2 bytes in 2(\.\d)? s "
                                          r"\(below 1000 bytes/s for 1 s\)") as err:
        fetch(UPSTREAM, None, cache, mirror=base)
    assert time.monotonic() - began < 6
    assert "BAKERY_LOW_SPEED_TIME" in err.value.hint
    assert leftovers(cache) == []


def test_the_deadline_covers_a_whole_download(raw_server, cache):
    base = raw_server(lambda conn: trickle(conn, every=0.1))
    began = time.monotonic()
    with pytest.raises(BakeryError, match=r"docker-24.0.9.tgz: not done within the 1 s deadline"):
        fetch(UPSTREAM, None, cache, mirror=base,
              limits=Limits(deadline=1.0, low_speed_limit=1.0, backoff=0.01))
    assert time.monotonic() - began < 3
    assert leftovers(cache) == []


def test_a_wrong_content_length_never_lands_in_the_cache(raw_server, cache):
    def short(conn: socket.socket) -> None:
        with conn:
            read_request(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n" + b"y" * 100)

    base = raw_server(short)
    with pytest.raises(BakeryError, match=r"download broke off 6 times \(from http://127"):
        fetch(UPSTREAM, None, cache, mirror=base, limits=FAST)
    assert leftovers(cache) == []


# --- redirects, redaction, directory mirrors ----------------------------------------------

@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/docker.tgz"])
def test_redirects_out_of_http_are_refused(target, httpserver, cache):
    httpserver.expect_request(MIRRORED).respond_with_data("", status=302,
                                                          headers={"Location": target})
    with pytest.raises(BakeryError, match=rf"redirect to {re.escape(target)} refused"):
        fetch(UPSTREAM, None, cache, mirror=httpserver.url_for("/"), limits=FAST)
    assert leftovers(cache) == []


def test_credentials_never_appear_in_errors_or_announcements(httpserver, raw_server, capsys):
    httpserver.expect_request("/example.org/f").respond_with_data("", status=503)
    mirror = httpserver.url_for("/").replace("http://", "http://bot:s3cret@")
    with pytest.raises(BakeryError) as err:
        Http(mirror, limits=FAST).get_text("https://example.org/f?token=tok123")
    silent = raw_server(None).replace("http://", "http://bot:s3cret@")
    with pytest.raises(BakeryError) as err2:
        Http(silent, limits=Limits(read_timeout=0.3, retries=1, backoff=0.01)).get(
            "https://up:pw99@example.org/f?access_token=tok123")
    shown = str(err.value) + str(err2.value) + capsys.readouterr().err
    assert "retrying" in shown and "HTTP 503" in shown and "no answer" in shown
    for secret in ("s3cret", "tok123", "pw99"):
        assert secret not in shown
    assert "http://***@" in shown and "token=***" in shown


def test_dot_segments_in_upstream_urls_are_refused(httpserver, cache):
    for url in ("https://example.org/a/../b.tgz", "https://example.org/a/%2e%2e/b.tgz"):
        with pytest.raises(BakeryError, match=r"'\.' or '\.\.' in the URL path"):
            fetch(url, None, cache, mirror=httpserver.url_for("/"))
    assert httpserver.log == []


def test_recorded_replies_in_a_mirror_directory(tmp_path):
    recorded = tmp_path / "api.github.com/repos/o/r/releases?per_page=100"
    recorded.parent.mkdir(parents=True)
    recorded.write_text('[{"tag_name": "v1"}]')
    http = Http(str(tmp_path))
    reply = http.get("https://api.github.com/repos/o/r/releases?per_page=100")
    assert (reply.status, reply.url) == (200, str(recorded))
    assert http.get_json("https://api.github.com/repos/o/r/releases?per_page=100") == [
        {"tag_name": "v1"}]
    assert http.get("https://api.github.com/repos/o/r/tags").status == 404
    with pytest.raises(BakeryError, match="repos/o/r/tags: not found in the mirror directory"):
        http.get_text("https://api.github.com/repos/o/r/tags")
