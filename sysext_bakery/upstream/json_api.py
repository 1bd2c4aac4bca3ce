"""`json-api`: any JSON endpoint, read through a small declarative path, with equality
filters and "after the last item" paging (HashiCorp's releases API).

Path syntax (`path`): steps from the document root, no expressions:
  `name`   a field of an object          `[*]`  every element of a list
  `[N]`    the N-th element of a list    steps join with `.` (`data[*].attributes.version`)
The values selected are the tags. When the path ends in a field name, the objects holding
that field are the *items*: `filter = { field = value, ... }` keeps items whose fields equal
the values (same type: `false` is not `0`; a dotted key such as `"status.state"` looks into
a nested object; a missing field never matches), and `next-page = { param = "field" }` asks
for the next page with `?param=<field of the last item>` until a page selects nothing.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sysext_bakery.errors import BakeryError
from .base import (RECIPE_HINT, Discovery, Get, Reply, Skipped, collect, json_of, link, pages,
                   tag_version, with_query)

if TYPE_CHECKING:
    from sysext_bakery.recipe.load import Upstream

# JSON APIs page small: HashiCorp's releases API gives at most 20 a page (`limit`) and lists
# every enterprise build (+ent, +ent.hsm, ...) as a release of its own, so vault and consul
# have well over base.MAX_PAGES * 20 = 400. 250 pages read 5000 releases at 20 a page: a
# normal upstream ends long before; the walk is still a bounded number of bounded requests.
MAX_PAGES = 250

STEP_RE = re.compile(r"(?P<dot>\.)?(?:(?P<name>[A-Za-z0-9_$@-]+)|\[(?P<index>\*|\d+)\])")
EACH = "*"


def parse_path(path: str) -> list[str | int]:
    """Steps: EACH (`[*]`) every element, an int one element, another str a field name.
    Raises ValueError. (`*` is no field name here, so EACH cannot be mistaken for one.)"""
    steps: list[str | int] = []
    pos = 0
    while pos < len(path):
        m = STEP_RE.match(path, pos)
        if not m or (m["name"] and bool(m["dot"]) != bool(steps)) or (m["index"] and m["dot"]):
            raise ValueError(f"path {path!r}: cannot read it at offset {pos} "
                             "(expected name, .name, [*] or [N])")
        steps.append(m["name"] if m["name"] else EACH if m["index"] == EACH else int(m["index"]))
        pos = m.end()
    if not steps:
        raise ValueError("path must not be empty")
    return steps


def path_problem(path: str) -> str | None:
    """For the recipe schema: what is wrong with a path, or None."""
    try:
        parse_path(path)
    except ValueError as e:
        return str(e)
    return None


def select(doc: Any, steps: list[str | int], url: str, path: str) -> list[tuple[Any, Any]]:
    """(item, value) pairs: each value the path selects, with the object or list it was in."""
    nodes: list[tuple[Any, Any]] = [(None, doc)]
    for step in steps:
        out = []
        for _, node in nodes:
            if _is_field(step):
                if not isinstance(node, dict) or step not in node:
                    raise _shape(url, path, f"no field {step!r} in {_kind(node)}")
                out.append((node, node[step]))
            elif not isinstance(node, list):
                raise _shape(url, path, f"expected a list, got {_kind(node)}")
            elif step == EACH:
                out.extend((node, v) for v in node)
            elif step < len(node):
                out.append((node, node[step]))
        nodes = out
    return nodes


def _is_field(step: str | int) -> bool:
    return isinstance(step, str) and step != EACH


def _kind(node: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(type(node), repr(node)[:40])


def _shape(url: str, path: str, what: str) -> BakeryError:
    return BakeryError(f"{url}: upstream.path {path!r}: {what}",
                       "the API's answer changed shape, or the path is wrong; " + RECIPE_HINT)


def lookup(item: Any, dotted: str) -> tuple[bool, Any]:
    for part in dotted.split("."):
        if not isinstance(item, dict) or part not in item:
            return False, None
        item = item[part]
    return True, item


def matches(item: Any, wanted: tuple[tuple[str, Any], ...]) -> bool:
    for key, value in wanted:
        found, actual = lookup(item, key)
        if not found or type(actual) is not type(value) or actual != value:
            return False
    return True


def discover(up: "Upstream", get: Get, env: Mapping[str, str]) -> Discovery:
    if not up.url or not up.path:
        raise BakeryError("upstream: json-api needs `url` and `path`", RECIPE_HINT)
    try:
        steps = parse_path(up.path)
    except ValueError as e:
        raise BakeryError(f"upstream.path: {e}", RECIPE_HINT) from None
    if (up.filter or up.next_page) and not _is_field(steps[-1]):
        raise BakeryError(f"upstream.path {up.path!r}: filter and next-page need a path ending "
                          "in a field name", RECIPE_HINT)

    def items_of(reply: Reply) -> list[tuple[Any, Any]]:
        return select(json_of(reply), steps, reply.url, up.path)

    def next_of(reply: Reply, items: list[tuple[Any, Any]]) -> str | None:
        if nxt := link(reply.headers, "next", reply.url):
            return nxt
        params = {}
        for param, key in up.next_page:
            found, value = lookup(items[-1][0], key)
            if not found or isinstance(value, (dict, list)) or value is None:
                return None
            params[param] = str(value).lower() if isinstance(value, bool) else str(value)
        return with_query(reply.url, **params) if params else None

    walk = pages(get, up.url, lambda _: {"Accept": "application/json"}, items_of, next_of,
                 max_pages=MAX_PAGES)
    found: list[str | Skipped | None] = []
    for items in walk.items:
        for item, value in items:
            if not matches(item, up.filter):
                continue
            if isinstance(value, str):
                found.append(tag_version(value, up.pattern, up.prefix))
            else:
                found.append(Skipped(repr(value)[:60], f"selected by {up.path!r} but "
                                     f"{_kind(value)} where a string was expected"))
    return collect(found, up.url, walk.warnings)
