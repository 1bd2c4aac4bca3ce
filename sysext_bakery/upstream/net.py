"""The network edge of discovery: a `get` on the project's one HTTP client (`http.Http`),
through `BAKERY_MIRROR` exactly like downloads: an http(s) mirror is asked for
`<mirror>/HOST/PATH?QUERY`, a directory mirror is read from `<dir>/HOST/PATH?QUERY` with the
response headers recorded beside it in `<file>.headers.json` (GitHub's and GitLab's paging
is in headers: a full page recorded without them is an error, `base.full_page_without_headers`)."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from sysext_bakery.http import MAX_BODY, Http, Limits
from sysext_bakery.model.url import is_url
from sysext_bakery.model.reply import Reply
from sysext_bakery.upstream.base import Get

# An update run asks dozens of upstreams: a rate limit that says "come back in a minute" is
# reported (naming the reset time) rather than slept through. BAKERY_RETRY_MAX_WAIT overrides.
MAX_WAIT = 10.0


def discovery_limits(env: Mapping[str, str] = os.environ) -> Limits:
    limits = Limits.from_env(env)
    if "BAKERY_RETRY_MAX_WAIT" not in env:
        limits = dataclasses.replace(limits, max_wait=MAX_WAIT)
    return limits


def make_get(mirror: str | None, client: Http | None = None, max_bytes: int = MAX_BODY) -> Get:
    """`max_bytes`: the largest answer read, http.MAX_BODY (an API page) unless the caller
    reads something of its own bound (`doit plan --github`: a published index.json)."""
    http = client or Http(mirror, limits=discovery_limits(), hint="check BAKERY_MIRROR, the network or the recipe's [upstream]")

    def get(url: str, headers: Mapping[str, str]) -> Reply:
        reply = http.get(url, headers=headers, max_bytes=max_bytes)
        if reply.status == 404 and not is_url(reply.url):
            http.check(reply, url)      # a recorded answer missing from a mirror directory
        # messages name the upstream URL that was asked for, never the mirror's
        return dataclasses.replace(reply, url=url)

    return get
