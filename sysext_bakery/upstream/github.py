"""GitHub: releases (`github-releases`) and tags (`github-tags`) through the REST API.

`GET /repos/{owner}/{repo}/releases|tags?per_page=100`, following the Link header's
rel="next". `GITHUB_TOKEN`, when set, goes as `Authorization: Bearer` to api.github.com only
(never to a host a Link points elsewhere, never into a message).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sysext_bakery.errors import BakeryError
from sysext_bakery.model import github as github_api
from sysext_bakery.model.reply import json_field
from .base import (PER_PAGE, RECIPE_HINT, Discovery, Get, Reply, collect,
                   full_page_without_headers, is_rate_limited, json_list, link, pages,
                   rate_limit_error, tag_version)

if TYPE_CHECKING:
    from sysext_bakery.recipe.load import Upstream

REPO_RE = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")


def _headers(token: str | None) -> Callable[[str], dict[str, str]]:
    def headers(url: str) -> dict[str, str]:
        return github_api.rest_headers(token if urlsplit(url).hostname == github_api.HOST else None)
    return headers


def _items(token: str | None) -> Callable[[Reply], list]:
    def items_of(reply: Reply) -> list:
        if is_rate_limited(reply):
            raise rate_limit_error(reply, (
                "this GITHUB_TOKEN's quota is used up; wait until the reset" if token else
                "set GITHUB_TOKEN to a GitHub token (no scopes needed for public repositories) "
                "for 5000 instead of 60 requests an hour, or wait until the reset"))
        return json_list(reply)
    return items_of


def _next(reply: Reply, items: list) -> str | None:
    if nxt := link(reply.headers, "next", reply.url):
        return nxt
    full_page_without_headers(reply, items)
    return None


def _repo(up: "Upstream") -> str:
    if not up.repo or not REPO_RE.fullmatch(up.repo) or ".." in up.repo:
        raise BakeryError(f"upstream.repo {up.repo!r} is not a GitHub owner/name", RECIPE_HINT)
    return up.repo


def _field(item: object, key: str, url: str) -> str:
    return json_field(item, key, str, url, "not a GitHub API answer? " + RECIPE_HINT,
                      "an entry of the list")


def releases(up: "Upstream", get: Get, env: Mapping[str, str]) -> Discovery:
    """Published releases by tag name; drafts never, pre-releases when `prereleases = true`."""
    token = env.get("GITHUB_TOKEN") or None
    url = f"{github_api.API}/repos/{_repo(up)}/releases?per_page={PER_PAGE}"
    walk = pages(get, url, _headers(token), _items(token), _next)
    found = []
    for items in walk.items:
        for item in items:
            tag = _field(item, "tag_name", url)
            if item.get("draft") or (item.get("prerelease") and not up.prereleases):
                continue
            found.append(tag_version(tag, up.pattern, up.prefix))
    return collect(found, url, walk.warnings)


def tags(up: "Upstream", get: Get, env: Mapping[str, str]) -> Discovery:
    """Every tag (git has no notion of a pre-release: the pattern decides)."""
    token = env.get("GITHUB_TOKEN") or None
    url = f"{github_api.API}/repos/{_repo(up)}/tags?per_page={PER_PAGE}"
    walk = pages(get, url, _headers(token), _items(token), _next)
    found = [tag_version(_field(item, "name", url), up.pattern, up.prefix)
             for items in walk.items for item in items]
    return collect(found, url, walk.warnings)
