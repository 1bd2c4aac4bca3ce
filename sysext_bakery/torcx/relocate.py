"""Reading a torcx image and relocating it: its partial root (`bin/`, `lib/`, ...) goes under
`/usr` in a staging tree, checked like every archive the bakery reads, and the files its
manifest lists get the places where torcx used to propagate them at boot."""
from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from sysext_bakery.errors import BakeryError
from sysext_bakery.build.archive import Member, iter_members
from sysext_bakery.build.install import file_mode
from sysext_bakery.build.tree import SPECIAL_BITS, Tree, check_symlink, member_name
from sysext_bakery.torcx.profile import HINT_ARCHIVE

IMAGE_KIND = "image-manifest-v0"
MANIFEST = ".torcx/manifest.json"
UNIT_DIR = "usr/lib/systemd/system"

# Top-level directories of a torcx image and where they live in a sysext. `sbin` joins
# `bin` because Flatcar's /usr/sbin is a symlink to bin that an image must not replace.
RELOCATE = {"bin": "usr/bin", "sbin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64",
            "libexec": "usr/libexec", "share": "usr/share", "include": "usr/include",
            "usr": "usr", "opt": "opt"}

# Manifest lists whose files torcx propagated to the host, and where a sysext keeps them.
CARRY = {"units": UNIT_DIR, "network": "usr/lib/systemd/network",
         "sysusers": "usr/lib/sysusers.d", "tmpfiles": "usr/lib/tmpfiles.d",
         "udev_rules": "usr/lib/udev/rules.d"}
MANIFEST_LISTS = ("bin", *CARRY)


# ---------------------------------------------------------------------------------------------
# Reading torcx archives


def iter_archive(archive: Path, kind: str) -> Iterator[tuple[Member, BinaryIO | None]]:
    """The members of a torcx archive, checked like every archive the bakery reads."""
    origin = "torcx image"
    if kind != "squashfs":
        yield from iter_members(archive, kind, origin)
        return
    yield from _squashfs_members(archive, f"{origin}: {archive.name}")


def _squashfs_members(archive: Path, where: str) -> Iterator[tuple[Member, BinaryIO | None]]:
    from io import BytesIO

    from PySquashfsImage import SquashFsImage

    try:
        image = SquashFsImage.from_file(str(archive))
    except (OSError, ValueError, ImportError) as e:
        raise BakeryError(f"{where}: cannot be read as squashfs: {e}",
                          "PySquashfsImage reads gzip, xz and zstd squashfs; repack others with "
                          "`unsquashfs -d dir IMAGE && tar -C dir -czf <name>:<ref>.torcx.tgz .`") from e
    with image:
        for entry in image:
            name = member_name(entry.path.lstrip("/"), where) if entry.path != "/" else ""
            if not name:
                continue
            mode = entry.mode & 0o7777
            if entry.is_dir:
                yield Member(name, "dir", mode), None
            elif entry.is_symlink:
                check_symlink(name, entry.readlink(), where)
                yield Member(name, "symlink", mode, linkname=entry.readlink()), None
            elif entry.is_file:
                yield Member(name, "file", mode, entry.size), BytesIO(entry.read_bytes())
            else:
                raise BakeryError(f"{where}: member '{name}' is not a file, directory or symlink",
                                  "a sysext may only ship files, directories and links")


def relocate(name: str) -> str | None:
    """Where a path of a torcx image goes in the sysext; None when it has no place there."""
    top, _, rest = name.partition("/")
    if top == "usr" and (rest == "sbin" or rest.startswith("sbin/")):
        return "usr/bin" + rest[4:]
    base = RELOCATE.get(top)
    if base is None:
        return None
    return f"{base}/{rest}" if rest else base


def _relocated_link(name: str, target: str) -> str:
    """A relative symlink target that still reaches the same file after relocation."""
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    moved = relocate(resolved)
    if moved is None:
        return target
    return posixpath.relpath(moved, posixpath.dirname(relocate(name) or name))


def unpack(archive: Path, kind: str, tree: Tree) -> dict[str, list[str]]:
    """Writes the relocated image into `tree`; returns its manifest, checked against the
    archive's paths."""
    manifest_bytes: bytes | None = None
    names: set[str] = set()
    homeless: list[str] = []
    placed: dict[str, str] = {}           # member name -> relocated path, for hardlinks
    for member, content in iter_archive(archive, kind):
        parts = member.name.split("/")
        names.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        if parts[0] == ".torcx":
            if member.name == MANIFEST and member.type == "file":
                manifest_bytes = content.read()
            continue
        rel = relocate(member.name)
        if rel is None:
            homeless.append(member.name)
            continue
        who = f"{archive.name}: '{member.name}'"
        if member.type == "dir":
            tree.add_dir(rel, who)
        elif member.type == "symlink":
            tree.add_symlink(rel, _relocated_link(member.name, member.linkname), who)
        elif member.mode & SPECIAL_BITS:
            raise BakeryError(f"{who}: is setuid/setgid (mode {member.mode:04o})",
                              "a converted image carries plain 0755/0644 files; drop the "
                              "setuid bit or ship the tool another way")
        elif member.type == "hardlink":
            if member.linkname not in placed:
                raise BakeryError(f"{who}: hardlink to '{member.linkname}', which the sysext "
                                  "does not carry", "make it a copy or a symlink")
            tree.copy_file(rel, placed[member.linkname], file_mode(member.mode, None), who)
        else:
            tree.add_file(rel, content, file_mode(member.mode, None), who)
            placed[member.name] = rel
    if manifest_bytes is None:
        raise BakeryError(f"{archive}: no {MANIFEST}: not a torcx image", HINT_ARCHIVE)
    manifest = parse_manifest(manifest_bytes, f"{archive}: {MANIFEST}")
    if homeless:
        raise BakeryError(f"{archive}: {', '.join(sorted(homeless)[:5])}: outside the "
                          f"directories a sysext can carry ({', '.join(RELOCATE)})",
                          "a sysext overlays /usr and /opt only; /etc and /var content must be "
                          "created at boot (tmpfiles.d) or by provisioning")
    missing = [f"{key}: {path}" for key in MANIFEST_LISTS for path in manifest[key]
               if path.strip("/") not in names]
    if missing:
        raise BakeryError(f"{archive}: {MANIFEST} names files the image does not contain: "
                          + "; ".join(missing), "fix the manifest or rebuild the torcx image")
    return manifest


def parse_manifest(data: bytes, origin: str) -> dict[str, list[str]]:
    """The lists of an image manifest (every list present, possibly empty)."""
    try:
        manifest = json.loads(data)
    except ValueError as e:
        raise BakeryError(f"{origin}: not valid JSON: {e}", HINT_ARCHIVE) from None
    if not isinstance(manifest, dict) or manifest.get("kind") != IMAGE_KIND:
        kind = manifest.get("kind") if isinstance(manifest, dict) else None
        raise BakeryError(f"{origin}: kind is {kind!r}, expected {IMAGE_KIND!r}", HINT_ARCHIVE)
    value = manifest.get("value")
    if not isinstance(value, dict):
        raise BakeryError(f"{origin}: value: missing or not an object", HINT_ARCHIVE)
    lists = {}
    for key in MANIFEST_LISTS:
        paths = value.get(key) or []
        if not isinstance(paths, list) or not all(isinstance(p, str) and p.startswith("/")
                                                  and ".." not in p.split("/") for p in paths):
            raise BakeryError(f"{origin}: value.{key}: expected a list of absolute paths without "
                              f"'..', got {paths!r}", HINT_ARCHIVE)
        lists[key] = paths
    return lists


# ---------------------------------------------------------------------------------------------
# Putting manifest entries where a sysext needs them


def carry_manifest_files(manifest: dict[str, list[str]], tree: Tree) -> None:
    """Binaries get a /usr/bin entry and units, network, sysusers, tmpfiles and udev files
    a copy in their /usr/lib directory, where torcx used to propagate them at boot."""
    root = tree.root
    for path in manifest["bin"]:
        rel = _carried(path)
        link = f"usr/bin/{posixpath.basename(rel)}"
        if posixpath.dirname(rel) != "usr/bin" and not os.path.lexists(root / link):
            tree.add_symlink(link, posixpath.relpath(rel, "usr/bin"), f"manifest bin {path}")
    for key, directory in CARRY.items():
        for path in manifest[key]:
            rel = _carried(path)
            if rel == directory or posixpath.dirname(rel) == directory:
                continue
            _copy_into(tree, rel, f"{directory}/{posixpath.basename(rel)}", f"manifest {key} {path}")


def _carried(path: str) -> str:
    rel = relocate(path.strip("/"))
    if rel is None:
        raise BakeryError(f"{MANIFEST}: {path}: outside the directories a sysext can carry "
                          f"({', '.join(RELOCATE)})", "fix the manifest or rebuild the image")
    return rel


def _copy_into(tree: Tree, source: str, dest: str, who: str) -> None:
    path = tree.root / source
    if path.is_symlink():
        tree.add_symlink(dest, os.readlink(path), who)
    elif path.is_dir():
        tree.add_dir(dest, who)
        for child in sorted(os.listdir(path)):
            _copy_into(tree, f"{source}/{child}", f"{dest}/{child}", who)
    else:
        with path.open("rb") as content:
            tree.add_file(dest, content, path.stat().st_mode & 0o777, who)


def archive_kind(path: Path) -> str:
    """"tar.gz" or "squashfs", told by the file's first bytes: the name may be a download
    cache entry, and a wrong suffix must not send garbage to the tar reader."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise BakeryError(f"{path}: cannot read: {e.strerror}") from None
    if magic == b"hsqs":
        return "squashfs"
    if magic[:2] == b"\x1f\x8b":
        return "tar.gz"
    raise BakeryError(f"{path}: neither a gzip tarball nor a squashfs image: not a torcx image",
                      HINT_ARCHIVE)

