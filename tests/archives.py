"""Test archives (tar in every compression, zip) built in memory, and helpers for staging
from them."""
from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from sysext_bakery.errors import BakeryError
from sysext_bakery.model.image import Image, Install, Source
from sysext_bakery.build.stage import stage_image
from elf import make_elf


ORIGIN = "recipes/docker.toml: sources[0]"


RELEASE = "usr/lib/extension-release.d/extension-release.docker"


@dataclass(frozen=True)
class Entry:
    """One member of a test archive."""
    name: str
    data: bytes = b""
    mode: int = 0o644
    type: bytes = tarfile.REGTYPE
    linkname: str = ""


def F(name: str, data: bytes = b"", mode: int = 0o644) -> Entry:
    return Entry(name, data, mode)


def D(name: str) -> Entry:
    return Entry(name, mode=0o755, type=tarfile.DIRTYPE)


def L(name: str, target: str) -> Entry:
    return Entry(name, mode=0o777, type=tarfile.SYMTYPE, linkname=target)


def H(name: str, target: str) -> Entry:
    return Entry(name, mode=0o755, type=tarfile.LNKTYPE, linkname=target)


def write_tar(path: Path, kind: str, entries: list[Entry]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type, info.mode, info.linkname = e.type, e.mode, e.linkname
            if e.type == tarfile.REGTYPE:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    raw = buf.getvalue()
    compress = {
        "tar": lambda b: b,
        "tar.gz": lambda b: __import__("gzip").compress(b, mtime=0),
        "tar.xz": lambda b: __import__("lzma").compress(b),
        "tar.bz2": lambda b: __import__("bz2").compress(b),
        "tar.zst": lambda b: zstandard.ZstdCompressor().compress(b),
    }[kind]
    path.write_bytes(compress(raw))
    return path


def write_zip(path: Path, entries: list[Entry]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for e in entries:
            ftype = {tarfile.REGTYPE: stat.S_IFREG, tarfile.DIRTYPE: stat.S_IFDIR,
                     tarfile.SYMTYPE: stat.S_IFLNK}[e.type]
            info = zipfile.ZipInfo(e.name + ("/" if e.type == tarfile.DIRTYPE else ""))
            info.create_system = 3
            info.external_attr = (ftype | e.mode) << 16
            zf.writestr(info, e.linkname.encode() if e.type == tarfile.SYMTYPE else e.data)
    return path


def write_zip_without_modes(path: Path, files: dict[str, bytes]) -> Path:
    """A zip as Windows tools make it: no unix mode in the external attributes, only the
    DOS archive bit (zipfile itself always stores a mode, so the central directory is
    patched afterwards)."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.create_system = 0
            zf.writestr(info, data)
    raw = bytearray(path.read_bytes())
    at = raw.find(b"PK\x01\x02")
    while at >= 0:                      # each central directory header: external attr at +38
        raw[at + 38:at + 42] = (0x20).to_bytes(4, "little")
        at = raw.find(b"PK\x01\x02", at + 46)
    path.write_bytes(bytes(raw))
    with zipfile.ZipFile(path) as zf:
        assert all(i.external_attr >> 16 == 0 for i in zf.infolist())
    return path


def source(filename: str, kind: str, *install: Install, allow_setuid: bool = False) -> Source:
    return Source(url=f"https://example.org/dl/{filename}", sha256=None, checksum_url=None,
                  kind=kind, install=install, allow_setuid=allow_setuid, origin=ORIGIN)


def image(*sources: Source, arch: str = "x86-64", **kw) -> Image:
    return Image(name="docker", version="24.0.9", arch=arch, sources=sources, **kw)


def listing(tree: Path) -> dict[str, tuple[str, str]]:
    """path -> (type and mode, content or link target) for everything in the tree."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = p.relative_to(tree).as_posix()
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = (f"dir {stat.S_IMODE(st.st_mode):04o}", "")
            else:
                out[rel] = (f"file {stat.S_IMODE(st.st_mode):04o}", p.read_bytes().decode("latin-1"))
    return out


DECOMPRESSORS = {"pigz", "gzip", "xz", "zstd", "bzip2"}


def children() -> list[str]:
    """"pid state command" of every decompressor child of this process, zombies included
    (other children, such as GitPython's long-lived `git cat-file`, are not ours to judge)."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat_file.read_text()
        except OSError:
            continue                                   # exited meanwhile
        command, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:]
        state, ppid = rest.split()[:2]
        if int(ppid) == os.getpid() and command in DECOMPRESSORS:
            found.append(f"{stat_file.parent.name} {state} {command}")
    return found


def by_hash(path: Path) -> Path:
    """The file renamed to its sha256, as the download cache names downloads."""
    return path.rename(path.with_name(hashlib.sha256(path.read_bytes()).hexdigest()))


DOCKER = [
    D("docker"),
    F("docker/docker", make_elf("x86-64", b"cli"), 0o755),
    F("docker/dockerd", make_elf("x86-64", b"daemon"), 0o755),
    F("docker/README", b"read me", 0o644),
]


EXPECTED_DOCKER = {
    "usr": ("dir 0755", ""),
    "usr/bin": ("dir 0755", ""),
    "usr/bin/docker": ("file 0755", make_elf("x86-64", b"cli").decode("latin-1")),
    "usr/bin/dockerd": ("file 0755", make_elf("x86-64", b"daemon").decode("latin-1")),
    "usr/bin/README": ("file 0644", "read me"),
    "usr/lib": ("dir 0755", ""),
    "usr/lib/extension-release.d": ("dir 0755", ""),
    RELEASE: ("file 0644", "ID=_any\nARCHITECTURE=x86-64\nSYSEXT_VERSION_ID=24.0.9\n"),
}


def stage_fails(tmp_path: Path, entries: list[Entry], *install: Install, kind: str = "tar.gz",
                allow_setuid: bool = False) -> str:
    """Stages a hostile archive and returns the refusal, checking that no dest is left behind
    (every refusal names origin, archive and member)."""
    name = {"zip": "evil.zip"}.get(kind, "evil.tgz")
    archive = tmp_path / name
    write_zip(archive, entries) if kind == "zip" else write_tar(archive, kind, entries)
    dest = tmp_path / "stage" / "evil"
    src = source(name, kind, *(install or (Install("**", "/usr/bin/"),)), allow_setuid=allow_setuid)
    with pytest.raises(BakeryError) as err:
        stage_image(image(src), [archive], dest)
    assert not dest.exists()
    assert os.listdir(dest.parent) == []
    return str(err.value)
