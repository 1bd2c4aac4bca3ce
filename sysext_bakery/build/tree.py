"""The staging tree: a directory being filled that refuses clashes and never writes through
a symlink, and the checks every archive member name and link target goes through before it
may become a path in it."""
from __future__ import annotations

import errno
import io
import os
import shutil
import stat
from pathlib import Path
from typing import BinaryIO, Callable

from sysext_bakery.errors import BakeryError

BUFSIZE = 1 << 20   # copy buffer: large enough that Python overhead disappears behind the I/O
SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID
# File system limits (NAME_MAX, and well below PATH_MAX so the tree's own prefix fits):
# beyond them writing fails with ENAMETOOLONG, so such members are refused up front.
MAX_SEGMENT = 255
MAX_PATH = 3072
MAX_LINK = 4095
_HOSTILE = "refusing a hostile or broken archive; check the source URL"


def _encoded(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def member_name(raw: str, where: str) -> str:
    """`raw` as a normalised relative path ("" for the archive root); refuses absolute
    paths and `..` segments."""
    if "\0" in raw:
        raise BakeryError(f"{where}: member {raw!r} has a NUL byte in its name", hint=_HOSTILE)
    if raw.startswith("/"):
        raise BakeryError(f"{where}: member '{raw}' has an absolute path", hint=_HOSTILE)
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BakeryError(f"{where}: member '{raw}' has a '..' component", hint=_HOSTILE)
    if len(_encoded(raw)) > MAX_PATH or any(len(_encoded(p)) > MAX_SEGMENT for p in parts):
        raise BakeryError(f"{where}: member '{raw[:80]}...' has a name longer than a file "
                          f"system allows ({MAX_SEGMENT} bytes a segment, {MAX_PATH} in all)",
                          hint=_HOSTILE)
    return "/".join(parts)


def check_symlink(name: str, target: str, where: str) -> None:
    """Refuses a symlink at member `name` whose target is absolute or climbs above the root."""
    if "\0" in target or len(_encoded(target)) > MAX_LINK:
        raise BakeryError(f"{where}: symlink '{name}' has a target no file system can hold "
                          f"({target[:80]!r})", hint=_HOSTILE)
    if not target or resolve_link(name.split("/")[:-1], target) is None:
        raise BakeryError(f"{where}: symlink '{name}' points outside the archive ('{target}')",
                          hint=_HOSTILE)


def resolve_link(base: list[str], target: str) -> str | None:
    """`target` taken relative to the directory `base`, lexically; None if it leaves the root."""
    if target.startswith("/"):
        return None
    parts = list(base)
    for part in target.split("/"):
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/".join(parts)


def resolve_in_tree(root: Path, rel: str, max_links: int = 40) -> str | None:
    """What `rel` names inside the tree at `root` once every symlink on the way is followed
    as the merged host would (absolute targets from the tree's root, never the builder's):
    the relative path of an existing non-link, or None when the chain leaves the tree,
    dangles or loops."""
    pending = [p for p in rel.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if not done:
                return None
            done.pop()
            continue
        path = root.joinpath(*done, part)
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > max_links:
                return None
            target = os.readlink(path)
            if target.startswith("/"):
                done = []
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
        else:
            if pending and not stat.S_ISDIR(st.st_mode):
                return None
            done.append(part)
    return "/".join(done)


class Tree:
    """A directory being filled, which remembers who placed each path so that two sources
    never silently overwrite each other and nothing is ever written through a symlink."""

    def __init__(self, root: Path):
        self.root = root
        self._placed: dict[str, str] = {"": "the tree root"}   # relative path -> who placed it
        self._dirs: set[str] = {""}

    def add_dir(self, rel: str, who: str) -> None:
        if rel in self._dirs:
            return
        self._claim_check(rel, who)
        self.add_dir(rel.rpartition("/")[0], who)
        path = self.root / rel
        os.mkdir(path)
        os.chmod(path, 0o755)
        self._dirs.add(rel)
        self._placed[rel] = who

    def add_file(self, rel: str, content: BinaryIO, mode: int, who: str) -> None:
        _write_new(self._claim(rel, who), content, mode)

    def link_file(self, rel: str, original: Path, who: str) -> None:
        """`original` (a file outside the tree that nothing writes to) placed at `rel` as a
        hardlink; copied where a link is impossible (another file system)."""
        path = self._claim(rel, who)
        try:
            os.link(original, path)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            with open(original, "rb") as content:
                _write_new(path, content, stat.S_IMODE(os.fstat(content.fileno()).st_mode))

    def add_text(self, rel: str, text: str, who: str) -> None:
        self.add_file(rel, io.BytesIO(text.encode()), 0o644, who)

    def copy_file(self, rel: str, source_rel: str, mode: int, who: str,
                  count: Callable[[BinaryIO], BinaryIO] = lambda content: content) -> None:
        """A second copy of a file already in the tree (what a hardlink member becomes);
        `count` wraps the copy's content (copies fill the disk as much as the first)."""
        with open(self.root / source_rel, "rb") as content:
            self.add_file(rel, count(content), mode, who)

    def add_symlink(self, rel: str, target: str, who: str) -> None:
        os.symlink(target, self._claim(rel, who))

    def placed(self) -> list[tuple[str, str]]:
        """(path, who placed it) for everything in the tree, parents before children."""
        return [(rel, who) for rel, who in self._placed.items() if rel]

    def _claim(self, rel: str, who: str) -> Path:
        self._claim_check(rel, who)
        self.add_dir(rel.rpartition("/")[0], who)
        self._placed[rel] = who
        return self.root / rel

    def _claim_check(self, rel: str, who: str) -> None:
        if any(part in ("", ".", "..") for part in rel.split("/")):
            raise BakeryError(f"{who}: '{rel}' is not a clean relative path in the image",
                              hint="install targets are plain paths under /usr or /opt")
        if rel in self._placed:
            raise BakeryError(f"{rel}: {who} clashes with {self._placed[rel]}",
                              hint="each path of the image comes from exactly one place: narrow "
                                   "the install patterns or remove the file from files/")


def _write_new(path: Path, content: BinaryIO, mode: int) -> None:
    # O_EXCL: a file is only ever written when this call created it, never through a link
    # or into an inode shared with something else (such as the unpacked cache).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as out:
        shutil.copyfileobj(content, out, BUFSIZE)
        os.fchmod(fd, mode)
