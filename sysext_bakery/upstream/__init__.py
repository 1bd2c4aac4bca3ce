"""Upstream tracking: which versions upstream has released, for a recipe's `[upstream]`.

`discover(upstream, get)` asks upstream through `get(url, headers) -> Reply` (the network
edge: `net.make_get(mirror)`, or anything that answers like it) and returns a `Discovery`:
our versions, newest first, and the tags it refused with the reason, for `doit update` to
print. Each type lives in its own module; they share tag mapping and paging (`base`).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from sysext_bakery import run
from sysext_bakery.errors import BakeryError
from . import github, gitlab, html_index, json_api, kubernetes
from .base import Discovery, Get, Headers, Reply, Skipped, tag_version

if TYPE_CHECKING:
    from sysext_bakery.recipe.load import Upstream

__all__ = ["TYPES", "Discovery", "Get", "Headers", "Reply", "Skipped", "discover", "tag_version"]

TYPES: dict[str, Callable[["Upstream", Get, Mapping[str, str]], Discovery]] = {
    "github-releases": github.releases,
    "github-tags": github.tags,
    "gitlab-tags": gitlab.tags,
    "html-index": html_index.discover,
    "json-api": json_api.discover,
    "kubernetes-schedule": kubernetes.discover,
}


def discover(upstream: "Upstream", get: Get, env: Mapping[str, str] | None = None) -> Discovery:
    """The versions upstream offers. `env` (default: the process environment) supplies
    GITHUB_TOKEN. Raises BakeryError naming the URL when upstream cannot be read."""
    try:
        kind = TYPES[upstream.type]
    except KeyError:
        raise BakeryError(f"upstream.type {upstream.type!r} is not one of {', '.join(TYPES)}",
                          "see docs/recipes.md") from None
    return kind(upstream, get, run.environment() if env is None else env)
