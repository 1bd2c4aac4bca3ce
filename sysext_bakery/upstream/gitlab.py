"""GitLab tags (`gitlab-tags`): `GET https://gitlab.com/api/v4/projects/<url-encoded
group/project>/repository/tags`, paged by the Link header or, failing that, x-next-page."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote

from sysext_bakery.errors import BakeryError
from sysext_bakery.model.reply import json_field
from .base import (PER_PAGE, RECIPE_HINT, Discovery, Get, Reply, collect,
                   full_page_without_headers, json_list, link, pages, tag_version, with_query)

if TYPE_CHECKING:
    from sysext_bakery.recipe.load import Upstream

API = "https://gitlab.com/api/v4"
PATH_RE = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+")


def _next(reply: Reply, items: list) -> str | None:
    if nxt := link(reply.headers, "next", reply.url):
        return nxt
    page = reply.headers.get("x-next-page", "").strip()
    if page.isdigit():
        return with_query(reply.url, page=page)
    full_page_without_headers(reply, items)
    return None


def tags(up: "Upstream", get: Get, env: Mapping[str, str]) -> Discovery:
    if not up.repo or not PATH_RE.fullmatch(up.repo) or ".." in up.repo:
        raise BakeryError(f"upstream.repo {up.repo!r} is not a GitLab group/project path",
                          RECIPE_HINT)
    url = f"{API}/projects/{quote(up.repo, safe='')}/repository/tags?per_page={PER_PAGE}"
    walk = pages(get, url, lambda _: {"Accept": "application/json"}, json_list, _next,
                 announces_past_end=True)
    found = []
    for items in walk.items:
        for item in items:
            name = json_field(item, "name", str, url, "not a GitLab API answer? " + RECIPE_HINT,
                              "an entry of the list")
            found.append(tag_version(name, up.pattern, up.prefix))
    return collect(found, url, walk.warnings)
