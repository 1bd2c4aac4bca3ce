"""The unpacked cache (the bakery uses `build/stage/.unpacked/`): the files each source
installs, kept per download and install map, so a later stage hardlinks them into the tree
instead of reading the archive again. It is only a cache: deleting it at any time is safe,
the next stage unpacks again."""
from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from sysext_bakery.errors import BakeryError
from sysext_bakery.files import discard, make_temp_dir, rename_kept
from sysext_bakery.model.image import Source
from sysext_bakery.build.install import install_source, who_prefix
from sysext_bakery.build.tree import Tree

UNPACKED_FORMAT = 3   # bump when what an entry holds or how it is laid out changes


def unpacked_key(source: Source, download: Path) -> str:
    """The name of a source's entry in the cache: a hash of everything that decides which
    files it installs where, with which modes (the download is named by its sha256)."""
    shaping = [UNPACKED_FORMAT, download.name, source.kind, source.filename, source.allow_setuid,
               [[i.pattern, i.dest, i.mode, i.replace] for i in source.install]]
    return hashlib.sha256(json.dumps(shaping).encode()).hexdigest()


def link_source(tree: Tree, source: Source, download: Path, unpacked: Path) -> None:
    """What install_source places, hardlinked from the source's entry under `unpacked`,
    which is made first when missing. Paths are claimed in the order and with the names
    install_source used, so clashes read the same."""
    entry = unpacked / unpacked_key(source, download)
    if not entry.is_dir():
        _unpack(source, download, entry)
    prefix = who_prefix(source)
    try:
        placed = json.loads((entry / "placed.json").read_text())
        for rel, suffix in placed:
            original = entry / "tree" / rel
            mode = os.lstat(original).st_mode
            if stat.S_ISDIR(mode):
                tree.add_dir(rel, prefix + suffix)
            elif stat.S_ISLNK(mode):
                tree.add_symlink(rel, os.readlink(original), prefix + suffix)
            else:
                tree.link_file(rel, original, prefix + suffix)
    except (FileNotFoundError, ValueError) as e:
        raise BakeryError(f"{entry}: the unpacked copy of {source.filename} is damaged: {e}",
                          hint=f"delete {unpacked} (a cache, safe to delete) and stage again") from e


def _unpack(source: Source, download: Path, entry: Path) -> None:
    """Installs the source into a fresh tree, records who placed what, and renames the
    result to `entry` (all or nothing)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    work = Path(make_temp_dir(prefix=f".{entry.name}.", dir=entry.parent))  # kept for the stop
    try:
        os.mkdir(work / "tree", 0o755)
        staged = Tree(work / "tree")
        install_source(staged, source, download)
        prefix = who_prefix(source)
        (work / "placed.json").write_text(
            json.dumps([[rel, who.removeprefix(prefix)] for rel, who in staged.placed()]))
        try:
            rename_kept(work, entry)
        except OSError:
            if not entry.is_dir():
                raise
            discard(work)              # a parallel stage made the same entry first
    except BaseException:
        discard(work)
        raise
