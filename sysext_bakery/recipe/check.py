"""Validation: walking `recipe.schema.SCHEMA` over a recipe's TOML. Every problem of a file
is collected (`Problems`), each naming the file and the key, so the user fixes them in one go;
an unknown key gets a `difflib` suggestion."""
from __future__ import annotations

import difflib
import re
from typing import Any

from sysext_bakery.errors import BakeryError
from sysext_bakery.inputs import brief, brief_key
from sysext_bakery.recipe.schema import (Key, install_target_problem, symlink_path_problem,
                                         symlink_target_problem)


class Problems:
    """Collects every problem of one file so the user fixes them in one go."""

    def __init__(self, where: str):
        self.where = where
        self.items: list[str] = []

    def add(self, key: str, what: str) -> None:
        key = brief_key(key, 120)   # keys come from the file: one can be 100,000 characters
        self.items.append(f"{self.where}: {key}: {what}" if key else f"{self.where}: {what}")

    def raise_if_any(self, hint: str) -> None:
        if self.items:
            raise BakeryError("\n".join(self.items), hint)


_PY_TYPES = {"string": str, "boolean": bool, "integer": int, "string list": list, "table": dict,
             "array of tables": list, "map": dict}


def _check_value(key: Key, value: Any, path: str, problems: Problems) -> None:
    if not isinstance(value, _PY_TYPES[key.type]) or (key.type == "integer" and isinstance(value, bool)):
        problems.add(path, f"expected a {key.type}, got {type(value).__name__} {brief(value)}")
        return
    if key.type == "string list":
        if not all(isinstance(v, str) for v in value):
            problems.add(path, f"expected a list of strings, got {brief(value)}")
            return
        if key.required and not value:
            problems.add(path, "must not be empty")
        for v in value:
            if key.choices and v not in key.choices:
                problems.add(path, f"{brief(v)} is not one of {', '.join(key.choices)}")
            if key.check and (what := key.check(v)):
                problems.add(path, what)
        if len(set(value)) != len(value):
            problems.add(path, f"duplicate entries in {brief(value)}")
        return
    if key.type == "table":
        check_table(key.keys, value, path, problems)
        return
    if key.type == "array of tables":
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                problems.add(f"{path}[{i}]", "expected a table")
            else:
                check_table(key.keys, item, f"{path}[{i}]", problems)
        return
    if key.type == "map":
        for k, v in value.items():
            where = {"install target": path, "link target": f'{path}."{k}"'}.get(key.values,
                                                                                 f"{path}.{k}")
            _check_map_value(key.values, v, where, k, problems)
            if key.check:   # a map's check applies to its keys and string-list items
                for item in (k, *(v if isinstance(v, list) else ())):
                    if what := key.check(item):
                        problems.add(path, what)
        return
    if key.choices and value not in key.choices:
        problems.add(path, f"{brief(value)} is not one of {', '.join(key.choices)}")
    elif key.check and (what := key.check(value)):
        problems.add(path, what)


def _check_map_value(kind: str, value: Any, path: str, map_key: str, problems: Problems) -> None:
    if kind == "string":
        if not isinstance(value, str):
            problems.add(path, f"expected a string, got {brief(value)}")
    elif kind == "scalar":
        if not isinstance(value, (str, bool, int)):
            problems.add(path, f"expected a string, boolean or integer, got {brief(value)}")
    elif kind == "string list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.add(path, f"expected a list of strings, got {brief(value)}")
    elif kind == "link target":
        if not isinstance(value, str):
            problems.add(path, f"expected a link target string, got {brief(value)}")
        elif not symlink_path_problem(map_key) and (what := symlink_target_problem(map_key, value)):
            problems.add(path, what)
    elif kind == "install target":
        dest, mode = value, None
        if isinstance(value, dict):
            extra = set(value) - {"to", "mode", "replace"}
            if extra:
                problems.add(path, f"{brief(map_key)}: unknown key {brief(sorted(extra)[0])} "
                                   "(known: to, mode, replace)")
            dest, mode = value.get("to"), value.get("mode")
            if mode is not None and (not isinstance(mode, str) or not _is_octal_mode(mode)):
                problems.add(path, f"{brief(map_key)}: mode {brief(mode)} is not an octal string like \"0755\"")
            if "replace" in value:
                _check_replace(value["replace"], f'{path}."{map_key}".replace', problems)
        if not isinstance(dest, str):
            problems.add(path, f"{brief(map_key)}: expected a destination path, got {brief(dest)}")
        elif what := install_target_problem(dest):
            problems.add(path, what)


def _check_replace(value: Any, path: str, problems: Problems) -> None:
    if not isinstance(value, dict) or not value:
        problems.add(path, f"expected a table of \"old\" = \"new\" text, got {brief(value)}")
        return
    for old, new in value.items():
        if not old:
            problems.add(path, "an empty text cannot be replaced")
        if not isinstance(new, str):
            problems.add(f'{path}."{old}"', f"expected the new text as a string, got {new!r}")


def _is_octal_mode(value: str) -> bool:
    return re.fullmatch(r"0?[0-7]{3,4}", value) is not None


def check_table(keys: tuple[Key, ...], data: dict, path: str, problems: Problems) -> None:
    known = {k.name: k for k in keys}
    prefix = f"{path}." if path else ""
    for name, value in data.items():
        if name not in known:
            close = difflib.get_close_matches(name.replace("_", "-"), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
            problems.add(f"{prefix}{name}", f"unknown key{hint}")
        else:
            _check_value(known[name], value, f"{prefix}{name}", problems)
    for key in keys:
        if key.required and key.name not in data:
            problems.add(f"{prefix}{key.name}", "missing (required)")
