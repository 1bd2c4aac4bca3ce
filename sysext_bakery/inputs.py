"""Reading the project's hand-written input files (recipes, the lock, release.toml, torcx
profiles): bounded, and every way the bytes can be wrong becomes one BakeryError naming the
file (and the key, where there is one). Nothing past this module sees undecoded bytes, a
nesting deeper than MAX_DEPTH or an integer TOML itself does not allow.

`brief` shows a value in a message: input values can be 100,000 characters long, integers
too large for `repr` (Python refuses to print more than 4300 digits) or nested too deeply to
print, and a message must stay one screen long.
"""
from __future__ import annotations

import json
import os
import reprlib
import sys
import tomllib
from pathlib import Path
from typing import Any

from sysext_bakery.errors import BakeryError
from sysext_bakery.model import nesting

MAX_BYTES = 1 << 20   # 1 MiB: the largest real input (the lock of ~1000 images) is ~300 KiB
MAX_DEPTH = 32        # tables and arrays (model/nesting's levels): recipes nest 4 deep; this
                      # leaves room, not stacks. Integers: TOML's "64-bit signed integers"


def read_toml(path: Path, shown: str | None = None, hint: str = "fix the syntax") -> dict[str, Any]:
    """The TOML document at `path`, named `shown` (default: the path) in every message."""
    shown = shown or str(path)
    return parse_toml(read_bounded(path, shown), shown, hint)


def read_text(path: Path, shown: str | None = None, what: str = "file") -> str:
    """The text of an input file as it is (line ends untouched), bounded and UTF-8 like
    every other input: a failure is a BakeryError naming the file."""
    shown = shown or str(path)
    return _text(read_bounded(path, shown, what), shown)


def parse_toml(data: bytes | str, shown: str, hint: str = "fix the syntax") -> dict[str, Any]:
    text = _text(data, shown)
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BakeryError(f"{shown}: not valid TOML: {e}", hint) from None
    except RecursionError:
        raise BakeryError(f"{shown}: not valid TOML: arrays or inline tables nested too deeply",
                          f"inputs nest at most {MAX_DEPTH} levels") from None
    except ValueError as e:   # an integer of more than sys.get_int_max_str_digits() digits
        if "integer string conversion" in str(e):
            raise BakeryError(f"{shown}: not valid TOML: an integer has more than "
                              f"{sys.get_int_max_str_digits()} digits", "TOML integers are 64-bit") from None
        raise BakeryError(f"{shown}: not valid TOML: {brief(str(e), 200)}", hint) from None
    _check_shape(parsed, shown)
    return parsed


def read_json(path: Path, shown: str | None = None, what: str = "file") -> Any:
    """The JSON document at `path` (same bounds as TOML)."""
    shown = shown or str(path)
    text = _text(read_bounded(path, shown, what), shown)
    try:
        data = json.loads(text)
    except RecursionError:
        raise BakeryError(f"{shown}: the {what} is not valid JSON: nested too deeply") from None
    except ValueError as e:   # JSONDecodeError, and integers past the digit limit
        raise BakeryError(f"{shown}: the {what} is not valid JSON: {brief(str(e), 200)}") from None
    _check_shape(data, shown)
    return data


def read_bounded(path: Path, shown: str, what: str = "file", limit: int = MAX_BYTES) -> bytes:
    """The bytes of an input file, refused past `limit` (MAX_BYTES) without reading more."""
    try:
        with path.open("rb") as f:
            # read(n) reserves n bytes up front: ask for the file's size, not the limit
            size = os.fstat(f.fileno()).st_size
            data = f.read(min(size, limit) + 1)
            if size < len(data) <= limit:
                data += f.read(limit + 1 - len(data))   # it grew meanwhile, or is no plain file
    except OSError as e:
        raise BakeryError(f"{shown}: cannot read the {what}: {e.strerror or e}") from None
    if len(data) > limit:
        raise BakeryError(f"{shown}: larger than {limit // 1024} KiB; not a {what} the "
                          "bakery reads", "check that this is the right file")
    return data


def _text(data: bytes | str, shown: str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")   # so one size limit counts bytes
    if len(data) > MAX_BYTES:
        raise BakeryError(f"{shown}: larger than {MAX_BYTES // 1024} KiB",
                          "check that this is the right file")
    return decode_utf8(data, shown, "save the file as UTF-8")


def decode_utf8(data: bytes, shown: str, hint: str) -> str:
    """`data` as UTF-8, or a BakeryError naming `shown`, the line and the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise BakeryError(f"{shown}: line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x})",
                          hint) from None


def _check_shape(data: Any, shown: str) -> None:
    """Refuse nesting past MAX_DEPTH and integers outside 64 bits (hex, octal and binary
    integers escape Python's digit limit): model/nesting's rule, with the key named."""
    found = nesting.problem(data, MAX_DEPTH, int_bits=64)
    if found is None:
        return
    where = ""
    for key in found.path:
        where = f"{where}[{key}]" if isinstance(key, int) else \
            f"{where}.{brief_key(key)}" if where else brief_key(key)
    at = f"{shown}: {brief_key(where, 120)}: " if where else f"{shown}: "
    if found.too_deep:
        raise BakeryError(f"{at}nested more than {MAX_DEPTH} levels deep",
                          "flatten the tables or arrays")
    raise BakeryError(f"{at}integer of {found.bits} bits is out of range",
                      "TOML integers are 64-bit")


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel = 3


def brief(value: Any, limit: int = 80) -> str:
    """repr(value) cut to about `limit` characters, safe for any parsed input value."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<integer of {value.bit_length()} bits>"
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else f"{value[:limit]!r}… ({len(value)} characters)"
    try:
        text = _REPR.repr(value)
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit + 20 else text[:limit] + "…"


def brief_key(key: str, limit: int = 60) -> str:
    """A table key as messages show it: cut when long."""
    return key if len(key) <= limit else f"{key[:limit]}…({len(key)} characters)"
