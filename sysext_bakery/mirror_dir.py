"""A mirror *directory* (`BAKERY_MIRROR=/dir`) answering a GET: the file `<dir>/HOST/PATH[?QUERY]`
as a 200 reply, 404 if it is missing. A file has no response headers; where an answer's
headers matter (GitHub's and GitLab's paging, in `Link` / `x-next-page`) they are recorded
beside it as `<file>.headers.json`, a JSON object of header name -> value, the layout
tests/recorded.py writes and its loopback server sends."""
from __future__ import annotations

import os

from sysext_bakery.errors import BakeryError
from sysext_bakery.model.reply import Headers, Origin, Reply, parse_json
from sysext_bakery.model.url import redact

SIDECAR = ".headers.json"
MAX_SIDECAR = 64 << 10      # a few headers; more is not a recording of one answer
HINT = "check the mirror directory (BAKERY_MIRROR)"


def read_recorded(url: str, path: str, max_bytes: int) -> Reply:
    """The recorded reply for `url` at `path`. A directory answers with its index.html, as a
    web server does: html-index pages are often directory URLs
    (download.docker.com/linux/static/stable/x86_64/)."""
    if path.endswith("/") or os.path.isdir(path):
        path = os.path.join(path, "index.html")
    body = _read(url, path, max_bytes)
    if body is None:
        return Reply(404, Headers(), b"", path, Origin.UNRECORDED)
    headers = _headers(url, path + SIDECAR)
    if headers is None:
        return Reply(200, Headers(), body, path, Origin.UNRECORDED)
    return Reply(200, headers, body, path, Origin.RECORDED)


def _read(url: str, path: str, max_bytes: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            body = f.read(max_bytes + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise BakeryError(f"{redact(url)}: cannot read {path} from the mirror: {e.strerror}",
                          HINT) from e
    if len(body) > max_bytes:
        raise BakeryError(f"{redact(url)}: {path} is larger than {max_bytes} bytes", HINT)
    return body


def _headers(url: str, sidecar: str) -> Headers | None:
    """The recorded headers; None when no headers file exists (`{}` is a recording too)."""
    data = _read(url, sidecar, MAX_SIDECAR)
    if data is None:
        return None
    hint = f"{sidecar} must be a JSON object of header names to string values, or absent"
    doc = parse_json(data, sidecar, hint)
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise BakeryError(f"{sidecar}: not a JSON object of header names to strings", hint)
    return Headers(doc)
