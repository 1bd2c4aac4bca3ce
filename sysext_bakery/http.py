"""The one HTTP client of the bakery: with its policy (`http_policy`), the only module that
imports requests and urllib3. Everything else speaks HTTP through `Http`.

    http = Http(mirror)                          # mirror: BAKERY_MIRROR or None
    reply = http.get(url, headers=None, max_bytes=MAX_BODY)
    reply.status, reply.headers, reply.body, reply.url, reply.text
    http.get_text(url, hint=...) / http.get_json(url, hint=...)   # BakeryError on HTTP >= 400
    with http.open(url, headers, deadline) as stream: stream.chunks()   # downloads (fetch)
    Http(upstream=False, headers=auth).request(method, url, ...)    # REST clients (GitHub)
    http.request("POST", url, data=path)      # a file body: streamed, with its Content-Length

Upstream URLs (`upstream=True`, the default) must be https, may not hold `.`/`..` path
segments, and are mapped through `BAKERY_MIRROR` (`mirror_url`): an http(s) base URL, or a
local directory of recorded files `<dir>/HOST/PATH[?QUERY]`, which `get` reads as a 200
reply (404 if missing), with the headers recorded beside the file (`mirror_dir`). Every
message names the URL with credentials redacted (`redact`).

Retries, waits, timeouts and the wording of a failed request are the client's policy, in
`http_policy` (the one other module that imports requests and urllib3, and that only this one
imports): connect errors are retried for every method, and so are 429 and GitHub-style
rate-limit 403s; 500/502/503/504 and read errors only for idempotent methods, so a POST is
never sent twice blindly. Redirects may not leave http(s) nor downgrade https to http. Bodies
are read with a deadline and a low-speed limit (curl's --speed-limit/--speed-time). Not
thread-safe: one `Http` per thread.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping
from urllib.parse import urljoin

import requests
import urllib3
from requests.adapters import HTTPAdapter

from sysext_bakery.errors import BakeryError
from sysext_bakery.http_policy import (Deadline, Limits, RetryPolicy, failure, failure_detail,
                                       retry_after_seconds, secs)
from sysext_bakery.mirror_dir import read_recorded
from sysext_bakery.model.reply import Headers, Reply, parse_json, phrase
from sysext_bakery.model.url import check_upstream, is_url, mirror_url, redact, redirect_allowed

# Limits, Deadline and retry_after_seconds are the client's, wherever they are defined
__all__ = ["CHUNK", "MAX_BODY", "NETWORK_HINT", "BodyBroken", "Deadline", "Headers", "Http",
           "Limits", "Reply", "Stream", "retry_after_seconds"]

CHUNK = 1 << 20
# The one bound of an answer read whole into memory (`get`, `request`): an API page or an
# HTML index page, for discovery (`upstream.net`) and the REST clients alike. Downloads
# stream (`open`); a caller reading a file of its own kind passes that file's bound
# (`max_bytes`: checksum files, a published index.json's `sysupdate.MAX_INDEX`).
MAX_BODY = 32 << 20
NETWORK_HINT = ("check the network or proxy; for offline builds set BAKERY_MIRROR to a mirror "
                "URL or directory (README: Offline and mirrored builds)")


class BodyBroken(Exception):
    """The body ended early or the connection broke; a download may resume with Range."""


class Stream:
    """An open response whose body is read piece by piece (`chunks`)."""

    def __init__(self, resp: requests.Response, label: str, limits: Limits, deadline: Deadline):
        self.status, self.headers, self.url = resp.status_code, Headers(resp.headers), resp.url
        self._resp, self._label, self._limits, self._deadline = resp, label, limits, deadline

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The body as it arrives (no content decoding); BodyBroken if it breaks off,
        BakeryError past the deadline or below the low-speed limit."""
        lim = self._limits
        start, got = time.monotonic(), 0
        while True:
            self._deadline.check(self._label)
            try:
                data = self._resp.raw.read1(size, decode_content=False)
            except (urllib3.exceptions.HTTPError, OSError) as e:
                raise BodyBroken(str(e)) from e
            if not data:
                return
            got += len(data)
            now = time.monotonic()
            if now - start >= lim.low_speed_time:
                if got < lim.low_speed_limit * (now - start):
                    raise BakeryError(
                        f"{self._label}: too slow: {got} bytes in {secs(now - start)} s "
                        f"(below {lim.low_speed_limit:g} bytes/s for {secs(lim.low_speed_time)} s)",
                        "retry later or use a closer mirror (BAKERY_MIRROR); "
                        "BAKERY_LOW_SPEED_LIMIT / BAKERY_LOW_SPEED_TIME tune the limit")
                start, got = now, 0
            yield data


class Http:
    """A requests Session with the bakery's retry, timeout, redirect and redaction rules."""

    def __init__(self, mirror: str | None = None, *, limits: Limits | None = None,
                 headers: Mapping[str, str] | None = None, upstream: bool = True,
                 hint: str = NETWORK_HINT):
        self.mirror, self.upstream, self.hint = mirror or None, upstream, hint
        self.limits = limits or Limits.from_env()
        self._secrets = [v.split(" ", 1)[-1] for k, v in (headers or {}).items()
                         if k.lower() in ("authorization", "proxy-authorization")]
        self._session = requests.Session()
        self._adapter = HTTPAdapter()
        self._session.mount("http://", self._adapter)
        self._session.mount("https://", self._adapter)
        # identity: a server that labels a .tgz "Content-Encoding: gzip" must not get it unpacked
        self._session.headers.update({"User-Agent": "sysext-bakery", "Accept-Encoding": "identity",
                                      **(headers or {})})
        self._session.hooks["response"].append(self._check_redirect)

    def __enter__(self) -> Http:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return redact(text)

    def locate(self, url: str) -> str:
        """Where `url` is fetched from: itself, a mirror URL, or a file in a mirror directory."""
        if self.upstream:
            check_upstream(url, self.mirror)
            return mirror_url(url, self.mirror)
        return url

    def get(self, url: str, *, headers: Mapping[str, str] | None = None,
            max_bytes: int = MAX_BODY) -> Reply:
        """GET `url` (mapped through the mirror); any HTTP status is returned, not raised."""
        source = self.locate(url)
        if not is_url(source):
            return read_recorded(url, source, max_bytes)
        return self.request("GET", source, headers=headers, max_bytes=max_bytes, label=url)

    def get_bytes(self, url: str, *, headers: Mapping[str, str] | None = None,
                  max_bytes: int = MAX_BODY, hint: str | None = None) -> bytes:
        reply = self.get(url, headers=headers, max_bytes=max_bytes)
        self.check(reply, url, hint)
        return reply.body

    def get_text(self, url: str, *, headers: Mapping[str, str] | None = None,
                 max_bytes: int = MAX_BODY, hint: str | None = None) -> str:
        return self.get_bytes(url, headers=headers, max_bytes=max_bytes,
                              hint=hint).decode("utf-8", errors="replace")

    def get_json(self, url: str, *, headers: Mapping[str, str] | None = None,
                 max_bytes: int = MAX_BODY, hint: str | None = None) -> Any:
        body = self.get_bytes(url, headers=headers, max_bytes=max_bytes, hint=hint)
        return parse_json(body, self.redact(url), hint or self.hint)

    def check(self, reply: Reply | Stream, url: str, hint: str | None = None) -> None:
        """BakeryError naming `url` (and the mirror source) for HTTP >= 400."""
        if reply.status == 404 and not is_url(reply.url):
            raise BakeryError(f"{self.redact(url)}: not found in the mirror directory "
                              f"({reply.url})", hint or self.hint)
        if reply.status >= 400:
            raise BakeryError(f"{self.redact(url)}: HTTP {reply.status} "
                              f"{phrase(reply.status)}{self._from(url, reply.url)}",
                              hint or self.hint)

    def request(self, method: str, url: str, *, params: Mapping[str, Any] | None = None,
                data: bytes | Path | None = None, json: Any = None,
                headers: Mapping[str, str] | None = None, max_bytes: int = MAX_BODY,
                label: str | None = None) -> Reply:
        """One request to `url` as given (no mirror), its whole answer read. A `data` file is
        sent streamed from the start (`_file_body`), never read whole."""
        label = label or url
        deadline = Deadline(self.limits.deadline)
        with _file_body(data, self.redact(label)) as sent, \
                self._send(method, url, label, deadline, params=params, data=sent, json=json,
                           headers=headers) as stream:
            body = bytearray()
            try:
                for chunk in stream.chunks():
                    body += chunk
                    if len(body) > max_bytes:
                        raise BakeryError(f"{self.redact(label)}: reply larger than "
                                          f"{max_bytes} bytes{self._from(label, url)}", self.hint)
            except BodyBroken as e:
                raise BakeryError(f"{self.redact(label)}: connection broke"
                                  f"{self._from(label, url)}: {self.redact(str(e))}",
                                  "retry later; the server or network is unreliable") from None
            return Reply(stream.status, stream.headers, bytes(body), stream.url)

    @contextmanager
    def open(self, url: str, headers: Mapping[str, str] | None = None,
             deadline: Deadline | None = None) -> Iterator[Stream]:
        """A streaming GET of `url` mapped through an http(s) mirror (not a directory)."""
        source = self.locate(url)
        if not is_url(source):
            raise BakeryError(f"{url}: {source} is a file in a mirror directory, not a URL")
        with self._send("GET", source, url, deadline or Deadline(self.limits.deadline),
                        headers=headers) as stream:
            yield stream

    @contextmanager
    def _send(self, method: str, url: str, label: str, deadline: Deadline,
              **kwargs: Any) -> Iterator[Stream]:
        lim = self.limits
        self._adapter.max_retries = RetryPolicy.make(lim, deadline, self.redact)
        read = max(0.001, min(lim.read_timeout, deadline.left()))
        try:
            resp = self._session.request(method, url, stream=True,
                                         timeout=(lim.connect_timeout, read), **kwargs)
        except requests.RequestException as e:
            raise BakeryError(f"{self.redact(label)}: {failure(e, lim)}"
                              f"{self._from(label, url)}{failure_detail(e, self.redact)}",
                              self.hint) from None
        with resp:
            yield Stream(resp, self.redact(label), lim, deadline)

    def _check_redirect(self, resp: requests.Response, **_: Any) -> None:
        if not resp.is_redirect:
            return
        target = urljoin(resp.url, resp.headers["location"])
        if not redirect_allowed(resp.url, target):
            resp.close()
            raise BakeryError(f"{self.redact(resp.url)}: redirect to {self.redact(target)} refused "
                              "(only to https, or from http to http)",
                              "the server or mirror redirects somewhere the bakery does not follow;"
                              " fix the URL or the mirror")

    def _from(self, label: str, source: str) -> str:
        return "" if source == label else f" (from {self.redact(source)})"


@contextmanager
def _file_body(data: bytes | Path | None, label: str) -> Iterator[bytes | BinaryIO | None]:
    """A request body as requests gets it: bytes as they are; a file opened afresh for this
    request, so each request sends it whole from its start (an image may be GBs: requests
    sends an open file in urllib3's blocks with its fstat size as Content-Length, and urllib3
    seeks back to where it began before each of its own retries and redirects)."""
    if not isinstance(data, Path):
        yield data
        return
    try:
        f = open(data, "rb")
    except OSError as e:
        raise BakeryError(f"{label}: cannot read {data}: {e.strerror or e}",
                          "the file to send went missing or is unreadable") from None
    with f:
        # requests sends an empty file chunked; an empty body is plain Content-Length: 0
        yield f if os.fstat(f.fileno()).st_size else b""
