"""The one reply type: what an HTTP answer is once read, for the HTTP client (`http`) and for
discovery (`upstream`), which takes and returns plain values (tests hand it recorded replies).

Here rather than in http.py because discovery is imported with every task graph, and http.py
brings requests and urllib3 with it.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any


class Headers(Mapping[str, str]):
    """Response headers with case-insensitive lookup (HTTP header names are)."""

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()):
        pairs = items.items() if isinstance(items, Mapping) else items
        self._data: dict[str, str] = {}
        for name, value in pairs:
            key = name.lower()
            # repeated headers (several Link lines) fold into one, as RFC 9110 allows
            self._data[key] = f"{self._data[key]}, {value}" if key in self._data else value

    def __getitem__(self, name: str) -> str:
        return self._data[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Headers({self._data!r})"


@dataclass(frozen=True)
class Reply:
    """One answer, its whole body read. `url`: where it came from (after redirects; a path for
    a mirror directory); discovery's edge puts the upstream URL that was asked for there
    instead, never the mirror's, which may carry credentials. `headers` may be given as any
    mapping or (name, value) pairs; it is always Headers."""
    status: int
    headers: Headers
    body: bytes
    url: str

    def __post_init__(self) -> None:
        if not isinstance(self.headers, Headers):
            object.__setattr__(self, "headers", Headers(self.headers))

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


def phrase(status: int) -> str:
    """The standard reason phrase: servers spell it as they like, HTTP/2 has none."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def rate_limited(status: int, headers: Mapping[str, str]) -> bool:
    """429, or a 403 for an exhausted (primary) or secondary rate limit: GitHub's
    x-ratelimit-remaining, GitLab's ratelimit-remaining, or a Retry-After. `headers` must
    look names up case-insensitively (Headers, urllib3's)."""
    remaining = headers.get("x-ratelimit-remaining", headers.get("ratelimit-remaining"))
    return status == 429 or (status == 403 and (remaining == "0" or "retry-after" in headers))
