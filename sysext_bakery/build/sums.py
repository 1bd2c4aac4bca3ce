"""SHA256SUMS files: the manifest format systemd-sysupdate reads next to the images."""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from sysext_bakery.errors import BakeryError
from sysext_bakery.files import write_atomic
from sysext_bakery.inputs import decode_utf8

NAME = "SHA256SUMS"


def parse(text: str | bytes, origin: str = NAME) -> dict[str, str]:
    """file name -> sha256 from `sha256sum` output (`<hex>  <name>` or `<hex> *<name>`).
    Bytes (a file read as it is) are decoded here, so that bytes that are not UTF-8 are
    named like any other broken line instead of ending in a UnicodeDecodeError traceback."""
    if isinstance(text, bytes):
        text = decode_utf8(text, origin, "the bakery writes it as UTF-8: restore it, or remove it "
                                         "to have it rewritten")
    sums: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition(" ")
        name = name.lstrip(" *")
        if not sep or len(digest) != 64 or not name:
            raise BakeryError(f"{origin}:{n}: not a sha256sum line: {line!r}",
                              "each line must be '<64 hex digits>  <file name>'")
        sums[name] = digest.lower()
    return sums


def render(sums: dict[str, str]) -> str:
    return "".join(f"{sums[name]}  {name}\n" for name in sorted(sums))


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """The lock every rewrite of directory/SHA256SUMS in a build tree takes (pack's `update`,
    `doit sums`): an flock on the directory itself, so there is no lock file to go stale."""
    guard = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        yield
    finally:
        os.close(guard)


def update(directory: Path, entries: dict[str, str]) -> None:
    """Set `entries` in directory/SHA256SUMS and drop entries whose file is gone, under the
    lock so parallel pack tasks do not lose each other's line."""
    with locked(directory):
        path = directory / NAME
        sums = parse(path.read_bytes(), str(path)) if path.exists() else {}
        sums.update(entries)
        write_atomic(path, render({n: d for n, d in sums.items() if (directory / n).exists()}))
