"""Migration from torcx: a torcx image (or a whole torcx profile) becomes sysext images plus
the Butane snippet that installs them in place of the profile.

A torcx image is an archive (`<name>:<reference>.torcx.tgz` or `.torcx.squashfs`) holding a
partial root (`bin/`, `lib/`, ...) and `.torcx/manifest.json`. Conversion relocates that root
under `/usr`, rewrites the units so they no longer need torcx at boot, turns `*.wants/`
links into `Upholds=` drop-ins and then hands a plain `files/` directory to the same
stage -> validate -> pack steps that recipes go through.
"""
from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sysext_bakery.recipe import lock
from sysext_bakery.build import stage
from sysext_bakery.build import sums
from sysext_bakery.publish import provision
from sysext_bakery.model.arch import ARCHES
from sysext_bakery.errors import BakeryError
from sysext_bakery.files import file_digest, write_atomic
from sysext_bakery.model.image import COMPRESSIONS, Image
from sysext_bakery.model import naming
from sysext_bakery.recipe.schema import OS_PROFILES, UNIT_SUFFIXES
from sysext_bakery.build.validate import iter_tree
from sysext_bakery.model.version import NOT_VERSION_CHAR, VERSION_PUNCTUATION, version_problem

IMAGE_KIND = "image-manifest-v0"
PROFILE_KINDS = ("profile-manifest-v0", "profile-manifest-v1")
PACKAGE_LIST_KIND = "torcx-package-list-v0"
MANIFEST = ".torcx/manifest.json"
ARCHIVE_SUFFIXES = (".torcx.tgz", ".torcx.squashfs")
UNIT_DIR = "usr/lib/systemd/system"
BUILTIN_SYSEXTS = {"usr/bin/dockerd": "docker-flatcar", "usr/bin/containerd": "containerd-flatcar"}
RECIPE_MARK = "# Converted by `bakery torcx-convert`"
FLATCAR_SYSEXT_DOCS = "https://www.flatcar.org/docs/latest/provisioning/sysext/"

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

# The values the torcx runtime variables take once the image is merged into /usr.
TORCX_VARS = {"TORCX_BINDIR": "/usr/bin", "TORCX_UNPACKDIR": "/", "TORCX_IMAGEDIR": ""}
_VAR_REF = re.compile(r"\$\{(TORCX_[A-Z_]+)\}|\$(TORCX_[A-Z_]+)")
_DEPENDENCY = re.compile(r"^\s*(Requires|Wants|After|Before|BindsTo|PartOf|Requisite)\s*=(.*)$")
_TORCX_ENV_FILE = re.compile(r"^\s*EnvironmentFile\s*=\s*-?/run/metadata/torcx\s*$")
_ENVIRONMENT = re.compile(r"^(\s*Environment\s*=)(.*)$")
_ENV_WORD = re.compile(r"\"[^\"]*\"|'[^']*'|\S+")      # systemd's quoting of Environment=
_TORCX_ASSIGNMENT = re.compile(r"[\"']?TORCX_[A-Z_]+=")
_LEFTOVER = re.compile(r"torcx", re.IGNORECASE)
_FREE_TEXT = re.compile(r"^\s*(?:[#;]|(?:Description|Documentation)\s*=)")  # may name torcx
_UNPACK = r"(?:\$\{TORCX_UNPACKDIR\}|\$TORCX_UNPACKDIR\b|/run/torcx/unpack)"
_IMAGEDIR = r"(?:\$\{TORCX_IMAGEDIR\}|\$TORCX_IMAGEDIR\b)"
# TORCX_UNPACKDIR not followed by TORCX_IMAGEDIR: another image's tree, or this image's
# under a path the conversion does not know.
_UNPACK_ELSEWHERE = re.compile(r"(?:\$\{TORCX_UNPACKDIR\}|\$TORCX_UNPACKDIR\b)(?!"
                               + _IMAGEDIR + r")[^\s\"']*")

HINT_ARCHIVE = ("a torcx image is `<name>:<reference>.torcx.tgz` (or `.torcx.squashfs`) holding "
                "bin/, lib/ and .torcx/manifest.json; pass that file, or --profile with --store")


# ---------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class TorcxImage:
    """One torcx image to convert: its name and reference, and the archive holding it."""
    name: str
    reference: str
    archive: Path


@dataclass(frozen=True)
class Converted:
    """A torcx image turned into the inputs of the bakery's stage step."""
    name: str
    version: str
    files_dir: Path                                    # usr/ (and opt/) only
    upholds: tuple[tuple[str, tuple[str, ...]], ...]
    ships_units: bool
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Built:
    """One packed image."""
    name: str
    version: str
    path: Path
    sha256: str
    masks: tuple[str, ...]     # Flatcar built-in sysexts this image replaces


# ---------------------------------------------------------------------------------------------
# Names, versions, profiles


def parse_archive_name(path: Path) -> tuple[str, str]:
    """(name, reference) from `<name>:<reference>.torcx.tgz|squashfs`."""
    for suffix in ARCHIVE_SUFFIXES:
        if path.name.endswith(suffix):
            name, sep, reference = path.name[:-len(suffix)].partition(":")
            if sep and name and reference:
                return name, reference
    raise BakeryError(f"{path}: not a torcx image file name (expected <name>:<reference>"
                      f"{' or '.join(ARCHIVE_SUFFIXES)})", HINT_ARCHIVE)


def version_from_reference(reference: str, origin: str) -> str:
    """A sysext version from a torcx reference: characters that would break
    `MatchPattern=<name>-@v-%a.raw` ('-', '/', ':' ...) become '_'."""
    version = NOT_VERSION_CHAR.sub("_", reference).lstrip(VERSION_PUNCTUATION)
    if problem := version_problem(version):
        raise BakeryError(f"{origin}: reference {reference!r} gives no usable version: {problem}",
                          "pass --version with a version such as 20.10.24")
    return version


def check_version(version: str) -> None:
    """--version becomes part of the image file name, so it follows the version rule."""
    if problem := version_problem(version):
        raise BakeryError(f"--version: {problem}",
                          "use letters, digits and . , _ + only, e.g. 1.0_rc1 for 1.0-rc1")


def check_name(name: str, origin: str) -> None:
    if problem := naming.name_problem(name):
        raise BakeryError(f"{origin}: image {problem}", "pass --name")


def _load_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise BakeryError(f"{path}: cannot read the {what}: {e.strerror}") from None
    except ValueError as e:
        raise BakeryError(f"{path}: the {what} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BakeryError(f"{path}: the {what} is not a JSON object")
    return data


def load_profile(path: Path) -> list[tuple[str, str, str | None]]:
    """(name, reference, format or None) of each image of a torcx profile, in order."""
    data = _load_json(path, "torcx profile")
    if data.get("kind") not in PROFILE_KINDS:
        raise BakeryError(f"{path}: kind is {data.get('kind')!r}, not a torcx profile "
                          f"({' or '.join(PROFILE_KINDS)})",
                          "pass the profile JSON, e.g. /etc/torcx/profiles/<name>.json")
    images = (data.get("value") or {}).get("images")
    if not isinstance(images, list):
        raise BakeryError(f"{path}: value.images: missing or not a list")
    entries: list[tuple[str, str, str | None]] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(images):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) and entry[k]
                                                  for k in ("name", "reference")):
            raise BakeryError(f"{path}: value.images[{i}]: needs string fields name and reference")
        name = entry["name"]
        if name in seen:
            raise BakeryError(f"{path}: value.images[{i}]: image {name!r} is already listed as "
                              f"value.images[{seen[name]}]",
                              "torcx applies one reference per image and a sysext name is "
                              "unique: keep one entry per image")
        seen[name] = i
        fmt = entry.get("format")
        if fmt not in (None, "tgz", "squashfs"):
            raise BakeryError(f"{path}: value.images[{i}].format: {fmt!r} is not tgz or squashfs")
        entries.append((name, entry["reference"], fmt))
    if not entries:
        raise BakeryError(f"{path}: the profile lists no images", "nothing to convert")
    return entries


def find_in_stores(name: str, reference: str, fmt: str | None,
                   stores: Sequence[Path]) -> Path | None:
    """The archive of an image in the first store that holds it."""
    suffixes = [s for s in ARCHIVE_SUFFIXES if fmt is None or s.endswith(fmt)]
    for store in stores:
        for suffix in suffixes:
            candidate = store / f"{name}:{reference}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def locate_images(profile: Path, stores: Sequence[Path], package_list: Path | None,
                  cache: Path) -> list[TorcxImage]:
    """Every image of a profile with its archive, from the stores or, failing that, from a
    torcx package list (local paths or URLs, verified against the list's hash)."""
    for store in stores:
        if not store.is_dir():
            raise BakeryError(f"{store}: torcx store directory does not exist",
                              "pass directories such as /usr/share/torcx/store/<os-version>/ "
                              "or /var/lib/torcx/store/")
    packages = load_package_list(package_list) if package_list else {}
    found = []
    for name, reference, fmt in load_profile(profile):
        archive = find_in_stores(name, reference, fmt, stores)
        if archive is None and (name, reference) in packages:
            archive = _from_package_list(name, reference, packages[name, reference], stores,
                                         package_list, cache)
        if archive is None:
            looked = ", ".join(str(s) for s in stores) or "no --store given"
            raise BakeryError(f"{profile}: image {name}:{reference} is in none of the stores "
                              f"({looked})" + (f" nor in {package_list}" if package_list else ""),
                              f"copy {name}:{reference}.torcx.tgz from the host's torcx store "
                              "and pass its directory with --store")
        found.append(TorcxImage(name, reference, archive))
    return found


def load_package_list(path: Path) -> dict[tuple[str, str], tuple[str, list[dict]]]:
    """(name, version) -> (hash, locations) from a torcx package list (torcx_manifest.json)."""
    data = _load_json(path, "torcx package list")
    if data.get("kind") != PACKAGE_LIST_KIND:
        raise BakeryError(f"{path}: kind is {data.get('kind')!r}, not {PACKAGE_LIST_KIND!r}",
                          "pass the torcx_manifest.json that lists image URLs and hashes")
    result = {}
    for p, package in enumerate((data.get("value") or {}).get("packages") or []):
        for v, version in enumerate(package.get("versions") or []):
            where = f"{path}: value.packages[{p}].versions[{v}]"
            if not isinstance(version.get("hash"), str) or not isinstance(version.get("locations"), list):
                raise BakeryError(f"{where}: needs a hash and a list of locations")
            result[package.get("name"), version.get("version")] = (version["hash"],
                                                                   version["locations"])
    return result


def _from_package_list(name: str, reference: str, entry: tuple[str, list[dict]],
                       stores: Sequence[Path], origin: Path, cache: Path) -> Path | None:
    from sysext_bakery.build.fetch import fetch

    digest, locations = entry
    algorithm, _, expected = digest.partition("-")
    if algorithm not in ("sha256", "sha512") or not expected:
        raise BakeryError(f"{origin}: {name}:{reference}: hash {digest!r} is not sha256-<hex> or "
                          "sha512-<hex>")
    for location in locations:
        if location.get("path"):
            # Paths name the host's store; the copy given here is found by its file name.
            archive = find_in_stores(name, reference, None, stores) or \
                next((s / Path(location["path"]).name for s in stores
                      if (s / Path(location["path"]).name).is_file()), None)
        elif location.get("url"):
            archive = fetch(location["url"], None, cache, mirror=os.environ.get("BAKERY_MIRROR")).path
        else:
            continue
        if archive is not None:
            actual = file_digest(archive, algorithm)
            if actual != expected.lower():
                raise BakeryError(f"{archive}: {algorithm} is {actual}, {origin} says {expected}",
                                  "the archive is corrupt or not the one listed; fetch it again")
            return archive
    return None


# ---------------------------------------------------------------------------------------------
# Reading torcx archives


def iter_archive(archive: Path, kind: str) -> Iterator[tuple[stage.Member, BinaryIO | None]]:
    """The members of a torcx archive, checked like every archive the bakery reads."""
    origin = "torcx image"
    if kind != "squashfs":
        yield from stage.iter_members(archive, kind, origin)
        return
    yield from _squashfs_members(archive, f"{origin}: {archive.name}")


def _squashfs_members(archive: Path, where: str) -> Iterator[tuple[stage.Member, BinaryIO | None]]:
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
            name = stage.member_name(entry.path.lstrip("/"), where) if entry.path != "/" else ""
            if not name:
                continue
            mode = entry.mode & 0o7777
            if entry.is_dir:
                yield stage.Member(name, "dir", mode), None
            elif entry.is_symlink:
                stage.check_symlink(name, entry.readlink(), where)
                yield stage.Member(name, "symlink", mode, linkname=entry.readlink()), None
            elif entry.is_file:
                yield stage.Member(name, "file", mode, entry.size), BytesIO(entry.read_bytes())
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


def unpack(archive: Path, kind: str, tree: stage.Tree) -> dict[str, list[str]]:
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
        elif member.mode & stage.SPECIAL_BITS:
            raise BakeryError(f"{who}: is setuid/setgid (mode {member.mode:04o})",
                              "a converted image carries plain 0755/0644 files; drop the "
                              "setuid bit or ship the tool another way")
        elif member.type == "hardlink":
            if member.linkname not in placed:
                raise BakeryError(f"{who}: hardlink to '{member.linkname}', which the sysext "
                                  "does not carry", "make it a copy or a symlink")
            tree.copy_file(rel, placed[member.linkname], stage.file_mode(member.mode, None), who)
        else:
            tree.add_file(rel, content, stage.file_mode(member.mode, None), who)
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


def carry_manifest_files(manifest: dict[str, list[str]], tree: stage.Tree) -> None:
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


def _copy_into(tree: stage.Tree, source: str, dest: str, who: str) -> None:
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


# ---------------------------------------------------------------------------------------------
# Units


def substitute(text: str, torcx_name: str, origin: str) -> str:
    """Replaces references to the torcx runtime variables by their values in a sysext:
    paths into the unpacked image become their /usr place, the rest take TORCX_VARS.
    `torcx_name` is the torcx image's own name, which its units use in unpack paths even
    when the sysext is given another name."""
    image_paths = re.compile(
        _UNPACK + r"(?:" + _IMAGEDIR + r"|/" + re.escape(torcx_name) + r")"
        r"/(" + "|".join(RELOCATE) + r")(?=[/\s\"']|$)")
    text = image_paths.sub(lambda m: "/" + relocate(m[1]), text)
    if m := _UNPACK_ELSEWHERE.search(text):
        raise BakeryError(f"{origin}: {m[0]} is not in the bin/, lib/, ... directories of the "
                          f"torcx image {torcx_name!r}, so it has no place in the sysext",
                          "fix the unit in the torcx archive to use the file's /usr path")
    text = text.replace("/run/torcx/bin", TORCX_VARS["TORCX_BINDIR"])

    def value(m: re.Match) -> str:
        var = m[1] or m[2]
        if var not in TORCX_VARS:
            raise BakeryError(f"{origin}: refers to ${{{var}}}, which has no meaning without torcx",
                              f"edit the unit to drop it; only {', '.join(TORCX_VARS)} are "
                              "converted")
        return TORCX_VARS[var]
    return _VAR_REF.sub(value, text)


def rewrite_unit(text: str, torcx_name: str, origin: str) -> str:
    """A torcx unit made independent of torcx: no torcx.target dependency, no seal file,
    no TORCX_* variables (references substituted, assignments dropped). A line that still
    refers to torcx afterwards would fail at boot, so it is an error naming the line."""
    lines = []
    leftover = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{origin}:{number}"
        if _TORCX_ENV_FILE.match(line):
            continue
        if m := _DEPENDENCY.match(line):
            units = [u for u in m[2].split() if u != "torcx.target"]
            if not units:
                continue
            line = f"{m[1]}={' '.join(units)}" if len(units) != len(m[2].split()) else line
        if m := _ENVIRONMENT.match(line):
            words = _ENV_WORD.findall(m[2])
            kept = [w for w in words if not _TORCX_ASSIGNMENT.match(w)]
            if not kept:
                continue
            line = m[1] + " ".join(kept) if len(kept) != len(words) else line
        line = substitute(line, torcx_name, where)
        if _LEFTOVER.search(line) and not _FREE_TEXT.match(line):
            leftover.append(f"{where}: {line.strip()}")
        lines.append(line)
    if leftover:
        raise BakeryError(f"torcx image {torcx_name!r}: a unit still refers to torcx after "
                          "conversion, and torcx is gone at boot:\n  " + "\n  ".join(leftover),
                          "only torcx.target, /run/metadata/torcx, the TORCX_* variables and "
                          "paths into this image are converted; fix the unit in the torcx "
                          "archive (unpack, edit, tar -czf it again)")
    return "\n".join(lines) + "\n"


def rewrite_units(root: Path, torcx_name: str) -> bool:
    """Rewrites every unit file and drop-in of the tree in place; True if there are units."""
    unit_dir = root / UNIT_DIR
    if not unit_dir.is_dir():
        return False
    found = False
    for path in sorted(unit_dir.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        is_dropin = path.parent.name.endswith(".d") and path.suffix == ".conf"
        if not (path.name.endswith(UNIT_SUFFIXES) or is_dropin):
            continue
        found = found or not is_dropin
        origin = f"{torcx_name}: /{path.relative_to(root)}"
        path.write_text(rewrite_unit(path.read_text(), torcx_name, origin))
    return found


def wants_to_upholds(root: Path, name: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Removes `<target>.wants/` and `.requires/` directories from the unit directory and
    returns what they enabled, for `Upholds=` drop-ins (no /etc symlinks needed)."""
    unit_dir = root / UNIT_DIR
    upholds: dict[str, list[str]] = {}
    if not unit_dir.is_dir():
        return ()
    for wants in sorted(unit_dir.iterdir()):
        if not wants.is_dir() or wants.is_symlink() or not wants.name.endswith((".wants", ".requires")):
            continue
        target = wants.name.rpartition(".")[0]
        for entry in sorted(wants.iterdir()):
            unit = entry.name
            template = re.sub(r"@[^.]*\.", "@.", unit)
            if not (os.path.lexists(unit_dir / unit) or os.path.lexists(unit_dir / template)):
                raise BakeryError(f"{name}: /{UNIT_DIR}/{wants.name}/{unit} enables a unit the "
                                  "image does not ship",
                                  "add the unit to the torcx image or remove the link")
            upholds.setdefault(target, []).append(unit)
        shutil.rmtree(wants)
    return tuple((t, tuple(sorted(set(u)))) for t, u in sorted(upholds.items()))


def leftover_references(root: Path) -> list[str]:
    """Files outside the unit directory that still mention torcx (scripts reading
    TORCX_BINDIR, configs pointing into /run/torcx): reported, since they are not rewritten.
    (Units are rewritten, and refused if torcx is left in them.)"""
    found = []
    for rel, entry in iter_tree(root):
        if not entry.is_file(follow_symlinks=False) or rel.startswith(UNIT_DIR + "/"):
            continue
        if entry.stat(follow_symlinks=False).st_size > (1 << 20):
            continue
        with open(entry.path, "rb") as f:
            data = f.read()
        if not data.startswith(b"\x7fELF") and _LEFTOVER.search(data.decode("utf-8", "replace")):
            found.append(f"/{rel} still mentions torcx; check it works from /usr")
    return found


def convert(source: TorcxImage, work: Path, *, name: str | None = None,
            version: str | None = None) -> Converted:
    """A torcx archive as a sysext files/ directory (`work/files`) plus its upholds."""
    kind = archive_kind(source.archive)
    name = name or source.name
    check_name(name, str(source.archive))
    if version is None:
        version = version_from_reference(source.reference, str(source.archive))
    else:
        check_version(version)
    files = work / "files"
    files.mkdir(parents=True)
    tree = stage.Tree(files)
    manifest = unpack(source.archive, kind, tree)
    carry_manifest_files(manifest, tree)
    ships_units = rewrite_units(files, source.name)
    upholds = wants_to_upholds(files, name)
    return Converted(name, version, files, upholds, ships_units, tuple(leftover_references(files)))


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


# ---------------------------------------------------------------------------------------------
# Building through the bakery's pipeline


def stage_converted(converted: Converted, arch: str, work: Path, *, os_id: str = "_any",
                    fmt: str = "squashfs", compression: str = "zstd") -> tuple[Image, Path]:
    """Stages and validates a converted image exactly like a recipe's image; returns the
    Image and its tree (work/tree)."""
    image = Image(name=converted.name, version=converted.version, arch=arch, sources=(),
                  files_dir=converted.files_dir, upholds=converted.upholds,
                  reload_manager=converted.ships_units, os_id=os_id,
                  sysext_level=OS_PROFILES[os_id], fmt=fmt, compression=compression)
    tree = work / "tree"
    stage.stage_image(image, [], tree)
    return image, tree


def pack_staged(image: Image, tree: Path, out_dir: Path) -> Built:
    """Packs a staged tree into out_dir/<img>.raw and records it in out_dir/SHA256SUMS."""
    from sysext_bakery.build.pack import pack

    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / image.filename
    digest = pack(tree, out, image.fmt, image.compression)
    sums.update(out_dir, {out.name: digest})
    masks = tuple(sorted(builtin for path, builtin in BUILTIN_SYSEXTS.items()
                         if os.path.lexists(tree / path)))
    return Built(image.name, image.version, out, digest, masks)


# ---------------------------------------------------------------------------------------------
# Butane and recipe output


def butane(built: Sequence[Built], base_url: str) -> str:
    """A Butane (Flatcar) config that installs the images, enables them as sysexts, keeps
    Flatcar's own docker/containerd sysexts out of the way when an image replaces them, and
    points torcx back at the vendor profile."""
    base = base_url if base_url.endswith("/") else base_url + "/"
    files = [provision.File("/etc/torcx/next-profile", inline="vendor", overwrite=True)]
    links = []
    for b in built:
        target = f"/opt/extensions/{b.name}/{b.path.name}"
        files.append(provision.File(target, source=base + b.path.name, hash=f"sha256-{b.sha256}"))
        links.append(provision.Link(f"/etc/extensions/{b.name}.raw", target))
    for mask in sorted({m for b in built for m in b.masks}):
        links.append(provision.Link(f"/etc/extensions/{mask}.raw", "/dev/null", overwrite=True))
    comment = ("Replaces a torcx profile: " + ", ".join(f"{b.name} {b.version}" for b in built)
               + ".\nMerge into your Butane config (drop its /etc/torcx entries) and translate "
               "it with `butane --strict`.")
    return provision.butane_yaml(provision.Config(files=tuple(files), links=tuple(links)), comment)


def recipe_toml(converted: Converted, image: Image, source: TorcxImage) -> str:
    """recipes/<name>.toml for a converted image: a files-only recipe (no sources) that
    rebuilds the same image, so it keeps a non-default format and compression."""
    import tomli_w

    data: dict = {"description": f"{converted.name} converted from the torcx image "
                                 f"{source.name}:{source.reference}",
                  "homepage": FLATCAR_SYSEXT_DOCS, "arches": [image.arch]}
    if image.os_id != "_any":
        data["os"] = image.os_id
    if image.fmt != "squashfs":
        data["format"] = image.fmt
    if image.compression != COMPRESSIONS[image.fmt][0]:
        data["compression"] = image.compression
    if converted.upholds:
        data["units"] = {"upholds": {t: list(u) for t, u in converted.upholds}}
    return (f"{RECIPE_MARK}; the image content is in {converted.name}/files/.\n"
            + tomli_w.dumps(data))


def check_recipe_free(recipes_dir: Path, name: str) -> Path:
    """recipes/<name>.toml, unless a recipe not made by torcx-convert already has that name,
    or a recipe's name is `<name>-…` or the prefix of `<name>-…`: published images are
    found by `MatchPattern=<name>-@v-%a.raw`, which would match the other image's files."""
    recipe = recipes_dir / f"{name}.toml"
    safe = f"pass another --name, e.g. {name.replace('-', '_')}_custom"
    if recipe.exists() and not recipe.read_text().startswith(RECIPE_MARK):
        raise BakeryError(f"{recipe}: a recipe of that name exists and was not made by "
                          "torcx-convert; not replacing it", safe)
    other = naming.clash(name, (p.stem for p in recipes_dir.glob("*.toml")))
    if other:
        short, long = sorted((name, other), key=len)
        raise BakeryError(f"{recipe}: the name clashes with the recipe {other!r}: the "
                          f"sysupdate MatchPattern {naming.match_pattern(short)} "
                          f"would also match the images of {long!r}",
                          safe + ": no recipe name followed by '-' may begin it")
    return recipe


def emit_recipe(converted: Converted, image: Image, source: TorcxImage, recipes_dir: Path,
                lock_path: Path) -> Path:
    """Writes recipes/<name>.toml and recipes/<name>/files/ (replacing both atomically) and
    pins the version in the lock, so `doit build:<name>` rebuilds the image."""
    recipes_dir.mkdir(parents=True, exist_ok=True)
    recipe = check_recipe_free(recipes_dir, converted.name)
    files = recipes_dir / converted.name / "files"
    files.parent.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".files.", dir=files.parent))
    shutil.copytree(converted.files_dir, staging / "files", symlinks=True)
    if files.exists():
        old = staging / "old"
        os.rename(files, old)
    os.rename(staging / "files", files)
    shutil.rmtree(staging)
    write_atomic(recipe, recipe_toml(converted, image, source))
    lock.record_sha256(lock_path, converted.name, converted.version, image.arch, [])
    return recipe


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("archive", nargs="?", type=Path,
                        help="a torcx image: <name>:<reference>.torcx.tgz or .torcx.squashfs")
    parser.add_argument("--profile", type=Path,
                        help="a torcx profile JSON: convert every image it lists")
    parser.add_argument("--store", type=Path, action="append", default=[],
                        help="torcx store directory to find the profile's images in "
                             "(repeatable, first match wins)")
    parser.add_argument("--package-list", type=Path,
                        help="torcx_manifest.json listing image paths/URLs and hashes, for "
                             "images not in a store")
    parser.add_argument("--name", help="sysext name (single archive; default: the torcx name)")
    parser.add_argument("--version", dest="image_version",
                        help="sysext version (single archive; default: the torcx reference)")
    parser.add_argument("--arch", default="x86-64", choices=tuple(ARCHES),
                        help="architecture of the image's binaries (default: x86-64)")
    parser.add_argument("--os", dest="os_id", default="_any", choices=tuple(OS_PROFILES),
                        help="extension-release profile (default: _any)")
    parser.add_argument("--format", dest="fmt", default="squashfs", choices=("squashfs", "erofs"))
    parser.add_argument("--compression", help="default: zstd (squashfs), lz4hc (erofs)")
    parser.add_argument("--out", type=Path, default=Path("build/images"),
                        help="where images and SHA256SUMS go (default: build/images)")
    parser.add_argument("--base-url", required=True,
                        help="URL the images will be served from (the Butane config downloads "
                             "them from there)")
    parser.add_argument("--butane", type=Path,
                        help="where to write the Butane config (default: OUT/<name>.bu)")
    parser.add_argument("--emit-recipe", type=Path, metavar="RECIPES_DIR",
                        help="also write RECIPES_DIR/<name>.toml and <name>/files/ and pin "
                             "the version in --lock")
    parser.add_argument("--lock", type=Path, default=Path("release/lock.toml"),
                        help="lock to pin emitted recipes in (default: release/lock.toml)")


def run(args: argparse.Namespace) -> None:
    sources = _sources(args)
    compression = args.compression or COMPRESSIONS[args.fmt][0]
    if args.emit_recipe:
        for source in sources:      # before anything is built
            check_recipe_free(args.emit_recipe, args.name or source.name)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".torcx-", dir=args.out) as tmp:
        # Every image is converted and validated before the first one is packed, so bad
        # input anywhere in a profile leaves --out as it was.
        staged = []
        for i, source in enumerate(sources):
            work = Path(tmp) / str(i)
            converted = convert(source, work, name=args.name, version=args.image_version)
            for warning in converted.warnings:
                print(f"warning: {converted.name}: {warning}", file=sys.stderr)
            staged.append((source, converted, *stage_converted(
                converted, args.arch, work, os_id=args.os_id, fmt=args.fmt,
                compression=compression)))
        built = []
        for source, converted, image, tree in staged:
            built.append(pack_staged(image, tree, args.out))
            print(f"{built[-1].path}  sha256 {built[-1].sha256}")
            if args.emit_recipe:
                recipe = emit_recipe(converted, image, source, args.emit_recipe, args.lock)
                print(f"{recipe}: rebuild with `doit build:{converted.name}`")
    stem = args.profile.stem if args.profile else built[0].name
    target = args.butane or args.out / f"{stem}.bu"
    write_atomic(target, butane(built, args.base_url))
    print(f"{target}: Butane config; serve the images at {args.base_url}")


def _sources(args: argparse.Namespace) -> list[TorcxImage]:
    if (args.archive is None) == (args.profile is None):
        raise BakeryError("torcx-convert: give either a torcx image file or --profile",
                          "e.g. bakery torcx-convert docker:20.10.torcx.tgz, or "
                          "bakery torcx-convert --profile profile.json --store DIR")
    if args.archive is not None:
        if not args.archive.is_file():
            raise BakeryError(f"{args.archive}: no such file", HINT_ARCHIVE)
        name, reference = parse_archive_name(args.archive)
        return [TorcxImage(name, reference, args.archive)]
    if args.name or args.image_version:
        raise BakeryError("torcx-convert: --name and --version apply to a single image",
                          "with --profile, names and versions come from the profile")
    cache = Path(os.environ.get("BAKERY_CACHE", "build/cache"))
    return locate_images(args.profile, args.store, args.package_list, cache)
