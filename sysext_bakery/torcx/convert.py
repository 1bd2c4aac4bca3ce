"""Migration from torcx: a torcx image (or a whole torcx profile) becomes sysext images plus
the Butane snippet that installs them in place of the profile.

A torcx image is an archive (`<name>:<reference>.torcx.tgz` or `.torcx.squashfs`) holding a
partial root (`bin/`, `lib/`, ...) and `.torcx/manifest.json`. Conversion relocates that root
under `/usr`, rewrites the units so they no longer need torcx at boot, turns `*.wants/`
links into `Upholds=` drop-ins and then hands a plain `files/` directory to the same
stage -> validate -> pack steps that recipes go through.

The steps live in torcx.profile (finding images), torcx.relocate (reading and relocating an
archive), torcx.units and torcx.emit (`--emit-recipe`); this module runs them, writes the
Butane config and holds the command line.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sysext_bakery.build import stage
from sysext_bakery.build import sums
from sysext_bakery.build.tree import Tree
from sysext_bakery.publish import provision
from sysext_bakery.model.arch import ARCHES
from sysext_bakery.errors import BakeryError
from sysext_bakery.files import write_atomic
from sysext_bakery.model.image import COMPRESSIONS, Image
from sysext_bakery.model import naming
from sysext_bakery.recipe.schema import OS_PROFILES
from sysext_bakery.model.version import NOT_VERSION_CHAR, VERSION_PUNCTUATION, version_problem
from sysext_bakery.torcx.emit import check_recipe_free, emit_recipe
from sysext_bakery.torcx.profile import HINT_ARCHIVE, TorcxImage, locate_images, parse_archive_name
from sysext_bakery.torcx.relocate import archive_kind, carry_manifest_files, unpack
from sysext_bakery.torcx.units import leftover_references, rewrite_units, wants_to_upholds

BUILTIN_SYSEXTS = {"usr/bin/dockerd": "docker-flatcar", "usr/bin/containerd": "containerd-flatcar"}


# ---------------------------------------------------------------------------------------------
# Values


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
# Names and versions


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
    tree = Tree(files)
    manifest = unpack(source.archive, kind, tree)
    carry_manifest_files(manifest, tree)
    ships_units = rewrite_units(files, source.name)
    upholds = wants_to_upholds(files, name)
    return Converted(name, version, files, upholds, ships_units, tuple(leftover_references(files)))


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
# Butane


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
