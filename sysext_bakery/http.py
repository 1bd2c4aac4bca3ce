"""The one HTTP client of the bakery: the only module that imports requests and urllib3.

    http = Http(mirror)                          # mirror: BAKERY_MIRROR or None
    reply = http.get(url, headers=None, max_bytes=MAX_BODY)
    reply.status, reply.headers, reply.body, reply.url, reply.text
    http.get_text(url, hint=...) / http.get_json(url, hint=...)   # BakeryError on HTTP >= 400
    with http.open(url, headers, deadline) as stream: stream.chunks()   # downloads (fetch)
    Http(upstream=False, headers=auth).request(method, url, ...)    # REST clients (GitHub)

Upstream URLs (`upstream=True`, the default) must be https, may not hold `.`/`..` path
segments, and are mapped through `BAKERY_MIRROR` (`mirror_url`): an http(s) base URL, or a
local directory of recorded files `<dir>/HOST/PATH[?QUERY]`, which `get` reads as a 200
reply (404 if missing), with the headers recorded beside the file (`mirror_dir`). Every
message names the URL with credentials redacted (`redact`).

Retries live in urllib3 (`_Retry`): connect errors for every method; 429 and GitHub-style
rate-limit 403s for every method (the server refused the request); 500/502/503/504 and read
errors only for idempotent methods, so a POST is never sent twice blindly. Waits follow
Retry-After (seconds or HTTP date) or x-ratelimit-reset, else exponential backoff; a wait
longer than `Limits.max_wait` or past the deadline gives up instead. Each retry is announced
on stderr. Redirects may not leave http(s) nor downgrade https to http. Bodies are read with
a deadline and a low-speed limit (curl's --speed-limit/--speed-time). Not thread-safe: one
`Http` per thread.
"""
from __future__ import annotations

import datetime
import email.utils
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Iterator, Mapping
from urllib.parse import urljoin

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.exceptions import (ConnectTimeoutError, MaxRetryError, NewConnectionError,
                                ProtocolError, ReadTimeoutError)
from urllib3.util.retry import Retry

from sysext_bakery.errors import BakeryError
from sysext_bakery.mirror_dir import read_recorded
from sysext_bakery.model.reply import Headers, Reply, parse_json, phrase, rate_limited
from sysext_bakery.model.url import check_upstream, is_url, mirror_url, redact, redirect_allowed

CHUNK = 1 << 20
MAX_BODY = 32 << 20             # an API reply or index page; downloads use open()
RETRY_STATUSES = frozenset({500, 502, 503, 504})
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
NETWORK_HINT = ("check the network or proxy; for offline builds set BAKERY_MIRROR to a mirror "
                "URL or directory (README: Offline and mirrored builds)")


@dataclass(frozen=True)
class Limits:
    """Timeouts, retries and speed limits; `from_env` lets tests and slow links change them."""
    connect_timeout: float = 10.0
    read_timeout: float = 60.0      # silence on an open connection
    retries: int = 5
    backoff: float = 1.0            # first retry after `backoff` s, then doubling
    max_wait: float = 120.0         # a longer Retry-After gives up rather than sleeps
    deadline: float = 3600.0        # one download or request, retries and resumes included
    low_speed_limit: float = 1000.0  # bytes/s averaged over low_speed_time aborts a body
    low_speed_time: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, **overrides: float) -> Limits:
        names = {"connect_timeout": "BAKERY_CONNECT_TIMEOUT", "read_timeout": "BAKERY_READ_TIMEOUT",
                 "retries": "BAKERY_HTTP_RETRIES", "backoff": "BAKERY_FETCH_BACKOFF",
                 "max_wait": "BAKERY_RETRY_MAX_WAIT", "deadline": "BAKERY_DEADLINE",
                 "low_speed_limit": "BAKERY_LOW_SPEED_LIMIT",
                 "low_speed_time": "BAKERY_LOW_SPEED_TIME"}
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = names[f.name]
            if var not in env:
                continue
            try:
                value = float(env[var])
                if value < 0 or value != value:
                    raise ValueError
            except ValueError:
                raise BakeryError(f"{var}={env[var]!r} is not a number", "set it to a "
                                  "non-negative number (seconds, bytes/s or a count), or unset it"
                                  ) from None
            values[f.name] = int(value) if f.name == "retries" else value
        return cls(**{**values, **overrides})


class Deadline:
    """A point in time after which a download or request gives up."""

    def __init__(self, seconds: float):
        self.seconds, self.end = seconds, time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self, label: str) -> None:
        if self.left() <= 0:
            raise BakeryError(f"{label}: not done within the {_secs(self.seconds)} s deadline",
                              "retry later, or raise BAKERY_DEADLINE for a slow link")


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
                        f"{self._label}: too slow: {got} bytes in {_secs(now - start)} s "
                        f"(below {lim.low_speed_limit:g} bytes/s for {_secs(lim.low_speed_time)} s)",
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
                data: bytes | None = None, json: Any = None,
                headers: Mapping[str, str] | None = None, max_bytes: int = MAX_BODY,
                label: str | None = None) -> Reply:
        """One request to `url` as given (no mirror), its whole body read."""
        label = label or url
        deadline = Deadline(self.limits.deadline)
        with self._send(method, url, label, deadline, params=params, data=data, json=json,
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
        self._adapter.max_retries = _Retry.make(lim, deadline, self.redact)
        read = max(0.001, min(lim.read_timeout, deadline.left()))
        try:
            resp = self._session.request(method, url, stream=True,
                                         timeout=(lim.connect_timeout, read), **kwargs)
        except requests.RequestException as e:
            raise BakeryError(f"{self.redact(label)}: {_failure(e, lim)}"
                              f"{self._from(label, url)}{_detail(e, self.redact)}",
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


def retry_after_seconds(value: str, default: float) -> float:
    """A Retry-After header: delay seconds or an HTTP date (RFC 9110); `default` if neither.
    A date in the past gives a negative number."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    if when.tzinfo is None:   # "-0000": UTC by RFC 5322
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp() - time.time()


class _Retry(Retry):
    """urllib3's Retry with the bakery's policy (module docstring): waits from Retry-After or
    x-ratelimit-reset, capped, bounded by the deadline, announced on stderr."""

    def __init__(self, *args: Any, limits: Limits | None = None, deadline: Deadline | None = None,
                 redactor: Any = redact, wait: float = 0.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.limits, self.deadline, self.redactor, self.wait = limits, deadline, redactor, wait

    @classmethod
    def make(cls, limits: Limits, deadline: Deadline, redactor: Any) -> _Retry:
        n = limits.retries
        return cls(total=n, connect=n, read=n, status=n, other=0, redirect=False,
                   allowed_methods=IDEMPOTENT, raise_on_status=False, limits=limits,
                   deadline=deadline, redactor=redactor)

    def new(self, **kw: Any) -> _Retry:
        kw = {"limits": self.limits, "deadline": self.deadline, "redactor": self.redactor, **kw}
        return super().new(**kw)

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if status_code in (403, 429):   # 403: increment() looks at the headers
            return True
        return self._is_method_retryable(method) and status_code in RETRY_STATUSES

    def increment(self, method: str | None = None, url: str | None = None,
                  response: Any = None, error: Exception | None = None, _pool: Any = None,
                  _stacktrace: Any = None) -> _Retry:
        if response is not None and response.status == 403 and not rate_limited(
                403, response.headers):
            raise MaxRetryError(_pool, url or "", None)   # a plain 403: returned as it is
        new = super().increment(method, url, response, error, _pool, _stacktrace)
        assert new.limits is not None and new.deadline is not None
        k = len(new.history)
        wait = new.limits.backoff * 2 ** (k - 1)
        if response is not None:
            for name in ("retry-after", "x-ratelimit-reset"):
                value = response.headers.get(name)
                if value and (name == "retry-after" or response.headers.get(
                        "x-ratelimit-remaining") == "0"):
                    wait = (retry_after_seconds(value, wait) if name == "retry-after"
                            else _float(value, time.time() + wait) - time.time())
                    break
        wait = max(wait, 0.0)
        where = self.redactor(_full_url(_pool, url))
        why = f"HTTP {response.status}" if response is not None else _reason(error)
        if wait > new.limits.max_wait or wait >= new.deadline.left():
            bound = (f"the {_secs(new.limits.max_wait)} s cap" if wait > new.limits.max_wait
                     else f"the {_secs(new.deadline.seconds)} s deadline")
            print(f"not retrying {where} ({why}): waiting {_secs(wait)} s would pass {bound}",
                  file=sys.stderr)
            raise MaxRetryError(_pool, url or "", error)
        print(f"retrying {where} in {_secs(wait)} s ({why}), attempt {k}/{new.limits.retries}",
              file=sys.stderr)
        new.wait = wait
        return new

    def sleep(self, response: Any = None) -> None:
        time.sleep(self.wait)


def _full_url(pool: Any, url: str | None) -> str:
    if url and is_url(url) or pool is None:
        return url or ""
    default = {"http": 80, "https": 443}.get(pool.scheme)
    port = "" if pool.port in (None, default) else f":{pool.port}"
    return f"{pool.scheme}://{pool.host}{port}{url or ''}"


def _failure(error: Exception, limits: Limits) -> str:
    reason = _cause(error)
    if isinstance(reason, ConnectTimeoutError) and not isinstance(reason, NewConnectionError):
        return f"cannot connect within {_secs(limits.connect_timeout)} s"
    if isinstance(reason, NewConnectionError):
        return "cannot connect"
    if isinstance(reason, ReadTimeoutError) or isinstance(error, requests.ReadTimeout):
        return f"no answer within {_secs(limits.read_timeout)} s"
    if isinstance(reason, ProtocolError):
        return "connection broke"
    if isinstance(error, requests.TooManyRedirects):
        return "too many redirects"
    return f"request failed ({type(error).__name__})"


def _detail(error: Exception, redactor: Any) -> str:
    reason = _cause(error)
    if isinstance(reason, NewConnectionError):
        # urllib3's reason without its "<…Connection object at 0x…>: " prefix
        return ": " + redactor(str(reason).split(">: ", 1)[-1])
    return ""


def _cause(error: Exception | None) -> Any:
    reason = error.args[0] if error is not None and error.args else error
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return reason


def _reason(error: Exception | None) -> str:
    if isinstance(error, NewConnectionError):
        return "cannot connect"
    if isinstance(error, ConnectTimeoutError):
        return "connect timeout"
    if isinstance(error, ReadTimeoutError):
        return "no answer"
    return "connection broke" if isinstance(error, ProtocolError) else type(error).__name__


def _float(value: str, default: float) -> float:
    try:
        return float(value)
    except ValueError:
        return default


def _secs(seconds: float) -> str:
    return f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.2g}"
