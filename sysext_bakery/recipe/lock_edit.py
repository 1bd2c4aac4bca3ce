"""Editing the lock in place: tomlkit keeps every comment, the order and the layout of the
file, so recording a sha256 shows in `git diff` as just the new entry or values."""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import tomlkit
import tomlkit.exceptions
from tomlkit.container import Container
from tomlkit.items import AoT, Comment, Key, KeyType, SingleKey, Table, Whitespace

from sysext_bakery.errors import BakeryError
from sysext_bakery.recipe.lock import HEADER


def with_sources(text: str, name: str, version: str, arch: str,
                 sources: list[dict[str, str]], shown: str, *, fill_hand_pin: bool = False) -> str:
    """The lock `text` with `[name."version".arch] sources` set, edited in place (tomlkit):
    the rest of the file, comments, layout and line ends included, comes back byte for byte.
    An entry that already lists the same URLs only gains or changes its sha256 values. With
    `fill_hand_pin`, a hand pin's bare `[name."version"]` header (no keys, no comment) gives
    way to the arch table written under it, as when the version was pinned afresh."""
    return _in_line_ends(text, lambda lf: _with_sources(lf, name, version, arch, sources, shown,
                                                        fill_hand_pin))


def _in_line_ends(text: str, change: Callable[[str], str]) -> str:
    """`change` edits with LF line ends (what tomlkit writes for the lines it adds); a lock
    written with CRLF throughout gets CRLF back, instead of LF lines mixed in. A lock that
    already mixes both is edited as it is: no line the edit does not touch is rewritten."""
    if "\r\n" not in text or text.count("\n") != text.count("\r\n"):
        return change(text)
    lf = text.replace("\r\n", "\n")
    new = change(lf)
    return text if new == lf else new.replace("\n", "\r\n")


def _with_sources(text: str, name: str, version: str, arch: str,
                  sources: list[dict[str, str]], shown: str, fill_hand_pin: bool) -> str:
    if text.strip() == "":
        text = HEADER
    elif not text.endswith("\n"):
        text += "\n"
    try:
        doc = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as e:
        raise BakeryError(f"{shown}: not valid TOML: {e}", "fix the syntax by hand") from None
    node: Any = doc
    keys = (name, version, arch)
    for depth, key in enumerate(keys):
        if key not in node:
            break
        node = node[key]
        if not isinstance(node, dict):
            raise BakeryError(f"{shown}: {'.'.join(keys[:depth + 1])}: expected a table",
                              "fix the lock by hand; see the comment at the top of lock.toml")
    else:
        old = node.get("sources")
        if isinstance(old, list) and all(isinstance(s, dict) for s in old) \
                and [s.get("url") for s in old] == [s["url"] for s in sources]:
            for i, (entry, source) in enumerate(zip(old, sources)):
                if "sha256" in entry or isinstance(entry, Table):
                    entry["sha256"] = source["sha256"]
                else:   # tomlkit would glue a new key to the closing brace: write it afresh
                    old[i] = _inline(source)
        else:
            node["sources"] = _sources_array(sources)
        return tomlkit.dumps(doc)
    new: Table = tomlkit.table()
    new.append("sources", _sources_array(sources))
    leaf = new
    for below in range(len(keys) - 1, depth, -1):   # the tables above it that do not exist yet
        parent = tomlkit.table(is_super_table=True)
        parent.append(_key(keys[below], below), new)
        new = parent
    if fill_hand_pin and depth == 2 and _is_bare(node):
        _fill_bare(node, _key(keys[depth], depth), new)
    else:
        _append_table(node, _key(keys[depth], depth), new, leaf)
    return tomlkit.dumps(doc)


def with_version(text: str, name: str, version: str, arches: dict[str, list[dict[str, str]]],
                 shown: str) -> str:
    """The lock `text` with every arch of `name` `version` set to these sources (a pin by
    `doit update`); arches are written in the given order, each edited as with_sources does.
    A hand pin's bare `[name."version"]` goes: the result reads as a version pinned afresh."""
    for arch, sources in arches.items():
        text = with_sources(text, name, version, arch, sources, shown, fill_hand_pin=True)
    return text


def without_version(text: str, name: str, version: str, shown: str) -> str:
    """The lock `text` without `[name."version"]` and its arch tables (retention); the rest,
    comments included, stays. A recipe left without versions loses its table too."""
    return _in_line_ends(text, lambda lf: _without_version(lf, name, version, shown))


def _without_version(text: str, name: str, version: str, shown: str) -> str:
    try:
        doc = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as e:
        raise BakeryError(f"{shown}: not valid TOML: {e}", "fix the syntax by hand") from None
    versions = doc.get(name)
    if not isinstance(versions, dict) or version not in versions:
        return text
    del versions[version]
    if not versions:
        del doc[name]
    return tomlkit.dumps(doc)


def _key(key: str, depth: int) -> Key:
    """Keys as the format shows them: versions always quoted (`"1.0"`, also `"27"`)."""
    bare = depth != 1 and re.fullmatch(r"[A-Za-z0-9_-]+", key)
    return SingleKey(key, t=KeyType.Bare if bare else KeyType.Basic)


def _inline(source: dict[str, str]) -> Any:
    pairs = ", ".join(f"{k} = {tomlkit.string(v).as_string()}" for k, v in source.items())
    return tomlkit.parse(f"x = {{ {pairs} }}\n")["x"]


def _sources_array(sources: list[dict[str, str]]) -> Any:
    """`sources = [...]` laid out as the format above shows: one inline table per line."""
    lines = "".join(f"    {_inline(s).as_string()},\n" for s in sources)
    return tomlkit.parse(f"sources = [\n{lines}]\n" if sources else "sources = []\n")["sources"]


def _is_bare(table: Any) -> bool:
    """A table with a header of its own and nothing else: no keys and no comment of its own
    (on the header's line or right below it: it says something about the pin, and keeps
    it). Comments after a blank line introduce the next table and move with it."""
    if not isinstance(table, Table) or table.is_super_table() or table.trivia.comment:
        return False
    body = table.value.body
    return (all(key is None and isinstance(item, (Whitespace, Comment)) for key, item in body)
            and (not body or isinstance(body[0][1], Whitespace)))


def _fill_bare(bare: Table, key: Key, table: Table) -> None:
    """Put `table` into the `bare` table in place of its header: `bare` becomes a super table
    (rendered through its children only), `table` starts where its header stood, and the
    blank lines and comments that ended it now end `table`."""
    trailing = [item for _, item in bare.value.body]
    bare.value.body.clear()
    bare._is_super_table = True   # tomlkit has no public setter; the parser sets it the same way
    bare.append(key, table)
    # after append: tomlkit's Table.append adds the parent's indentation to the child's
    table.trivia.indent = bare.trivia.indent
    leaf = table
    while leaf.value.body and isinstance(leaf.value.body[-1][1], Table):   # arch under version
        leaf = leaf.value.body[-1][1]
    for item in trailing:
        leaf.value.append(None, item)


def _append_table(container: Any, key: Key, table: Table, leaf: Table) -> None:
    """Append `table` to `container` so that it reads as the next table of the file: the
    comments and blank lines that trail the table rendered last before it introduce whatever
    follows, so they move after the new table (to the end of `leaf`, its last part)."""
    if not isinstance(container, (Table, Container)):
        # a table split across the file (tomlkit's proxy): tomlkit places the new part after
        # the blank line that ends the first part
        container[key] = table
        leaf.value.append(None, tomlkit.nl())
        return
    trailing = _peel_trailing(container)
    at_blank_line = isinstance(container, Container) and container.as_string().endswith("\n\n")
    container.append(key, table)
    # indented as the table before it (after append: tomlkit adds the parent's indentation)
    table.trivia.indent = ("" if at_blank_line else "\n") + _indent_of_last_table(container, table)
    for item in trailing:
        leaf.value.append(None, item)


def _indent_of_last_table(container: Table | Container, table: Table) -> str:
    """The spaces before the header of the table before `table` in `container`, when both
    have a header of their own (a super table has none to indent)."""
    body = container.value.body if isinstance(container, Table) else container.body
    before = [item for k, item in body if k is not None and isinstance(item, Table)][-2:-1]
    if table.is_super_table() or not before or before[0].is_super_table():
        return ""
    return before[0].trivia.indent.rsplit("\n", 1)[-1]


def _peel_trailing(node: Any) -> list[Any]:
    """Remove and return the comments and blank lines at the end of the last table rendered
    in `node`, from its first blank line on. Those at the top level of the file stay: they
    are its header."""
    while True:
        if isinstance(node, Table):
            body = node.value.body
        elif isinstance(node, Container):
            body = node.body
        elif isinstance(node, AoT) and node.body:
            node = node.body[-1]
            continue
        else:
            return []
        if body and body[-1][0] is not None and isinstance(body[-1][1], (Table, AoT)):
            node = body[-1][1]
            continue
        if isinstance(node, Container):
            return []
        peeled = []
        while body and body[-1][0] is None and isinstance(body[-1][1], (Whitespace, Comment)):
            peeled.append(body.pop()[1])
        peeled.reverse()
        # comments right below the table's last line (no blank line between) are its own
        own = next((i for i, item in enumerate(peeled) if isinstance(item, Whitespace)),
                   len(peeled))
        body.extend((None, item) for item in peeled[:own])
        return peeled[own:]
