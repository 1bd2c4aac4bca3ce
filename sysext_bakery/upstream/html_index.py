"""`html-index`: a directory listing or download page; every match of the recipe's
`pattern` (one group) anywhere in the page is a version (docker's static index links
`docker-27.5.1.tgz`)."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from sysext_bakery.errors import BakeryError
from .base import RECIPE_HINT, Discovery, Get, checked_version, collect, text_of

if TYPE_CHECKING:
    from sysext_bakery.recipe.load import Upstream


def discover(up: "Upstream", get: Get, env: Mapping[str, str]) -> Discovery:
    if not up.url or not up.pattern:
        raise BakeryError("upstream: html-index needs `url` and `pattern`", RECIPE_HINT)
    page = text_of(get(up.url, {"Accept": "text/html, */*"}))
    # the group is the version as it stands; the prefix is ours
    found = [checked_version(m.group(1), up.prefix + m.group(1))
             for m in re.finditer(up.pattern, page)]
    return collect(found, up.url)
