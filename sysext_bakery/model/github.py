"""GitHub's REST API as every client here speaks it: discovery, the github-digest check and
the publisher."""
from __future__ import annotations

API = "https://api.github.com"
HOST = "api.github.com"


def rest_headers(token: str | None = None) -> dict[str, str]:
    """The media type and API version GitHub documents for REST calls (a new dict each time:
    callers add to it), with `Authorization: Bearer` when a token is given."""
    headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers
