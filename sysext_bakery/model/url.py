"""What a URL may be, in one place: upstream download URLs in recipes and the lock, and the
public base URL a release is served from, which goes into every transfer file and Butane
config hosts install.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from sysext_bakery.errors import BakeryError

URL_MAX = 2048        # longer is a mistake or an attack, and some servers refuse it anyway
_SAFE = re.compile(r"[\x21-\x7e]+")   # printable ASCII: no spaces, controls or raw Unicode


def url_problem(value: object, *, schemes: tuple[str, ...] = ("https",)) -> str | None:
    """What makes `value` unusable as a URL with one of `schemes`, or None."""
    if not isinstance(value, str) or not value:
        return f"must be a URL, got {value!r}"
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
