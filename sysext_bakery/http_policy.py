"""The HTTP client's policy (for `http.Http`, its only importer; with http.py the only
modules that import requests and urllib3): how long to wait (`Limits`, `Deadline`), when and
how to retry, and how a failed request is worded.

Retries live in urllib3 (`RetryPolicy`): connect errors for every method; 429 and GitHub-style
rate-limit 403s for every method (the server refused the request); 500/502/503/504 and read
errors only for idempotent methods, so a POST is never sent twice blindly. Waits follow
Retry-After (seconds or HTTP date) or x-ratelimit-reset, else exponential backoff; a wait
longer than `Limits.max_wait` or past the deadline gives up instead. Each retry is announced
on stderr.
"""
from __future__ import annotations

import datetime
import email.utils
import os
import sys
import time
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

import requests
from urllib3.exceptions import (ConnectTimeoutError, MaxRetryError, NewConnectionError,
                                ProtocolError, ReadTimeoutError)
from urllib3.util.retry import Retry

from sysext_bakery.errors import BakeryError
from sysext_bakery.model.reply import rate_limited
from sysext_bakery.model.url import is_url, redact

Redactor = Callable[[str], str]   # a URL or message with its credentials hidden

RETRY_STATUSES = frozenset({500, 502, 503, 504})
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


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
            raise BakeryError(f"{label}: not done within the {secs(self.seconds)} s deadline",
                              "retry later, or raise BAKERY_DEADLINE for a slow link")


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


class RetryPolicy(Retry):
    """urllib3's Retry with the bakery's policy (module docstring): waits from Retry-After or
    x-ratelimit-reset, capped, bounded by the deadline, announced on stderr."""

    def __init__(self, *args: Any, limits: Limits | None = None, deadline: Deadline | None = None,
                 redactor: Redactor = redact, wait: float = 0.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.limits, self.deadline, self.redactor, self.wait = limits, deadline, redactor, wait

    @classmethod
    def make(cls, limits: Limits, deadline: Deadline, redactor: Redactor) -> RetryPolicy:
        n = limits.retries
        return cls(total=n, connect=n, read=n, status=n, other=0, redirect=False,
                   allowed_methods=IDEMPOTENT, raise_on_status=False, limits=limits,
                   deadline=deadline, redactor=redactor)

    def new(self, **kw: Any) -> RetryPolicy:
        kw = {"limits": self.limits, "deadline": self.deadline, "redactor": self.redactor, **kw}
        return super().new(**kw)

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if status_code in (403, 429):   # 403: increment() looks at the headers
            return True
        return self._is_method_retryable(method) and status_code in RETRY_STATUSES

    def increment(self, method: str | None = None, url: str | None = None,
                  response: Any = None, error: Exception | None = None, _pool: Any = None,
                  _stacktrace: Any = None) -> RetryPolicy:
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
            bound = (f"the {secs(new.limits.max_wait)} s cap" if wait > new.limits.max_wait
                     else f"the {secs(new.deadline.seconds)} s deadline")
            print(f"not retrying {where} ({why}): waiting {secs(wait)} s would pass {bound}",
                  file=sys.stderr)
            raise MaxRetryError(_pool, url or "", error)
        print(f"retrying {where} in {secs(wait)} s ({why}), attempt {k}/{new.limits.retries}",
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


def failure(error: Exception, limits: Limits) -> str:
    """What went wrong with a request that raised `error`, in a message's words."""
    reason = _cause(error)
    if isinstance(reason, ConnectTimeoutError) and not isinstance(reason, NewConnectionError):
        return f"cannot connect within {secs(limits.connect_timeout)} s"
    if isinstance(reason, NewConnectionError):
        return "cannot connect"
    if isinstance(reason, ReadTimeoutError) or isinstance(error, requests.ReadTimeout):
        return f"no answer within {secs(limits.read_timeout)} s"
    if isinstance(reason, ProtocolError):
        return "connection broke"
    if isinstance(error, requests.TooManyRedirects):
        return "too many redirects"
    return f"request failed ({type(error).__name__})"


def failure_detail(error: Exception, redactor: Redactor) -> str:
    """The reason a connection failed (DNS, refused), for the end of the message."""
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


def secs(seconds: float) -> str:
    """Seconds as messages show them: whole from 10 on, two digits below."""
    return f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.2g}"
