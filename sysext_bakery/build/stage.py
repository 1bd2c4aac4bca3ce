"""Building the /usr (and /opt) tree of one image from its verified downloads.

Archives are read in one streaming pass and never unpacked as a whole: each member is
checked (no absolute paths, no `..`, no device nodes, no links leaving the archive) and, when
an install pattern matches it, written straight to its place in the tree. The tree is built
in a temporary directory next to `dest`, validated, then renamed into place.

With an `unpacked` directory (the bakery uses `build/stage/.unpacked/`), the files each source
installs are kept there per download and install map, and a later stage hardlinks them into
the tree instead of reading the archive again. It is only a cache: deleting it at any time
is safe, the next stage unpacks again.
"""
from __future__ import annotations

import bz2
import errno
import fcntl
import fnmatch
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import zstandard

from sysext_bakery import run
from sysext_bakery.errors import BakeryError
from sysext_bakery.model.image import Image, Install, Source
from sysext_bakery.build import hostsetup
from sysext_bakery.build.validate import iter_tree, validate_tree

if TYPE_CHECKING:
    from subprocess import Popen

BUFSIZE = 1 << 20   # copy buffer: large enough that Python overhead disappears behind the I/O
SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID

# Decompression runs in a child process, the way `tar -xzf` runs gzip: the second core
# inflates while this process parses the tar stream and writes files. The first tool found
# on PATH is used (pigz inflates faster than gzip).
_TOOLS: dict[str, tuple[tuple[str, ...], ...]] = {
    "tar.gz": (("pigz", "-dc"), ("gzip", "-dc")),
    "tar.xz": (("xz", "-dc"),),
    "tar.bz2": (("bzip2", "-dc"),),
    "tar.zst": (("zstd", "-dcq"),),
}
# Exit status 2 is a warning for these (e.g. trailing garbage after the stream, which the
# in-process decompressors do not look at either); for bzip2 it means a corrupt file.
_WARNING_STATUS = {"pigz": 2, "gzip": 2, "xz": 2}
PIPE_SIZE = 1 << 20  # a larger pipe lets the child run ahead of the tar parser

# Without the tool, decompression wraps the raw file in-process. Either way tarfile only
# ever sees a plain tar stream ("r|"): one code path for every compression.
_DECOMPRESS = {
    "tar": lambda raw: raw,
    "tar.gz": lambda raw: gzip.GzipFile(fileobj=raw),
    "tar.xz": lambda raw: lzma.LZMAFile(raw),
    "tar.bz2": lambda raw: bz2.BZ2File(raw),
    "tar.zst": lambda raw: zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True),
}

# What a truncated or corrupt download raises somewhere in the stdlib / zstandard stack.
_READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError,
                zstandard.ZstdError, OSError)


@dataclass(frozen=True)
class Member:
    """One archive entry, after its name was checked and normalised."""
    name: str           # relative posix path without "." or ".." segments
    type: str           # "file" | "dir" | "symlink" | "hardlink"
    mode: int           # permission bits, setuid/setgid included
    size: int = 0
    linkname: str = ""  # symlink: the target as stored; hardlink: the normalised member name


# ---------------------------------------------------------------------------------------------
# Reading archives safely


def iter_members(archive: Path, kind: str, origin: str,
                 name: str | None = None) -> Iterator[tuple[Member, BinaryIO | None]]:
    """Each member of `archive` with, for files, a stream of its content.

    A stream is only valid until the next member is requested (archives are read in one
    pass). `name` is the archive's name for messages and the member name of a "file" (the
    download cache names files by hash); it defaults to the file's own name.
    Raises BakeryError naming `origin`, the archive and the member for unsafe members and
    unreadable archives, also while a member's stream is read.
    """
    label = name or archive.name
    where = f"{origin}: {label}"
    try:
        if kind == "file":
            yield from _file_members(archive, label, where)
        elif kind == "zip":
            yield from _zip_members(archive, where)
        elif kind in _DECOMPRESS:
            yield from _tar_members(archive, kind, where)
        else:
            raise BakeryError(f"{where}: unknown archive kind {kind!r}",
                              hint=f"use one of: {', '.join([*_DECOMPRESS, 'zip', 'file'])}")
    except _READ_ERRORS as e:
        raise _unreadable(where, kind, e) from e


def _unreadable(where: str, kind: str, error: Exception) -> BakeryError:
    return BakeryError(f"{where}: cannot be read as {kind}: {error}",
                       hint="the download is corrupt or of another kind; check the source's URL "
                            "and `type`, then delete it from the download cache and fetch again")


class _Content(io.RawIOBase):
    """A member's content stream that reports a corrupt archive as BakeryError."""

    def __init__(self, raw: BinaryIO, where: str, kind: str):
        super().__init__()
        self._raw, self._where, self._kind = raw, where, kind

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            return self._raw.read(size)
        except _READ_ERRORS as e:
            raise _unreadable(self._where, self._kind, e) from e

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


class _ChildFailed(OSError):
    """A decompressor child exited with an error (its stderr is the message)."""


class _ChildOutput:
    """The stdout of a decompressor child; at its end, the child's failure is raised."""

    def __init__(self, proc: Popen, ok: set[int], stderr: BinaryIO):
        self._proc, self._ok, self._stderr = proc, ok, stderr

    def read(self, size: int = -1) -> bytes:
        data = self._proc.stdout.read(size)
        if not data:
            self._check()
        return data

    def drain(self) -> None:
        """Reads to the end (the padding after the tar end marker) so the exit code counts:
        gzip checks its CRC only there."""
        while self.read(BUFSIZE):
            pass

    def _check(self) -> None:
        code = self._proc.wait()
        if code not in self._ok:
            self._stderr.seek(0)
            lines = self._stderr.read().decode(errors="replace").strip().splitlines()
            # The first line says what is wrong; bzip2 follows it with a page of advice.
            raise _ChildFailed(lines[0] if lines else f"{self._proc.args[0]} exited with status {code}")


@contextmanager
def _plain_tar(archive: Path, kind: str) -> Iterator[BinaryIO]:
    """The uncompressed tar stream of `archive`: from a child process when its tool is
    installed, else decompressed in-process. The child is always reaped."""
    command = _find_tool(kind)
    if command is None:
        with open(archive, "rb") as raw, _DECOMPRESS[kind](raw) as plain:
            yield plain
        return
    ok = {0, _WARNING_STATUS.get(Path(command[0]).name, 0)}
    with open(archive, "rb") as raw, tempfile.TemporaryFile() as stderr:
        proc = run.spawn(command, what=f"decompressing {archive.name}", stdin=raw, stderr=stderr)
        try:
            _grow_pipe(proc.stdout)
            output = _ChildOutput(proc, ok, stderr)
            yield output
            output.drain()
        finally:
            proc.stdout.close()
            run.kill(proc)       # a no-op once it exited; stops it when reading ended early


def _find_tool(kind: str) -> list[str] | None:
    for name, *args in _TOOLS.get(kind, ()):
        path = run.which(name)
        if path is not None:
            return [path, *args]
    return None


def _grow_pipe(pipe: BinaryIO) -> None:
    try:
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass                     # only a speed-up (the size may be above the user's limit)


def _tar_members(archive: Path, kind: str, where: str) -> Iterator[tuple[Member, BinaryIO | None]]:
    files_seen: set[str] = set()   # hardlinks may only point back to these
    with _plain_tar(archive, kind) as plain, \
            tarfile.open(fileobj=plain, mode="r|", bufsize=64 * 1024) as tar:
        for info in tar:
            member = _tar_member(info, where, files_seen)
            if member is None:
                continue
            if member.type == "file":
                files_seen.add(member.name)
                yield member, _Content(tar.extractfile(info), f"{where}: {member.name}", kind)
            else:
                yield member, None


def _tar_member(info: tarfile.TarInfo, where: str, files_seen: set[str]) -> Member | None:
    name = member_name(info.name, where)
    mode = info.mode & 0o7777
    if info.isdir():
        return Member(name, "dir", mode) if name else None
    if not name:
        raise BakeryError(f"{where}: member '{info.name}' has an empty name",
                          hint="the archive is malformed; check the source URL")
    if info.isreg():
        return Member(name, "file", mode, info.size)
    if info.issym():
        check_symlink(name, info.linkname, where)
        return Member(name, "symlink", mode, linkname=info.linkname)
    if info.islnk():
        return Member(name, "hardlink", mode, linkname=_hardlink_target(info, where, files_seen))
    what = ("a character device" if info.ischr() else "a block device" if info.isblk()
            else "a fifo" if info.isfifo() else f"of tar type {info.type!r}")
    raise BakeryError(f"{where}: member '{info.name}' is {what}",
                      hint="a sysext may only ship files, directories and links; "
                           "this archive is not a tool release - check the source URL")


def _hardlink_target(info: tarfile.TarInfo, where: str, files_seen: set[str]) -> str:
    resolved = _resolve([], info.linkname)
    if resolved is None:
        raise BakeryError(f"{where}: hardlink '{info.name}' points outside the archive "
                          f"('{info.linkname}')",
                          hint="refusing a hostile or broken archive; check the source URL")
    if resolved not in files_seen:
        raise BakeryError(f"{where}: hardlink '{info.name}' points to '{info.linkname}', "
                          "which is not an earlier regular file of the archive",
                          hint="the archive is malformed; check the source URL")
    return resolved


def _zip_members(archive: Path, where: str) -> Iterator[tuple[Member, BinaryIO | None]]:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = member_name(info.filename, where)
            unix = info.external_attr >> 16     # st_mode when the zip was made on unix, else 0
            ftype, mode = stat.S_IFMT(unix), (unix & 0o7777) or 0o644
            if info.is_dir() or ftype == stat.S_IFDIR:
                if name:
                    yield Member(name, "dir", mode), None
            elif ftype == stat.S_IFLNK:
                target = zf.read(info).decode("utf-8", "surrogateescape")
                check_symlink(name, target, where)
                yield Member(name, "symlink", mode, linkname=target), None
            elif ftype in (0, stat.S_IFREG):
                with zf.open(info) as content:
                    yield (Member(name, "file", mode, info.file_size),
                           _Content(content, f"{where}: {name}", "zip"))
            else:
                raise BakeryError(f"{where}: member '{info.filename}' is not a file, directory "
                                  f"or symlink (mode {unix:o})",
                                  hint="a sysext may only ship files, directories and links")


def _file_members(path: Path, label: str, where: str) -> Iterator[tuple[Member, BinaryIO | None]]:
    name = member_name(label, where)
    with open(path, "rb") as f:
        # The cache does not keep upstream modes: a download is executable when it looks
        # like a program (static binaries and scripts are why plain files are downloaded).
        executable = f.read(4).startswith((b"\x7fELF", b"#!"))
        f.seek(0)
        size = os.fstat(f.fileno()).st_size
        yield Member(name, "file", 0o755 if executable else 0o644, size), _Content(f, where, "file")


def member_name(raw: str, where: str) -> str:
    """`raw` as a normalised relative path ("" for the archive root); refuses absolute
    paths and `..` segments."""
    if raw.startswith("/"):
        raise BakeryError(f"{where}: member '{raw}' has an absolute path",
                          hint="refusing a hostile or broken archive; check the source URL")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BakeryError(f"{where}: member '{raw}' has a '..' component",
                          hint="refusing a hostile or broken archive; check the source URL")
    return "/".join(parts)


def check_symlink(name: str, target: str, where: str) -> None:
    """Refuses a symlink at member `name` whose target is absolute or climbs above the root."""
    if not target or _resolve(name.split("/")[:-1], target) is None:
        raise BakeryError(f"{where}: symlink '{name}' points outside the archive ('{target}')",
                          hint="refusing a hostile or broken archive; check the source URL")


def _resolve(base: list[str], target: str) -> str | None:
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


# ---------------------------------------------------------------------------------------------
# The tree being built


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

    def copy_file(self, rel: str, source_rel: str, mode: int, who: str) -> None:
        """A second copy of a file already in the tree (what a hardlink member becomes)."""
        with open(self.root / source_rel, "rb") as content:
            self.add_file(rel, content, mode, who)

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


# ---------------------------------------------------------------------------------------------
# Install map


@dataclass(frozen=True)
class _Rule:
    install: Install
    segments: tuple[str, ...]   # the pattern, split on "/"
    keep_from: int              # into a directory, members keep their path from this segment on
    dest: str                   # relative to the tree, no trailing "/"
    into_dir: bool              # dest ended with "/"


def _rule(install: Install, origin: str) -> _Rule:
    segments = tuple(p for p in install.pattern.split("/") if p not in ("", "."))
    dest = install.dest.strip("/")
    if not segments or ".." in segments or not dest:
        raise BakeryError(f"{origin}: install: '{install.pattern}' = '{install.dest}' is not a "
                          "pattern inside the archive and a path under /usr or /opt",
                          hint='write e.g. "docker/*" = "/usr/bin/"')
    # Into a directory a file lands under its own name ("*/wasmtime" -> wasmtime); with "**"
    # the part of its path matched from the "**" on is kept ("lib/**" copies the tree).
    keep_from = segments.index("**") if "**" in segments else len(segments) - 1
    return _Rule(install, segments, keep_from, dest, install.dest.endswith("/"))


def _matches(segments: Sequence[str], parts: Sequence[str]) -> bool:
    """fnmatch per path segment, so "*" never crosses "/"; a "**" segment spans any depth."""
    if not segments:
        return not parts
    if segments[0] == "**":
        return any(_matches(segments[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], segments[0]) and \
        _matches(segments[1:], parts[1:])


def _target(rule: _Rule, parts: list[str]) -> str:
    if not rule.into_dir:
        return rule.dest
    return "/".join([rule.dest, *parts[rule.keep_from:]])


def file_mode(member_mode: int, install_mode: int | None) -> int:
    """The mode an installed file gets: the recipe's, else 0755 for executables and 0644
    for the rest; setuid/setgid carried over from the member (refused by the caller unless
    the source allows it)."""
    base = install_mode if install_mode is not None else (0o755 if member_mode & 0o111 else 0o644)
    return base | (member_mode & SPECIAL_BITS)


def install_source(tree: Tree, source: Source, download: Path) -> None:
    """Places the members of one download that its install map selects."""
    rules = [_rule(i, source.origin) for i in source.install]
    matched: list[list[str]] = [[] for _ in rules]
    installed: dict[str, str] = {}                           # member name -> first tree path
    pending: dict[str, list[tuple[str, int, str]]] = {}      # hardlink target -> (rel, mode, who)
    first_names: list[str] = []
    with _members(source, download) as members:
        for member, content in members:
            if len(first_names) < 8:
                first_names.append(member.name)
            parts = member.name.split("/")
            for rule, hits in zip(rules, matched):
                if not _matches(rule.segments, parts):
                    continue
                if hits and not rule.into_dir and member.type != "dir":
                    raise BakeryError(
                        f"{source.origin}: install: pattern '{rule.install.pattern}' matches "
                        f"several members ('{hits[-1]}', '{member.name}') but "
                        f"'{rule.install.dest}' is one file",
                        hint="end the destination with '/' to install them into that directory")
                hits.append(member.name)
                rel = _target(rule, parts)
                who = _who_prefix(source) + f"'{member.name}'"
                if member.type == "dir":
                    tree.add_dir(rel, who)
                elif member.type == "symlink":
                    tree.add_symlink(rel, member.linkname, who)
                else:
                    mode = _checked_mode(member, rule.install, source)
                    # A member selected twice, or a hardlink to one already placed: copy that file.
                    origin_name = member.name if member.type == "file" else member.linkname
                    if origin_name in installed:
                        tree.copy_file(rel, installed[origin_name], mode, who)
                    elif member.type == "file":
                        tree.add_file(rel, content, mode, who)
                        installed[member.name] = rel
                    else:
                        pending.setdefault(member.linkname, []).append((rel, mode, who))
    for rule, hits in zip(rules, matched):
        if not hits:
            raise BakeryError(
                f"{source.origin}: install: pattern '{rule.install.pattern}' matched nothing in "
                f"{source.filename}",
                hint="patterns match archive paths segment by segment ('*' stays within one "
                     "directory, '**' spans any depth); the archive starts with: "
                     + ", ".join(first_names))
    if pending:
        _install_hardlink_targets(tree, source, download, pending)


def _install_hardlink_targets(tree: Tree, source: Source, download: Path,
                              pending: dict[str, list[tuple[str, int, str]]]) -> None:
    """Hardlinks whose target no pattern selected: a second pass reads those targets."""
    with _members(source, download) as members:
        for member, content in members:
            for i, (rel, mode, who) in enumerate(pending.get(member.name, ())):
                if i == 0:
                    tree.add_file(rel, content, mode, who)
                    first = rel
                else:
                    tree.copy_file(rel, first, mode, who)


def _members(source: Source, download: Path) -> closing[Iterator[tuple[Member, BinaryIO | None]]]:
    # closing(): when a member is refused, the archive (and its decompressor child) is
    # closed right away, not whenever the traceback lets go of the generator.
    return closing(iter_members(download, source.kind, source.origin, source.filename))


def _who_prefix(source: Source) -> str:
    """How messages name a source's members, up to the member's quoted name."""
    return f"{source.origin}: {source.filename}: "


def _checked_mode(member: Member, install: Install, source: Source) -> int:
    mode = file_mode(member.mode, install.mode)
    if mode & SPECIAL_BITS and not source.allow_setuid:
        raise BakeryError(
            f"{source.origin}: {source.filename}: member '{member.name}' is setuid/setgid "
            f"(mode {mode:04o})",
            hint="set allow-setuid = true on this source if the tool really needs it")
    return mode


# ---------------------------------------------------------------------------------------------
# The unpacked cache: each source's installed files, kept between stages

UNPACKED_FORMAT = 2   # bump when what an entry holds or how it is laid out changes


def unpacked_key(source: Source, download: Path) -> str:
    """The name of a source's entry in the cache: a hash of everything that decides which
    files it installs where, with which modes (the download is named by its sha256)."""
    shaping = [UNPACKED_FORMAT, download.name, source.kind, source.filename, source.allow_setuid,
               [[i.pattern, i.dest, i.mode] for i in source.install]]
    return hashlib.sha256(json.dumps(shaping).encode()).hexdigest()


def link_source(tree: Tree, source: Source, download: Path, unpacked: Path) -> None:
    """What install_source places, hardlinked from the source's entry under `unpacked`,
    which is made first when missing. Paths are claimed in the order and with the names
    install_source used, so clashes read the same."""
    entry = unpacked / unpacked_key(source, download)
    if not entry.is_dir():
        _unpack(source, download, entry)
    prefix = _who_prefix(source)
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
    work = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        os.mkdir(work / "tree", 0o755)
        staged = Tree(work / "tree")
        install_source(staged, source, download)
        prefix = _who_prefix(source)
        (work / "placed.json").write_text(
            json.dumps([[rel, who.removeprefix(prefix)] for rel, who in staged.placed()]))
        try:
            os.rename(work, entry)
        except OSError:
            if not entry.is_dir():
                raise
            shutil.rmtree(work)        # a parallel stage made the same entry first
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------
# Static files, drop-ins, extension-release


def copy_files(tree: Tree, files_dir: Path) -> None:
    """Copies a recipe's files/ directory (usr/ and opt/ only) into the tree: modes
    normalised to 0755/0644, symlinks kept as they are."""
    if not files_dir.is_dir():
        raise BakeryError(f"{files_dir}: the recipe's files directory does not exist",
                          hint="create it or drop the files setting")
    for rel, entry in iter_tree(files_dir):
        who = str(files_dir / rel)
        if "/" not in rel and (rel not in ("usr", "opt") or not entry.is_dir(follow_symlinks=False)):
            raise BakeryError(f"{who}: a recipe's files/ may only hold the directories usr/ and opt/",
                              hint="a sysext overlays /usr and /opt only; move it under usr/")
        if entry.is_symlink():
            tree.add_symlink(rel, os.readlink(entry.path), who)
        elif entry.is_dir(follow_symlinks=False):
            tree.add_dir(rel, who)
        elif entry.is_file(follow_symlinks=False):
            with open(entry.path, "rb") as content:
                tree.add_file(rel, content, file_mode(entry.stat(follow_symlinks=False).st_mode & 0o777,
                                                      None), who)
        else:
            raise BakeryError(f"{who}: not a file, directory or symlink",
                              hint="remove it from the recipe's files/")


def write_dropins(tree: Tree, name: str, upholds: Sequence[tuple[str, Sequence[str]]]) -> None:
    """One `Upholds=` drop-in per (target, unit): units start with the host's targets without
    any symlink in /etc."""
    for target, units in upholds:
        for unit in units:
            tree.add_text(f"usr/lib/systemd/system/{target}.d/10-{name}-{unit}.conf",
                          f"[Unit]\nUpholds={unit}\n", f"the [units] drop-in {target} -> {unit}")


def extension_release(image: Image, ships_units: bool = False) -> str:
    """The text of the image's extension-release file; `ships_units` decides the reload flag
    when the image leaves it open (None)."""
    lines = [f"ID={image.os_id}"]
    if image.sysext_level is not None:
        lines.append(f"SYSEXT_LEVEL={image.sysext_level}")
    lines += [f"ARCHITECTURE={image.arch}", f"SYSEXT_VERSION_ID={image.version}"]
    if image.reload_manager or (image.reload_manager is None and ships_units):
        lines.append("EXTENSION_RELOAD_MANAGER=1")
    return "\n".join(lines) + "\n"


def write_extension_release(tree: Tree, image: Image) -> None:
    # units may come from an archive as well as from files/ or drop-ins: look at the tree
    units = tree.root / "usr/lib/systemd/system"
    ships_units = units.is_dir() and any(units.iterdir())
    tree.add_text(f"usr/lib/extension-release.d/extension-release.{image.name}",
                  extension_release(image, ships_units), "the extension-release file")


# ---------------------------------------------------------------------------------------------
# The whole stage step


def stage_image(image: Image, downloads: Sequence[Path], dest: Path, *,
                unpacked: Path | None = None) -> None:
    """Builds the validated tree of `image` at `dest` from the verified `downloads`
    (downloads[i] belongs to image.sources[i]); `dest` is replaced only on success.

    With `unpacked`, sources are installed through that cache directory (see link_source);
    the downloads must then be named by their sha256, as in the download cache. The tree's
    files are hardlinks into it: nothing may write into the tree's files in place."""
    if len(downloads) != len(image.sources):
        raise ValueError(f"{image.id}: {len(image.sources)} sources but {len(downloads)} downloads")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        os.chmod(work, 0o755)
        tree = Tree(work)
        for source, download in zip(image.sources, downloads):
            if unpacked is None:
                install_source(tree, source, download)
            else:
                link_source(tree, source, download, unpacked)
        if image.files_dir is not None:
            copy_files(tree, image.files_dir)
        write_dropins(tree, image.name, image.upholds)
        hostsetup.write_setup_unit(tree, image.name)
        write_extension_release(tree, image)
        validate_tree(work, image.name, image.arch)
        _replace_dir(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _replace_dir(new: Path, dest: Path) -> None:
    if not os.path.lexists(dest):
        os.rename(new, dest)
        return
    old = new.with_name(new.name + ".old")
    os.rename(dest, old)
    os.rename(new, dest)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()
