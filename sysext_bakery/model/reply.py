"""The one reply type: what an HTTP answer is once read, for the HTTP client (`http`) and for
discovery (`upstream`), which takes and returns plain values (tests hand it recorded replies);
and the one rule for reading JSON that came over the network (`parse_json`) and one field of
it (`json_field`).

Here rather than in http.py because discovery is imported with every task graph, and http.py
brings requests and urllib3 with it.
"""
from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from sysext_bakery.errors import BakeryError
from sysext_bakery.model import nesting

# An API answer nests a few levels (a GitHub release: assets[].uploader.login is 4); the rule
# is model/nesting's, shared with the project's input files.
MAX_DEPTH = 64


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


class Origin(enum.Enum):
    """What answered: said explicitly, because headers alone cannot tell a mirror file with
    none recorded from a recorded `{}` or a server that sent none."""
    NETWORK = "network"            # an http(s) server; the headers are the ones it sent
    RECORDED = "recorded"          # a mirror-directory file with its <file>.headers.json
    UNRECORDED = "unrecorded"      # a mirror-directory file with no headers file beside it


@dataclass(frozen=True)
class Reply:
    """One answer, its whole body read. `url`: where it came from (after redirects; a path for
    a mirror directory); discovery's edge puts the upstream URL that was asked for there
    instead, never the mirror's, which may carry credentials. `headers` may be given as any
    mapping or (name, value) pairs; it is always Headers. `origin`: see Origin."""
    status: int
    headers: Headers
    body: bytes
    url: str
    origin: Origin = Origin.NETWORK

    def __post_init__(self) -> None:
        if not isinstance(self.headers, Headers):
            object.__setattr__(self, "headers", Headers(self.headers))

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def parse_json(body: bytes | str, where: str, hint: str) -> Any:
    """The one rule for JSON that came over the network (discovery, the GitHub publisher,
    `Http.get_json`): not JSON, or nested past MAX_DEPTH, is a BakeryError naming `where`,
    never a JSONDecodeError or RecursionError traceback."""
    try:
        doc = json.loads(body)
    except RecursionError:   # the C decoder recurses: far past MAX_DEPTH already
        raise _too_deep(where, hint) from None
    except ValueError as e:   # JSONDecodeError, bad UTF-8, an integer past the digit limit
        raise BakeryError(f"{where}: not valid JSON: {str(e)[:200]}", hint) from None
    if nesting.problem(doc, MAX_DEPTH):
        raise _too_deep(where, hint)
    return doc


# JSON's names for the Python types json.loads gives, for messages
_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
               (list, "array"), (dict, "object"), (type(None), "null"))


def json_type(value: Any) -> str:
    return next(name for kind, name in _JSON_TYPES if isinstance(value, kind))


def json_field(doc: Any, key: str, kind: type, where: str, hint: str, of: str = "the answer",
               *, optional: bool = False) -> Any:
    """`doc[key]` of a JSON object from the network, of type `kind` (an int is never a bool):
    a missing or wrongly typed field a documented API promises is a BakeryError naming
    `where` (the URL or file), `of` (which object) and the key, never a KeyError or TypeError
    later. An empty string counts as missing: no documented field used here may be empty.
    An `optional` field that is missing (or null, or empty) is None."""
    if not isinstance(doc, dict):
        raise BakeryError(f"{where}: {of} is a JSON {json_type(doc)}, not an object", hint)
    if optional and doc.get(key) in (None, ""):
        return None
    if key not in doc or doc[key] == "":
        raise BakeryError(f"{where}: {of} has no {key!r} field", hint)
    value = doc[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        wanted = next(name for k, name in _JSON_TYPES if k is kind)
        article = "an" if wanted[0] in "aeiou" else "a"
        raise BakeryError(f"{where}: {of}: {key!r} is a JSON {json_type(value)}, expected "
                          f"{article} {wanted}", hint)
    return value


def _too_deep(where: str, hint: str) -> BakeryError:
    return BakeryError(f"{where}: not valid JSON: nested too deeply (more than {MAX_DEPTH} "
                       "levels)", hint)


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
