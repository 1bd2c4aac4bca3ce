"""`--emit-recipe`: a converted image as a files-only recipe (recipes/<name>.toml and
recipes/<name>/files/) pinned in the lock, so `doit build:<name>` rebuilds it."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from sysext_bakery.recipe import lock
from sysext_bakery.errors import BakeryError
from sysext_bakery.files import write_atomic
from sysext_bakery.model.image import COMPRESSIONS, Image
from sysext_bakery.model import naming
from sysext_bakery.torcx.profile import TorcxImage

if TYPE_CHECKING:
    from sysext_bakery.torcx.convert import Converted

RECIPE_MARK = "# Converted by `bakery torcx-convert`"
FLATCAR_SYSEXT_DOCS = "https://www.flatcar.org/docs/latest/provisioning/sysext/"


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

