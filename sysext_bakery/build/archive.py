"""Reading archives safely, in one streaming pass: each member is checked (no absolute
paths, no `..`, no device nodes, no links leaving the archive) before it is handed on."""
from __future__ import annotations

import bz2
import fcntl
import gzip
import io
import lzma
import os
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import zstandard

from sysext_bakery import run
from sysext_bakery.errors import BakeryError
from sysext_bakery.files import temp_dir
from sysext_bakery.build.tree import BUFSIZE, MAX_LINK, check_symlink, member_name, resolve_link
from sysext_bakery.model.image import COMPRESSED_FILES, single_member_name

if TYPE_CHECKING:
    from subprocess import Popen

# Decompression runs in a child process, the way `tar -xzf` runs gzip: the second core
# inflates while this process parses the tar stream and writes files. The first tool found
# on PATH is used (pigz inflates faster than gzip).
_TOOLS: dict[str, tuple[tuple[str, ...], ...]] = {
    "gz": (("pigz", "-dc"), ("gzip", "-dc")),
    "xz": (("xz", "-dc"),),
    "bz2": (("bzip2", "-dc"),),
    "zst": (("zstd", "-dcq"),),
}
# Exit status 2 is a warning for these (e.g. trailing garbage after the stream, which the
# in-process decompressors do not look at either); for bzip2 it means a corrupt file.
_WARNING_STATUS = {"pigz": 2, "gzip": 2, "xz": 2}
PIPE_SIZE = 1 << 20  # a larger pipe lets the child run ahead of the tar parser

# Without the tool, decompression wraps the raw file in-process. Either way tarfile only
# ever sees a plain tar stream ("r|"): one code path for every compression.
_DECOMPRESS = {
    "": lambda raw: raw,
    "gz": lambda raw: gzip.GzipFile(fileobj=raw),
    "xz": lambda raw: lzma.LZMAFile(raw),
    "bz2": lambda raw: bz2.BZ2File(raw),
    "zst": lambda raw: zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True),
}
# archive kind -> its compression: tarballs, and single compressed files (a `.bz2` binary)
_TAR_KINDS = {"tar": "", "tar.gz": "gz", "tar.xz": "xz", "tar.bz2": "bz2", "tar.zst": "zst"}
_FILE_KINDS = {kind: suffix.lstrip(".") for kind, suffix in COMPRESSED_FILES.items()}

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
        elif kind in _FILE_KINDS:
            yield from _compressed_file_members(archive, kind, label, where)
        elif kind == "zip":
            yield from _zip_members(archive, where)
        elif kind in _TAR_KINDS:
            yield from _tar_members(archive, kind, where)
        else:
            raise BakeryError(f"{where}: unknown archive kind {kind!r}",
                              hint=f"use one of: {', '.join([*_TAR_KINDS, 'zip', *_FILE_KINDS, 'file'])}")
    except _READ_ERRORS as e:
        raise _unreadable(where, kind, e) from e


def _unreadable(where: str, kind: str, error: Exception) -> BakeryError:
    return BakeryError(f"{where}: cannot be read as {kind}: {error}",
                       hint=f"the download is corrupt or is not {kind} (an HTML error page?): check "
                            "the source's URL and `type` and what the mirror serves. A download "
                            "without a pinned sha256 is fetched again by the next build; if "
                            "release/lock.toml pins this sha256, that pin is wrong: remove it")


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
def _decompressed(archive: Path, compression: str) -> Iterator[BinaryIO]:
    """The uncompressed content of `archive`: from a child process when its tool is
    installed, else decompressed in-process. The child is always reaped."""
    command = _find_tool(compression)
    if command is None:
        with open(archive, "rb") as raw, _DECOMPRESS[compression](raw) as plain:
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


def _find_tool(compression: str) -> list[str] | None:
    for name, *args in _TOOLS.get(compression, ()):
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
    with _decompressed(archive, _TAR_KINDS[kind]) as plain, \
            tarfile.open(fileobj=plain, mode="r|", bufsize=64 * 1024) as tar, \
            temp_dir(prefix="bakery-filter.") as scratch:
        for info in tar:
            member = _tar_member(info, where, files_seen)
            if member is None:
                continue
            _data_filter(info, scratch, where)
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


def _data_filter(info: tarfile.TarInfo, scratch: str, where: str) -> None:
    """The stdlib's `data` extraction filter as a second line of defence behind the checks
    above: whatever it refuses (absolute paths, escaping links, device files) is refused,
    even if those checks missed it. Its changes to modes and owners are not taken: modes
    follow the install map's rules. `scratch` is an empty directory standing in for the
    archive root, so that resolving paths looks at nothing real."""
    try:
        tarfile.data_filter(info, scratch)
    except (tarfile.FilterError, ValueError, OSError) as e:
        raise BakeryError(f"{where}: member '{info.name}' is refused by tarfile's data filter: "
                          f"{e}", hint="refusing a hostile or broken archive; check the source URL"
                          ) from e


def _hardlink_target(info: tarfile.TarInfo, where: str, files_seen: set[str]) -> str:
    resolved = resolve_link([], info.linkname)
    if resolved is None:
        raise BakeryError(f"{where}: hardlink '{info.name}' points outside the archive "
                          f"('{info.linkname}')",
                          hint="refusing a hostile or broken archive; check the source URL")
    if resolved not in files_seen:
        raise BakeryError(f"{where}: hardlink '{info.name}' points to '{info.linkname}', "
                          "which is not an earlier regular file of the archive",
                          hint="the archive is malformed; check the source URL")
    return resolved


def _as_tarinfo(name: str, type: bytes, linkname: str = "") -> tarfile.TarInfo:
    """A zip member as tarfile's data filter sees members."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = type, linkname, 0o644
    return info


def _zip_members(archive: Path, where: str) -> Iterator[tuple[Member, BinaryIO | None]]:
    with zipfile.ZipFile(archive) as zf, \
            temp_dir(prefix="bakery-filter.") as scratch:
        for info in zf.infolist():
            name = member_name(info.filename, where)
            unix = info.external_attr >> 16     # st_mode when the zip was made on unix, else 0
            ftype, mode = stat.S_IFMT(unix), unix & 0o7777
            if info.is_dir() or ftype == stat.S_IFDIR:
                if name:
                    yield Member(name, "dir", mode or 0o755), None
            elif ftype == stat.S_IFLNK:
                with zf.open(info) as link:      # bounded: a "symlink" may be a bomb too
                    target = link.read(MAX_LINK + 1).decode("utf-8", "surrogateescape")
                check_symlink(name, target, where)
                _data_filter(_as_tarinfo(info.filename, tarfile.SYMTYPE, target), scratch, where)
                yield Member(name, "symlink", mode, linkname=target), None
            elif ftype in (0, stat.S_IFREG):
                _data_filter(_as_tarinfo(info.filename, tarfile.REGTYPE), scratch, where)
                with zf.open(info) as content:
                    stream: BinaryIO = content
                    if not mode:
                        # No unix mode (a zip made on Windows, or by a tool that stores none):
                        # judged by the content, as plain-file downloads are.
                        head = _read_head(content)
                        mode = 0o755 if _looks_executable(head) else 0o644
                        stream = _Prefixed(head, content)
                    yield (Member(name, "file", mode, info.file_size),
                           _Content(stream, f"{where}: {name}", "zip"))
            else:
                raise BakeryError(f"{where}: member '{info.filename}' is not a file, directory "
                                  f"or symlink (mode {unix:o})",
                                  hint="a sysext may only ship files, directories and links")


def _looks_executable(head: bytes) -> bool:
    # Downloads carry no upstream modes: a file is executable when it looks like a program
    # (static binaries and scripts are why single files are downloaded).
    return head.startswith((b"\x7fELF", b"#!"))


def _read_head(stream: BinaryIO, size: int = 4) -> bytes:
    """The first `size` bytes (fewer at the end): some decompressors return short reads."""
    head = b""
    while len(head) < size:
        data = stream.read(size - len(head))
        if not data:
            break
        head += data
    return head


class _Prefixed(io.RawIOBase):
    """`head`, already read from `rest`, followed by the rest of that stream."""

    def __init__(self, head: bytes, rest: BinaryIO):
        super().__init__()
        self._head, self._rest = head, rest

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0:
                data, self._head = self._head + self._rest.read(), b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._rest.read(size)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _file_members(path: Path, label: str, where: str) -> Iterator[tuple[Member, BinaryIO | None]]:
    name = member_name(label, where)
    with open(path, "rb") as f:
        executable = _looks_executable(f.read(4))
        f.seek(0)
        size = os.fstat(f.fileno()).st_size
        yield Member(name, "file", 0o755 if executable else 0o644, size), _Content(f, where, "file")


def _compressed_file_members(path: Path, kind: str, label: str,
                             where: str) -> Iterator[tuple[Member, BinaryIO | None]]:
    """A single compressed file as its one member, decompressed while it is read. The size
    is unknown until then (0)."""
    name = member_name(single_member_name(label, kind), where)
    with _decompressed(path, _FILE_KINDS[kind]) as plain:
        head = _read_head(plain)
        if not head:
            raise BakeryError(f"{where}: decompresses to an empty file",
                              hint="the download is not the tool; check the source's URL")
        mode = 0o755 if _looks_executable(head) else 0o644
        yield Member(name, "file", mode), _Content(_Prefixed(head, plain), where, kind)

