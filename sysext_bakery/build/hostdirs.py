"""Which paths of an image would hide a directory of the host once merged.

systemd-sysext stacks the image's /usr (and /opt) over the host's with overlayfs: where the
image has a file or a symlink and the host a directory, the merged /usr shows the file, and
everything the host keeps in that directory is gone (a file at usr/lib/systemd makes
/usr/lib/systemd/system "Not a directory"). So a non-directory is refused wherever a base OS
has a directory: at any path of `data/host-directories.txt` (directories of Flatcar, Debian
and Fedora and those file-hierarchy(7) names; `scripts/gen-host-directories` makes it), at
any name directly under usr/ or opt/ (local software owns arbitrary names in /opt), and,
with BAKERY_BASE_TREE=<dir>, wherever that tree (a root file system of the OS the images are
for) has a directory under usr/ or opt/. Files inside these directories are fine.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path

from sysext_bakery.errors import BakeryError

BASE_TREE_ENV = "BAKERY_BASE_TREE"
DATA_FILE = "data/host-directories.txt"
TOPS = ("usr", "opt")
MAX_DEPTH = 12            # components below the base tree's root (usr/lib/a/b/... )
MAX_DIRS = 200_000        # a whole distribution's /usr has some 10-30k directories


def parse_list(text: str) -> frozenset[str]:
    """The paths of a host-directories list: one relative path a line, `#` comments."""
    return frozenset(line.strip().strip("/") for line in text.splitlines()
                     if line.strip() and not line.lstrip().startswith("#"))


@cache
def listed_dirs() -> frozenset[str]:
    """The shipped reference list, read once."""
    return parse_list(resources.files("sysext_bakery").joinpath(DATA_FILE).read_text())


def shadows_host_dir(path: str, extra: frozenset[str] | set[str] = frozenset()) -> bool:
    """Whether a non-directory at `path` (relative to the image root, e.g. "usr/lib/systemd")
    would hide a host directory; `extra` adds directories of a real base tree."""
    path = path.strip("/")
    top, _, rest = path.partition("/")
    if top in TOPS and rest and "/" not in rest:
        return True
    return path in listed_dirs() or path in extra


def host_dirs_of(base: Path, *, max_depth: int = MAX_DEPTH, max_dirs: int = MAX_DIRS) -> set[str]:
    """Every real directory (symlinks not followed) under base/usr and base/opt, as paths
    relative to `base`, at most `max_depth` components deep; BakeryError past `max_dirs`."""
    found: set[str] = set()
    pending = [top for top in TOPS if (base / top).is_dir() and not (base / top).is_symlink()]
    found.update(pending)
    while pending:
        rel = pending.pop()
        try:
            with os.scandir(base / rel) as it:
                children = [e.name for e in it if e.is_dir(follow_symlinks=False)]
        except OSError as e:
            raise BakeryError(f"{BASE_TREE_ENV}: cannot read {base / rel}: {e.strerror}",
                              hint="point it at a readable root file system tree") from None
        for name in children:
            child = f"{rel}/{name}"
            found.add(child)
            if len(found) > max_dirs:
                raise BakeryError(f"{BASE_TREE_ENV}: {base} has more than {max_dirs} directories "
                                  "under usr/ and opt/",
                                  hint="point it at the root of one OS image (its /usr tree), "
                                       "not at a whole disk")
            if child.count("/") + 1 < max_depth:
                pending.append(child)
    return found


@cache
def _base_tree_dirs(base: str) -> frozenset[str]:
    return frozenset(host_dirs_of(Path(base)))


def base_tree_dirs(environ: Mapping[str, str] = os.environ) -> frozenset[str]:
    """Directories of the tree BAKERY_BASE_TREE names (walked once per process), or none."""
    base = environ.get(BASE_TREE_ENV)
    if not base:
        return frozenset()
    if not Path(base, "usr").is_dir():
        raise BakeryError(f"{BASE_TREE_ENV}={base}: no usr/ directory there",
                          hint="set it to the root of a base OS tree (a directory holding its "
                               "usr/, e.g. a mounted Flatcar image), or unset it")
    return _base_tree_dirs(str(Path(base).resolve()))


def base_tree_signature(environ: Mapping[str, str] = os.environ) -> str:
    """What stage's up-to-date check records of BAKERY_BASE_TREE, so that setting, changing
    or unsetting it re-validates staged trees (and repacks nothing: it shapes no tree): ""
    when unset, which leaves the records of builds without it as they were; else the tree's
    resolved path and a digest of its usr/lib/os-release, so another release mounted at the
    same path counts as a change too. Read on every graph load: one stat and one small file,
    never a walk of the tree."""
    base = environ.get(BASE_TREE_ENV)
    if not base:
        return ""
    path = Path(base).resolve()
    try:
        release = hashlib.sha256((path / "usr/lib/os-release").read_bytes()).hexdigest()[:16]
    except OSError:
        release = "-"   # no os-release (or no tree at all: the stage says so)
    return f"{BASE_TREE_ENV} {path} os-release {release}"
