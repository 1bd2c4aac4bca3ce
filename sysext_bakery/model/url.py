"""What a URL may be, in one place: upstream download URLs in recipes and the lock, and the
public base URL a release is served from, which goes into every transfer file and Butane
config hosts install.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from sysext_bakery.errors import BakeryError
from sysext_bakery.inputs import brief

URL_MAX = 2048        # longer is a mistake or an attack, and some servers refuse it anyway
_SAFE = re.compile(r"[\x21-\x7e]+")   # printable ASCII: no spaces, controls or raw Unicode
SECRET_PARAM = re.compile(r"(?i)([?&][^=&#\s]*(?:token|key|secret|password|passwd|sig|signature|"
                          r"credential|auth)[^=&#\s]*=)[^&#\s]+")


def url_problem(value: object, *, schemes: tuple[str, ...] = ("https",)) -> str | None:
    """What makes `value` unusable as a URL with one of `schemes`, or None (credentials in
    it redacted: the message may name it)."""
    problem = _url_problem(value, schemes)
    return redact(problem) if problem else None


def _url_problem(value: object, schemes: tuple[str, ...]) -> str | None:
    if not isinstance(value, str) or not value:
        return f"must be a URL, got {brief(value)}"
    if len(value) > URL_MAX:
        return f"URL of {len(value)} characters is longer than {URL_MAX}"
    if not _SAFE.fullmatch(value):
        bad = next(c for c in value if not _SAFE.fullmatch(c))
        return (f"URL {value[:80]!r} contains {bad!r}: spaces, control and non-ASCII "
                "characters must be percent-encoded")
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        wanted = " or ".join(f"{s}://" for s in schemes)
        return f"URL {value!r} must start with {wanted}"
    if not parts.hostname:
        return f"URL {value!r} has no host"
    try:
        parts.port
    except ValueError:
        return f"URL {value!r} has an invalid port"
    return None


@dataclass(frozen=True)
class BaseUrl:
    """The public URL of a published directory, ending with "/"."""
    url: str

    @property
    def insecure(self) -> bool:
        """http: only acceptable when SHA256SUMS is signed and hosts verify it."""
        return self.url.startswith("http://")

    @property
    def for_unit_file(self) -> str:
        """The URL as written into a sysupdate transfer file, where `%` starts a specifier
        (systemd.unit(5)): a percent-encoded `my%20dir` must be written `my%%20dir`."""
        return self.url.replace("%", "%%")

    def __str__(self) -> str:
        return self.url


def parse_base_url(value: object, origin: str) -> BaseUrl:
    """The validated base URL; a BakeryError naming `origin` (the key or option) if unusable."""
    problem = url_problem(value, schemes=("https", "http"))
    if problem is None:
        assert isinstance(value, str)
        parts = urlsplit(value)
        if parts.username or parts.password:
            problem = "the URL holds credentials, which every host would be given"
        elif parts.query or parts.fragment:
            problem = "the URL has a query or fragment; sysupdate appends file names to it"
    if problem:
        raise BakeryError(f"{origin}: {problem}",
                          "give the public https:// URL the published directory is served at, "
                          "e.g. https://example.com/sysext/")
    assert isinstance(value, str)
    return BaseUrl(value if value.endswith("/") else value + "/")


# ---- where a URL is fetched from, and what a message may show of it ----------------------

def url_filename(url: str) -> str:
    """The file name a URL names: `…/docker-24.0.9.tgz` -> `docker-24.0.9.tgz` (unquoted)."""
    return unquote(urlsplit(url).path).rstrip("/").rsplit("/", 1)[-1]


def redirect_allowed(current: str, target: str) -> bool:
    """https anywhere; http only from http (a mirror the user chose); nothing else (file:)."""
    scheme = urlsplit(target).scheme.lower()
    return scheme == "https" or (scheme == "http" and urlsplit(current).scheme.lower() == "http")


def check_upstream(url: str, mirror: str | None) -> None:
    """Upstream URLs are https (a mirror may serve http ones) without '.'/'..' segments."""
    if not mirror and not url.startswith("https://"):
        raise BakeryError(f"{redact(url)}: only https:// upstream URLs are fetched",
                          "use the https:// URL in the recipe, or set BAKERY_MIRROR to a "
                          "mirror that serves this file")
    if {".", ".."} & set(unquote(urlsplit(url).path).split("/")):
        raise BakeryError(f"{redact(url)}: '.' or '..' in the URL path",
                          "check the version and URL pinned in release/lock.toml")


def mirror_url(url: str, mirror: str | None) -> str:
    """Where to fetch `url` from: `url` itself, `<mirror>/HOST/PATH` for an http(s) mirror,
    or the absolute file path `<dir>/HOST/PATH` for a directory mirror (path unquoted)."""
    hint = "check the version and URL pinned in release/lock.toml"
    if not mirror:
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BakeryError(f"{redact(url)}: not an http(s) URL, cannot map it to mirror "
                          f"{redact(mirror)}", hint)
    host = parts.netloc.rsplit("@", 1)[-1]
    if not re.fullmatch(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(:\d+)?", host):
        raise BakeryError(f"{redact(url)}: host {host!r} cannot be mapped into mirror "
                          f"{redact(mirror)}", hint)
    query = f"?{parts.query}" if parts.query else ""
    if is_url(mirror):
        return f"{mirror.rstrip('/')}/{host}{parts.path}{query}"
    root = unquote(urlsplit(mirror).path) if mirror.startswith("file://") else mirror
    if not os.path.isabs(root):
        raise BakeryError(f"mirror {mirror!r}: neither an http(s) URL nor an absolute directory",
                          "set BAKERY_MIRROR to https://HOST/PREFIX, /abs/dir or file:///abs/dir")
    rel = unquote(parts.path) + unquote(query)
    if ".." in rel.split("/"):
        raise BakeryError(f"{redact(url)}: '..' in the path would escape mirror directory {root}",
                          hint)
    return f"{root.rstrip('/')}/{host}{rel}"


def redact(text: str) -> str:
    """Credentials never reach a message: URL userinfo, secret-looking query parameters and
    Authorization header values become ***."""
    text = re.sub(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]*@", r"\1***@", text)
    text = SECRET_PARAM.sub(r"\1***", text)
    return re.sub(r"(?i)((?:proxy-)?authorization['\"]?\s*[:=]\s*['\"]?)[^'\"\n,}]+", r"\1***",
                  text)


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))
