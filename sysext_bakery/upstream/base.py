"""What every discovery type shares: `get` (a GET answered with the one `Reply`, from
model/reply), paging, JSON with clear errors, and turning upstream tags into our versions (or
naming why a tag was refused)."""
from __future__ import annotations

import email.utils
import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

from sysext_bakery.errors import BakeryError
from sysext_bakery.model.url import url_problem
from sysext_bakery.model.reply import Headers, Origin, Reply, parse_json, phrase, rate_limited
from sysext_bakery.model.version import version_key, version_problem

# A discovery never needs the whole history, only the newest releases: upstreams list newest
# first, so stopping at the bound loses old releases only. It stops with a warning, never
# silently: a version it did not see may be missing. The bound counts pages (one bounded
# request each) and is per discovery type, for its page size: GitHub's and GitLab's pages
# hold PER_PAGE, so MAX_PAGES reads 2000 there; json-api has its own (json_api.MAX_PAGES).
MAX_PAGES = 20
PER_PAGE = 100        # what GitHub and GitLab are asked for (their maximum)
RECIPE_HINT = "check [upstream] in the recipe (docs/recipes.md: Upstream tracking)"

Get = Callable[[str, Mapping[str, str]], Reply]


@dataclass(frozen=True)
class Skipped:
    """An upstream tag that looked like a release but cannot be one of our versions."""
    tag: str
    reason: str

    def __str__(self) -> str:
        return f"{self.tag!r}: {self.reason}"


@dataclass(frozen=True)
class Discovery:
    versions: tuple[str, ...]                  # our spelling, newest first, no duplicates
    skipped: tuple[Skipped, ...] = ()          # refused tags, in upstream order
    source: str = ""                           # the first URL asked, for messages
    warnings: tuple[str, ...] = ()             # what was not read (MAX_PAGES), for the report


# --- tags -> versions ---------------------------------------------------------------------

def _refusal(tag: str) -> str | None:
    """Git's check-ref-format forbids these in any ref, so a tag carrying one did not come
    from git: refuse it whatever the pattern says."""
    if any(unicodedata.category(c) == "Cc" for c in tag):
        return "contains a control character"
    if any(c.isspace() for c in tag):
        return "contains whitespace"
    if ".." in tag:
        return "contains '..'"
    return None


def strip_v(tag: str) -> str:
    return tag[1:] if tag[:1] in "vV" and tag[1:2].isdigit() else tag


def tag_version(tag: str, pattern: str | None, prefix: str = "") -> str | Skipped | None:
    """Our version for an upstream tag; a Skipped naming why it is refused; or None when the
    tag is not a release of this recipe (the pattern does not match).

    Without a pattern a leading `v` is stripped (`v1.2.3` -> `1.2.3`); with one, its group is
    the version. `prefix` is put in front either way (kubernetes: `v` + `1.32.2`)."""
    if why := _refusal(tag):
        return Skipped(tag, why)
    if pattern:
        m = re.search(pattern, tag)
        if not m:
            return None
        candidate = m.group(1)
    else:
        candidate = strip_v(tag)
    if "/" in tag:
        return Skipped(tag, "contains '/' (a tag of a sub-project, or a path)")
    return checked_version(tag, prefix + candidate)


def checked_version(tag: str, version: str) -> str | Skipped:
    if why := _refusal(version) or version_problem(version):
        return Skipped(tag, why)
    return version


def collect(results: Iterable[str | Skipped | None], source: str,
            warnings: tuple[str, ...] = ()) -> Discovery:
    versions: dict[str, None] = {}
    skipped: list[Skipped] = []
    for r in results:
        if isinstance(r, Skipped):
            skipped.append(r)
        elif r is not None:
            versions.setdefault(r)
    ordered = sorted(versions, key=version_key, reverse=True)
    return Discovery(tuple(ordered), tuple(skipped), source, warnings)


# --- replies --------------------------------------------------------------------------------

def _reset_time(headers: Headers) -> str | None:
    """When a rate limit resets: GitHub's x-ratelimit-reset / GitLab's ratelimit-reset (epoch
    seconds), else Retry-After (seconds or an HTTP date)."""
    for name in ("x-ratelimit-reset", "ratelimit-reset"):
        value = headers.get(name, "")
        if value.isdigit():
            return _utc(float(value))
    after = headers.get("retry-after", "").strip()
    if after.isdigit():
        return _utc(time.time() + int(after)) + f" (in {after} s)"
    if after:
        try:
            return _utc(email.utils.parsedate_to_datetime(after).timestamp())
        except (TypeError, ValueError):
            return None
    return None


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def is_rate_limited(reply: Reply) -> bool:
    return rate_limited(reply.status, reply.headers)


def rate_limit_error(reply: Reply, hint: str) -> BakeryError:
    when = _reset_time(reply.headers)
    reset = f"; it resets at {when}" if when else ""
    return BakeryError(f"{reply.url}: rate limit exceeded (HTTP {reply.status}){reset}", hint)


def check_status(reply: Reply, *, rate_hint: str = "wait until the limit resets") -> None:
    if 200 <= reply.status < 300:
        return
    if is_rate_limited(reply):
        raise rate_limit_error(reply, rate_hint)
    detail = _upstream_message(reply.body)
    hint = (f"the repository or page does not exist (or is private); {RECIPE_HINT}"
            if reply.status == 404 else "retry later, or " + RECIPE_HINT)
    raise BakeryError(f"{reply.url}: HTTP {reply.status} {phrase(reply.status)}{detail}".rstrip(),
                      hint)


def _upstream_message(body: bytes) -> str:
    """GitHub and GitLab explain errors in {"message": ...}; show it, short and printable."""
    try:
        message = parse_json(body, "", "").get("message")
    except (BakeryError, AttributeError):
        return ""
    if not isinstance(message, str):
        return ""
    text = "".join(c if c.isprintable() else " " for c in message)[:200]
    return f": {text}"


def json_of(reply: Reply) -> Any:
    """The JSON document of a successful reply, or an error naming the URL when the server
    answered with something else (a login page, a proxy's HTML error page)."""
    check_status(reply)
    ctype = reply.headers.get("content-type", "")
    head = reply.body.lstrip()[:1]
    if "html" in ctype.lower() or head == b"<":
        raise BakeryError(f"{reply.url}: expected JSON, got an HTML page"
                          + (f" ({ctype})" if ctype else ""),
                          "the URL may be wrong, or a proxy or login page answered instead of "
                          "the API; check upstream.url / upstream.repo and BAKERY_MIRROR")
    return parse_json(reply.body, reply.url, RECIPE_HINT)


def text_of(reply: Reply) -> str:
    check_status(reply)
    return reply.body.decode("utf-8", errors="replace")


# --- paging ---------------------------------------------------------------------------------

def link(headers: Headers, rel: str, base: str) -> str | None:
    """The target of `rel` in an RFC 8288 Link header (`<url>; rel="next", ...`)."""
    for m in re.finditer(r"<([^>]*)>((?:\s*;\s*[^;,]*)*)", headers.get("link", "")):
        rels = re.search(r';\s*rel\s*=\s*"?([^";]*)"?', m.group(2))
        if rels and rel in rels.group(1).split():
            return urljoin(base, m.group(1))
    return None


def with_query(url: str, **params: str) -> str:
    """`url` with these query parameters set (replacing any of the same name)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    return parts._replace(query=urlencode(query + list(params.items()))).geturl()


@dataclass(frozen=True)
class Pages:
    items: tuple[list, ...]            # each page's items, in order
    warnings: tuple[str, ...] = ()     # the walk stopped at its bound with pages left


def pages(get: Get, url: str, headers: Callable[[str], Mapping[str, str]],
          items_of: Callable[[Reply], list],
          next_of: Callable[[Reply, list], str | None], max_pages: int = MAX_PAGES,
          announces_past_end: bool = False) -> Pages:
    """The item lists of `url` and the pages after it, at most `max_pages` of them (then a
    warning names the URL). A next page must stay on the same host (it may receive a token)
    and is asked once; an empty page ends the walk. `announces_past_end`: the upstream
    announces a next page even after the last one (GitLab), so at the bound the announced
    page is asked too, and only one with items makes the warning."""
    origin = urlsplit(url)[:2]
    first, seen, found = url, set(), []
    while True:
        seen.add(url)
        reply = get(url, headers(url))
        items = items_of(reply)
        if not items:
            break
        found.append(items)
        nxt = next_of(reply, items)
        if nxt is None or nxt in seen:
            break
        if problem := url_problem(nxt, schemes=("https", "http")):
            # a Link header is upstream's text: it must not reach a terminal unchecked
            raise BakeryError(f"{reply.url}: the next page link is unusable: {problem}",
                              "the upstream answer is not what the bakery expects; " + RECIPE_HINT)
        if urlsplit(nxt)[:2] != origin:
            netloc = urlsplit(nxt).netloc   # without its userinfo: it may hold credentials
            host = f"***@{netloc.rsplit('@', 1)[1]}" if "@" in netloc else netloc
            raise BakeryError(f"{reply.url}: the next page is on another host ({host})",
                              "the upstream answer is not what the bakery expects; " + RECIPE_HINT)
        if len(found) >= max_pages:
            if announces_past_end and not items_of(get(nxt, headers(nxt))):
                break   # exactly max_pages pages: all of them were read
            return Pages(tuple(found), (
                f"{first}: stopped after {max_pages} pages with more announced; older releases "
                "were not read (carry an older version you need as an exact version in "
                "release/versions.toml)",))
        url = nxt
    return Pages(tuple(found))


def full_page_without_headers(reply: Reply, items: list) -> None:
    """GitHub and GitLab say in headers whether a page follows. A file in a mirror directory
    without a recorded `.headers.json` says nothing either way (a server's answer without a
    Link, or a recorded `{}`, does: no next page): a short page there is the last, a full one
    may not be, and stopping after it would hide the rest."""
    if reply.origin is Origin.UNRECORDED and len(items) >= PER_PAGE:
        raise BakeryError(
            f"{reply.url}: a full page of {len(items)} from the mirror directory, without the "
            "response headers that say whether another page follows",
            "record the answer's headers beside the file as <file>.headers.json, a JSON object "
            '(e.g. {"Link": "<https://...&page=2>; rel=\"next\""}), or serve the mirror '
            "over http(s) (docs/recipes.md: Upstream tracking)")


def json_list(reply: Reply) -> list:
    data = json_of(reply)
    if not isinstance(data, list):
        raise BakeryError(f"{reply.url}: expected a JSON list, got {type(data).__name__}",
                          RECIPE_HINT)
    return data
