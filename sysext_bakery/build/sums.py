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
from sysext_bakery.model.naming import file_name_problem
from sysext_bakery.model.image import SHA256_HEX

NAME = "SHA256SUMS"
SIGNATURE = f"{NAME}.gpg"     # the detached signature of a signed release's SHA256SUMS


def parse(text: str | bytes, origin: str = NAME) -> dict[str, str]:
    """file name -> sha256 from `sha256sum` output (`<hex>  <name>` or `<hex> *<name>`).
    Bytes (a file read as it is) are decoded here, so that bytes that are not UTF-8 are
    named like any other broken line instead of ending in a UnicodeDecodeError traceback.

    Read back from directories and releases that may be damaged or tampered with: a name
    is a plain file name (model/naming), never SHA256SUMS or its signature (neither can
    be listed in the manifest it is or signs), and one name has one digest. A line repeated
    exactly is let through: every reader gets the same digest from it, and `render` writes
    each name once, so the next rewrite drops it; a repeat with another digest is refused,
    since which one a host would check is anyone's guess."""
    hint = "restore it, or remove it to have it rewritten"
    if isinstance(text, bytes):
        text = decode_utf8(text, origin, "the bakery writes it as UTF-8: " + hint)
    sums: dict[str, str] = {}
    first: dict[str, int] = {}
    # lines end at \n only, as for sha256sum: str.splitlines would also end one at \x85,
    # \x1c or \u2028, cutting a name with such a character into a name and a broken line
    for n, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        digest, sep, name = line.partition(" ")
        name = name.lstrip(" *")
        if not sep or not SHA256_HEX.fullmatch(digest.lower()) or not name:
            raise BakeryError(f"{origin}:{n}: not a sha256sum line: {line!r}",
                              "each line must be '<64 hex digits>  <file name>'")
        problem = file_name_problem(name) or (
            name in (NAME, SIGNATURE) and f"lists {name}, which cannot be in its own manifest")
        if problem:
            raise BakeryError(f"{origin}:{n}: {problem}", f"the bakery lists plain file names "
                              f"of the directory only: {hint}")
        digest = digest.lower()
        if sums.get(name, digest) != digest:
            raise BakeryError(f"{origin}:{n}: {name} is listed again with another sha256 "
                              f"(line {first[name]}: {sums[name]}, line {n}: {digest})",
                              f"a file has one digest: {hint}")
        first.setdefault(name, n)
        sums[name] = digest
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
