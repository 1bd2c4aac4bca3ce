"""The network edge of discovery until `sysext_bakery.http` takes over: a `get` over
urllib with a timeout, through `BAKERY_MIRROR` exactly like downloads (`fetch.mirror_url`):
an http(s) mirror is asked for `<mirror>/HOST/PATH?QUERY`, a directory mirror is read from
`<dir>/HOST/PATH?QUERY` (a file has no headers, so header-driven paging stops there)."""
from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping

from sysext_bakery.errors import BakeryError
from sysext_bakery.build.fetch import mirror_url
from .base import Get, Reply

TIMEOUT = 30                 # seconds, connect and each read
MAX_BODY = 16 << 20          # an API page or index is small; refuse to buffer more
MIRROR_HINT = "check BAKERY_MIRROR and the mirror's contents"


def make_get(mirror: str | None, timeout: float = TIMEOUT) -> Get:
    opener = urllib.request.build_opener()

    def get(url: str, headers: Mapping[str, str]) -> Reply:
        if not mirror and not url.startswith("https://"):
            raise BakeryError(f"{url}: only https:// upstream URLs are asked",
                              "use an https:// URL in the recipe's [upstream]")
        source = mirror_url(url, mirror)
        if not source.startswith(("http://", "https://")):
            return _read_file(url, source)
        req = urllib.request.Request(source, headers={"User-Agent": "sysext-bakery",
                                                      "Accept-Encoding": "identity"})
        for name, value in headers.items():
            # an unredirected header is not repeated to wherever a redirect points
            req.add_unredirected_header(name.capitalize(), value)
        try:
            with opener.open(req, timeout=timeout) as resp:
                return Reply(resp.status, resp.headers.items(), _body(url, resp), url)
        except urllib.error.HTTPError as e:
            with e:
                return Reply(e.code, e.headers.items(), _body(url, e), url)
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise BakeryError(f"{url}: cannot connect{' (through the mirror)' if mirror else ''}: "
                              f"{reason}", "check the network or proxy, or " + MIRROR_HINT) from None

    return get


def _body(url: str, resp) -> bytes:
    body = resp.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise BakeryError(f"{url}: answer larger than {MAX_BODY} bytes", MIRROR_HINT)
    return body


def _read_file(url: str, path: str) -> Reply:
    try:
        with open(path, "rb") as f:
            return Reply(200, {}, _body(url, f), url)
    except FileNotFoundError:
        raise BakeryError(f"{url}: not found in the mirror directory ({path})", MIRROR_HINT) from None
    except OSError as e:
        raise BakeryError(f"{url}: cannot read {path} from the mirror directory: {e.strerror}",
                          MIRROR_HINT) from None
