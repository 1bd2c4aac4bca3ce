"""Building the /usr (and /opt) tree of one image from its verified downloads.

Archives are read in one streaming pass and never unpacked as a whole (build.archive); the
members an install pattern selects (build.install) are written straight to their place in the
tree (build.tree). The tree is built in a temporary directory next to `dest`, validated, then
renamed into place.

With an `unpacked` directory, sources go through the unpacked cache (build.unpacked).

A change to what is staged from the same downloads and recipe (here or in build.install,
build.tree, model.extension_release, validation) bumps STAGE_FORMAT in build/formats.py,
so images already built are restaged and repacked.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sysext_bakery.errors import BakeryError
from sysext_bakery.files import discard, disk_errors, keep_for_stop, make_temp_dir, rename_kept
from sysext_bakery.model import extension_release
from sysext_bakery.model.image import Image, Symlink
from sysext_bakery.build import hostsetup
from sysext_bakery.build.install import file_mode, install_source
from sysext_bakery.build.tree import Tree, resolve_in_tree
from sysext_bakery.build.unpacked import link_source
from sysext_bakery.build.validate import iter_tree, validate_tree

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


def add_symlinks(tree: Tree, symlinks: Sequence[Symlink]) -> None:
    """The recipe's [symlinks]; a path something else placed is a clash."""
    for link in symlinks:
        tree.add_symlink(link.path.strip("/"), link.target, link.origin or f"symlink {link.path}")


def check_symlinks(root: Path, symlinks: Sequence[Symlink]) -> None:
    """Each declared link must lead to something the image ships: a link into the host's
    /usr would change meaning with the host, and one to nothing is a typo."""
    for link in symlinks:
        if resolve_in_tree(root, link.path.strip("/")) is None:
            raise BakeryError(f"{link.origin or link.path}: '{link.target}' does not resolve to "
                              f"anything inside the image (from {link.path})",
                              hint="a declared symlink must point at a file or directory the image "
                                   "itself ships; relative targets start from the link's directory")


def write_dropins(tree: Tree, name: str, upholds: Sequence[tuple[str, Sequence[str]]]) -> None:
    """One `Upholds=` drop-in per (target, unit): units start with the host's targets without
    any symlink in /etc."""
    for target, units in upholds:
        for unit in units:
            tree.add_text(f"usr/lib/systemd/system/{target}.d/10-{name}-{unit}.conf",
                          f"[Unit]\nUpholds={unit}\n", f"the [units] drop-in {target} -> {unit}")


def write_extension_release(tree: Tree, image: Image) -> None:
    # units may come from an archive as well as from files/ or drop-ins: look at the tree
    units = tree.root / "usr/lib/systemd/system"
    ships_units = units.is_dir() and any(units.iterdir())
    tree.add_text(extension_release.path(image.name),
                  extension_release.render(image, ships_units), "the extension-release file")


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
    with disk_errors(dest.parent, f"staging {dest}"):
        _stage(image, downloads, dest, unpacked)


def _stage(image: Image, downloads: Sequence[Path], dest: Path, unpacked: Path | None) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    # kept for the stop: a -P thread worker's `except` never runs when the run is stopped
    work = Path(make_temp_dir(prefix=f".{dest.name}.", dir=dest.parent))
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
        add_symlinks(tree, image.symlinks)
        write_dropins(tree, image.name, image.upholds)
        hostsetup.write_setup_unit(tree, image.name)
        write_extension_release(tree, image)
        check_symlinks(work, image.symlinks)
        validate_tree(work, image.name, image.arch)
        _replace_dir(work, dest)
    except BaseException:
        discard(work)
        raise


def _replace_dir(new: Path, dest: Path) -> None:
    """Rename the temporary tree `new` (kept for the stop) to `dest`; the tree it replaces
    goes through a temporary name that is kept too, and is removed."""
    if not os.path.lexists(dest):
        rename_kept(new, dest)
        return
    old = new.with_name(new.name + ".old")
    keep_for_stop(old)
    try:
        os.rename(dest, old)
        rename_kept(new, dest)
    finally:
        discard(old)
