"""The one nesting rule for parsed JSON and TOML documents: network answers
(`model/reply.parse_json`, 64 levels) and the project's input files (`inputs`, 32 levels, and
64-bit integers) differ only in the numbers they pass here.

A level is one array or object (a TOML table or array): the outermost one is level 1, so
`[[]]` nests 2 levels and a scalar adds none. Deeper documents are hostile or broken, and
would reach code that recurses (repr, json.dumps) otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Path = tuple["str | int", ...]     # object keys and array indexes, outermost first


@dataclass(frozen=True)
class Problem:
    path: Path          # where: the container past the bound, or the integer out of range
    too_deep: bool      # else an integer out of range
    bits: int = 0       # the integer's bit length


def problem(doc: Any, max_depth: int, int_bits: int | None = None) -> Problem | None:
    """The first container nested past `max_depth` levels, or (with `int_bits`) integer
    outside the signed `int_bits` range, in `doc`; None if there is none. Walks without
    recursion (the check must not overflow itself) and spells a path only for the problem."""
    low, high = (-(1 << (int_bits - 1)), (1 << (int_bits - 1)) - 1) if int_bits else (0, 0)

    def bad_int(value: Any) -> bool:
        return (int_bits is not None and isinstance(value, int) and not isinstance(value, bool)
                and not low <= value <= high)

    if bad_int(doc):
        return Problem((), False, doc.bit_length())
    # a path is kept as a chain (key, parent chain), cheap to extend, spelt out when needed
    stack: list[tuple[Any, int, tuple | None]] = (
        [(doc, 1, None)] if isinstance(doc, (dict, list)) else [])
    while stack:
        node, depth, chain = stack.pop()
        if depth > max_depth:
            return Problem(_spelt(chain), True)
        for key, child in (node.items() if isinstance(node, dict) else enumerate(node)):
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1, (key, chain)))
            elif bad_int(child):
                return Problem(_spelt((key, chain)), False, child.bit_length())
    return None


def _spelt(chain: tuple | None) -> Path:
    keys: list[str | int] = []
    while chain is not None:
        key, chain = chain
        keys.append(key)
    return tuple(reversed(keys))
