"""Reading a packed image back: its entries, one file, its extension-release.

squashfs images are read with PySquashfsImage (gzip, xz, zstd). It cannot decompress lz4
or lzo, so those are listed through `unsquashfs -pf` and read with `unsquashfs -cat`.
erofs-utils 1.5 has no lister that shows setuid bits or symlink targets (dump.erofs prints
only the 0777 bits, `fsck.erofs --extract` drops setuid), so erofs metadata is read by the
small reader below; file contents stored compressed come from `fsck.erofs --extract`.
"""
from __future__ import annotations

import mmap
import os
import stat
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sysext_bakery import run
from sysext_bakery.errors import BakeryError
from sysext_bakery.files import temp_dir
from sysext_bakery.model import extension_release as release

SQUASHFS_MAGIC = b"hsqs"
SQUASHFS_COMPRESSIONS = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}
PYSQUASHFS_READS = {"gzip", "xz", "zstd"}
EROFS_MAGIC = 0xE0F5E1E2
EROFS_SUPER_OFFSET = 1024


@dataclass(frozen=True)
class Entry:
    path: str                  # relative posix path; the root itself is not listed
    kind: str                  # "file" | "dir" | "symlink" | "other" (device, fifo, socket)
    mode: int                  # permission bits including setuid/setgid/sticky
    uid: int
    gid: int
    size: int                  # file: bytes; symlink: length of the target; dir/other: 0
    target: str | None = None  # symlink target


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _entry(path: str, mode: int, uid: int, gid: int, size: int, target: str | None) -> Entry:
    kind = _kind(mode)
    if kind == "symlink":
        size = len(os.fsencode(target or ""))
    elif kind != "file":
        size = 0
    return Entry(path, kind, stat.S_IMODE(mode), uid, gid, size, target if kind == "symlink" else None)


# --- format detection ------------------------------------------------------------------------

def image_format(path: Path) -> tuple[str, str | None]:
    """("squashfs", compression) or ("erofs", None), from the superblock."""
    try:
        with open(path, "rb") as f:
            head = f.read(EROFS_SUPER_OFFSET + 4)
    except OSError as e:
        raise BakeryError(f"{path}: cannot read image: {e.strerror}", "check the path") from e
    if head[:4] == SQUASHFS_MAGIC and len(head) >= 22:
        comp_id = struct.unpack_from("<H", head, 20)[0]
        return "squashfs", SQUASHFS_COMPRESSIONS.get(comp_id, f"unknown({comp_id})")
    if len(head) >= EROFS_SUPER_OFFSET + 4 and \
            struct.unpack_from("<I", head, EROFS_SUPER_OFFSET)[0] == EROFS_MAGIC:
        return "erofs", None
    raise BakeryError(f"{path}: not a squashfs or erofs image (no superblock magic)",
                      "pass a .raw image built by the bakery")


# --- squashfs --------------------------------------------------------------------------------

def _squashfs_open(path: Path):
    from PySquashfsImage import SquashFsImage
    return SquashFsImage.from_file(str(path))


def _squashfs_entries(path: Path) -> list[Entry]:
    entries = []
    with _squashfs_open(path) as img:
        for f in img:
            if f.parent is None:
                continue
            target = f.readlink() if f.is_symlink else None
            if isinstance(target, bytes):
                target = os.fsdecode(target)
            entries.append(_entry(f.path.lstrip("/"), f.mode, f.uid, f.gid, f.size, target))
    return entries


def _unescape_pf_path(line: str) -> tuple[str, str]:
    """Split an `unsquashfs -pf` line into (path, rest): the path escapes spaces, quotes and
    backslashes with a backslash and ends at the first unescaped space."""
    out, i = [], 0
    while i < len(line) and line[i] != " ":
        if line[i] == "\\" and i + 1 < len(line):
            i += 1
        out.append(line[i])
        i += 1
    return "".join(out), line[i + 1:]


def _parse_pf_line(path: Path, line: str) -> Entry | None:
    """One pseudo-file definition: `PATH TYPE MTIME MODE UID GID [SIZE OFFSET | TARGET]`."""
    name, rest = _unescape_pf_path(line)
    fields = rest.split(" ", 5)
    types = {"D": stat.S_IFDIR, "R": stat.S_IFREG, "S": stat.S_IFLNK,
             "B": stat.S_IFBLK, "C": stat.S_IFCHR, "F": stat.S_IFIFO, "I": stat.S_IFSOCK}
    try:
        ftype, mode, uid, gid = types[fields[0]], int(fields[2], 8), int(fields[3]), int(fields[4])
        tail = fields[5] if len(fields) > 5 else ""
        size = int(tail.split(" ")[0]) if ftype == stat.S_IFREG else 0
    except (KeyError, IndexError, ValueError) as e:
        raise BakeryError(f"{path}: cannot parse unsquashfs listing line {line!r}",
                          "file names with newlines cannot be listed from lz4 squashfs images; "
                          "use zstd") from e
    if name == "/":
        return None
    return _entry(name, ftype | mode, uid, gid, size, tail if ftype == stat.S_IFLNK else None)


def _unsquashfs_entries(path: Path) -> list[Entry]:
    # -pf writes the metadata first, then every file's data: stop reading at the data marker.
    proc = run.spawn([run.require("unsquashfs"), "-no-progress", "-pf", "/dev/stdout", str(path)],
                     what=f"{path}: listing the image", text=True)
    entries, done = [], False
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line == "#":
                done = True
                break
            entry = _parse_pf_line(path, line)
            if entry:
                entries.append(entry)
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=60)
    if not done:
        raise BakeryError(f"{path}: unsquashfs could not list the image: {err.strip()}",
                          "check that the file is a complete squashfs image")
    return entries


# --- erofs -----------------------------------------------------------------------------------

_EROFS_COMPACT = struct.Struct("<HHHHIIIIHHI")       # 32-byte inode
_EROFS_EXTENDED = struct.Struct("<HHHHQIIIIQII16x")  # 64-byte inode
_EROFS_DIRENT = struct.Struct("<QHBB")
_FLAT_PLAIN, _FLAT_INLINE = 0, 2


@dataclass(frozen=True)
class _ErofsInode:
    mode: int
    uid: int
    gid: int
    size: int
    layout: int
    blkaddr: int
    inline_at: int   # byte offset where inline tail data starts


class _Erofs:
    """Just enough of the erofs on-disk format (superblock, inodes, uncompressed data) to
    walk the tree; directories and symlinks are never compressed by mkfs.erofs."""

    def __init__(self, path: Path, buf: mmap.mmap):
        self.path, self.buf = path, buf
        sb = EROFS_SUPER_OFFSET
        self.block = 1 << buf[sb + 12]
        self.root_nid = struct.unpack_from("<H", buf, sb + 14)[0]
        self.meta = struct.unpack_from("<I", buf, sb + 40)[0] * self.block

    def inode(self, nid: int) -> _ErofsInode:
        at = self.meta + nid * 32
        fmt = struct.unpack_from("<H", self.buf, at)[0]
        if fmt & 1:
            _, xcount, mode, _, size, blkaddr, _, uid, gid, _, _, _ = _EROFS_EXTENDED.unpack_from(self.buf, at)
            isize = _EROFS_EXTENDED.size
        else:
            _, xcount, mode, _, size, _, blkaddr, _, uid, gid, _ = _EROFS_COMPACT.unpack_from(self.buf, at)
            isize = _EROFS_COMPACT.size
        xattrs = 12 + 4 * (xcount - 1) if xcount else 0
        return _ErofsInode(mode, uid, gid, size, (fmt >> 1) & 7, blkaddr, at + isize + xattrs)

    def data(self, ino: _ErofsInode, name: str) -> bytes:
        if ino.layout not in (_FLAT_PLAIN, _FLAT_INLINE):
            raise BakeryError(f"{self.path}: {name}: compressed or chunked data layout {ino.layout}",
                              "only uncompressed erofs data can be read directly")
        full = ino.size if ino.layout == _FLAT_PLAIN else ino.size // self.block * self.block
        start = ino.blkaddr * self.block
        data = self.buf[start:start + full]
        return data + self.buf[ino.inline_at:ino.inline_at + ino.size - full]

    def children(self, ino: _ErofsInode, name: str) -> list[tuple[str, int]]:
        data, out = self.data(ino, name), []
        for start in range(0, len(data), self.block):
            blk = data[start:start + self.block]
            count = _EROFS_DIRENT.unpack_from(blk, 0)[1] // _EROFS_DIRENT.size
            dirents = [_EROFS_DIRENT.unpack_from(blk, i * _EROFS_DIRENT.size) for i in range(count)]
            for i, (nid, nameoff, _, _) in enumerate(dirents):
                end = dirents[i + 1][1] if i + 1 < count else len(blk)
                child = blk[nameoff:end].split(b"\0", 1)[0]
                if child not in (b".", b".."):
                    out.append((os.fsdecode(child), nid))
        return out

    def walk(self) -> list[tuple[str, _ErofsInode]]:
        found, todo, seen = [], [("", self.root_nid)], {self.root_nid}
        while todo:
            prefix, nid = todo.pop()
            for name, child_nid in self.children(self.inode(nid), prefix or "/"):
                path = f"{prefix}/{name}" if prefix else name
                ino = self.inode(child_nid)
                found.append((path, ino))
                if stat.S_ISDIR(ino.mode):
                    if child_nid in seen:  # only a corrupt image links a directory twice
                        raise BakeryError(f"{self.path}: directory loop at {path}", "rebuild the image")
                    seen.add(child_nid)
                    todo.append((path, child_nid))
        return found


@contextmanager
def _erofs_open(path: Path) -> Iterator[_Erofs]:
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        yield _Erofs(path, buf)


def _erofs_entries(path: Path) -> list[Entry]:
    with _erofs_open(path) as fs:
        return [_entry(p, ino.mode, ino.uid, ino.gid, ino.size,
                       os.fsdecode(fs.data(ino, p)) if stat.S_ISLNK(ino.mode) else None)
                for p, ino in fs.walk()]


def _erofs_read(path: Path, inner: str) -> bytes:
    with _erofs_open(path) as fs:
        ino = dict(fs.walk()).get(inner)
        if ino is None or not stat.S_ISREG(ino.mode):
            raise BakeryError(f"{path}: no file {inner} in the image", "list it with `bakery inspect IMAGE`")
        if ino.layout in (_FLAT_PLAIN, _FLAT_INLINE):
            return fs.data(ino, inner)
    # Compressed data: let erofs-utils decompress the whole image into a scratch directory.
    with temp_dir(prefix="bakery-erofs-") as scratch:
        run.run([run.require("fsck.erofs"), f"--extract={scratch}", "--overwrite", "--no-preserve",
                 str(path)], what=f"{path}: reading {inner}",
                hint="check that the file is a complete image")
        return (Path(scratch) / inner).read_bytes()


# --- public API ------------------------------------------------------------------------------

def read_image(path: Path) -> list[Entry]:
    """Every entry of a squashfs or erofs image, sorted by path."""
    fmt, compression = image_format(path)
    with _decoding(path, fmt):
        if fmt == "erofs":
            entries = _erofs_entries(path)
        elif compression in PYSQUASHFS_READS:
            entries = _squashfs_entries(path)
        else:
            entries = _unsquashfs_entries(path)
    return sorted(entries, key=lambda e: e.path)


@contextmanager
def _decoding(path: Path, fmt: str) -> Iterator[None]:
    """The readers parse untrusted bytes: whatever a corrupt or truncated image makes them
    raise (zstandard.ZstdError, lzma.LZMAError, zlib.error, struct.error, IndexError, an
    OSError from seeking to a bogus offset, ...) is a bad image, named as such."""
    try:
        yield
    except BakeryError:
        raise
    except UnicodeDecodeError as e:  # PySquashfsImage decodes every name as UTF-8
        raise BakeryError(f"{path}: a file name is not valid UTF-8: {e.object[:80]!r}",
                          "give the files UTF-8 names (install map or files/ directory)") from e
    except Exception as e:
        raise BakeryError(f"{path}: cannot read the {fmt} image: {type(e).__name__}: "
                          f"{str(e)[:200]}", "the file is truncated or corrupt; rebuild it") from e


def tree_entries(tree: Path) -> list[Entry]:
    """The entries a directory will have once packed: owned by root (packing uses -all-root)."""
    if not tree.is_dir():
        raise BakeryError(f"{tree}: not a directory", "stage the image first")
    entries: list[Entry] = []

    def visit(directory: str, prefix: str) -> None:
        for child in sorted(os.scandir(directory), key=lambda c: c.name):
            st = child.stat(follow_symlinks=False)
            path = prefix + child.name
            target = os.readlink(child.path) if stat.S_ISLNK(st.st_mode) else None
            entries.append(_entry(path, st.st_mode, 0, 0, st.st_size, target))
            if stat.S_ISDIR(st.st_mode):
                visit(child.path, path + "/")

    visit(str(tree), "")
    return sorted(entries, key=lambda e: e.path)


def compare(image: list[Entry], tree: list[Entry]) -> list[str]:
    """Human-readable differences between an image's entries and its tree's; [] when equal."""
    in_image, in_tree = {e.path: e for e in image}, {e.path: e for e in tree}
    shown = {"mode": lambda m: f"{m:04o}", "uid": str, "gid": str, "size": str, "target": repr}
    diffs = []
    for path in sorted(in_image.keys() | in_tree.keys()):
        a, b = in_image.get(path), in_tree.get(path)
        if a is None:
            diffs.append(f"{path}: missing from the image")
        elif b is None:
            diffs.append(f"{path}: in the image but not in the tree")
        elif a.kind != b.kind:
            diffs.append(f"{path}: {a.kind} in the image, {b.kind} in the tree")
        else:
            diffs += [f"{path}: {field} {show(getattr(a, field))} in the image, "
                      f"{show(getattr(b, field))} in the tree"
                      for field, show in shown.items() if getattr(a, field) != getattr(b, field)]
    return diffs


def read_file(path: Path, inner: str) -> bytes:
    """The content of one regular file of the image (meant for small files: units, configs)."""
    inner = inner.strip("/")
    fmt, compression = image_format(path)
    with _decoding(path, fmt):
        if fmt == "erofs":
            return _erofs_read(path, inner)
        if compression not in PYSQUASHFS_READS:
            return _unsquashfs_cat(path, inner)
        with _squashfs_open(path) as img:
            found = img.select("/" + inner)
            if found is None or not found.is_file:
                raise BakeryError(f"{path}: no file {inner} in the image",
                                  "list it with `bakery inspect IMAGE`")
            return found.read_bytes()


def _unsquashfs_cat(path: Path, inner: str) -> bytes:
    return run.run([run.require("unsquashfs"), "-no-wildcards", "-cat", str(path), inner],
                   what=f"{path}: cannot read {inner} from the image",
                   hint="list it with `bakery inspect IMAGE`").stdout


def release_files(entries: list[Entry]) -> list[str]:
    """The paths of the extension-release files (of any name) among an image's entries."""
    return [e.path for e in entries if e.kind == "file" and release.is_release_path(e.path)]


def extension_release(path: Path) -> dict[str, str]:
    """The fields of the image's one usr/lib/extension-release.d/extension-release.<name>."""
    found = release_files(read_image(path))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(found)})"
        raise BakeryError(f"{path}: {what} {release.RELEASE_PREFIX}* files; an extension needs "
                          "exactly one",
                          "the stage step writes it; rebuild the image")
    return release.parse(read_file(path, found[0]).decode(errors="replace"))
