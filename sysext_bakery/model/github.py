"""GitHub's REST API as every client here speaks it: discovery, the github-digest check and
the publisher; and the one origin the publisher may upload a release's assets to (with the
token) for the API it is configured with."""
from __future__ import annotations

from urllib.parse import urlsplit

API = "https://api.github.com"
HOST = "api.github.com"
GHES_PATH = "/api/v3"          # where GitHub Enterprise Server serves the REST API
DEFAULT_PORTS = {"http": 80, "https": 443}


def rest_headers(token: str | None = None) -> dict[str, str]:
    """The media type and API version GitHub documents for REST calls (a new dict each time:
    callers add to it), with `Authorization: Bearer` when a token is given."""
    headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def upload_origin(api: str) -> str | None:
    """The `scheme://host[:port]` a release's `upload_url` must have for the REST API at
    `api`, or None if `api` is no http(s) URL with a host (and no credentials). An `api.`
    host uploads to its `uploads.` sibling: api.github.com to uploads.github.com, GitHub
    Enterprise Cloud's api.NAME.ghe.com to uploads.NAME.ghe.com. Any other API uploads to its
    own origin: GitHub Enterprise Server (https://HOST/api/v3 uploads to
    https://HOST/api/uploads/..., even when HOST starts with `api.`) and a loopback emulation
    of the API."""
    origin = _origin(api)
    if origin is None:
        return None
    scheme, host, port = origin
    # Enterprise Server answers under /api/v3 of its own host, whatever that host is called
    if host.startswith("api.") and not urlsplit(api).path.rstrip("/").endswith(GHES_PATH):
        host = "uploads." + host.removeprefix("api.")
    return _render(scheme, host, port)


def upload_problem(upload_url: str, api: str) -> str | None:
    """Why the token may not go to `upload_url` (from the server's answer) for the API at
    `api`, or None: only to the origin `upload_origin` derives from the configured API, so
    a tampered or broken answer cannot send it anywhere else."""
    expected = upload_origin(api)
    if expected is None:
        return f"the API URL {api!r} is not an http(s) URL with a host"
    origin = _origin(upload_url)
    if origin is None or _render(*origin) != expected:
        return f"it is not on {expected}, where uploads go for the API at {api}"
    return None


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, lower case with the port filled in; None for
    anything else, credentials in it included."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        return None
    if scheme not in DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]


def _render(scheme: str, host: str, port: int) -> str:
    host = f"[{host}]" if ":" in host else host   # an IPv6 literal
    return f"{scheme}://{host}" + ("" if port == DEFAULT_PORTS[scheme] else f":{port}")
