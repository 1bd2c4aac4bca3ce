"""The catalogue check: every path that two recipes' images both ship.

Two images that ship one path cannot both be merged on a host: systemd-sysext stacks them
and one copy silently hides the other. Where that is by design (docker carries its own
containerd), the recipes say so with `conflicts`; any other shared path is a mistake.

What a recipe ships is only partly known without its downloads: an install map entry
`"docker/*" = "/usr/bin/"` names its files only once the archive is read. So the paths of a
recipe are
  - its files/ tree, its [symlinks] and the install destinations that name one file
    (always), plus
  - every staged tree of it in build/stage/ (`<name>-<version>-<arch>/`), when there is one.
Install entries that need the archive are listed as not checked when no staged tree exists.
Directories are not compared: overlaying directories is what sysexts do.
"""
from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from sysext_bakery.build.validate import iter_tree
from sysext_bakery.errors import BakeryError
from sysext_bakery.model import naming
from sysext_bakery.recipe.load import Recipe

_GLOB = frozenset("*?[")


@dataclass(frozen=True)
class Shipped:
    """What one recipe is known to ship."""
    paths: frozenset[str]            # relative posix paths of files and links: usr/bin/x
    staged: tuple[str, ...]          # the staged trees looked at (directory names)
    unchecked: tuple[str, ...]       # install entries only an archive can resolve


@dataclass(frozen=True)
class Overlap:
    recipes: tuple[str, str]         # sorted
    paths: tuple[str, ...]
    declared: bool                   # one of the two lists the other in `conflicts`


@dataclass(frozen=True)
class Catalogue:
    shipped: dict[str, Shipped]
    overlaps: tuple[Overlap, ...]
    unknown_conflicts: tuple[tuple[str, str], ...]    # (recipe, name that is no recipe)
    quiet_conflicts: tuple[tuple[str, str], ...]      # declared, but no shared path seen


def declared_paths(recipe: Recipe) -> tuple[set[str], list[str]]:
    """The paths a recipe ships that its file says, and the install entries it does not."""
    paths: set[str] = set()
    unchecked = []
    if recipe.files_dir is not None and recipe.files_dir.is_dir():
        paths |= {rel for rel, entry in iter_tree(recipe.files_dir)
                  if not entry.is_dir(follow_symlinks=False)}
    for i, source in enumerate(recipe.sources):
        for install in source.install:
            if not install.dest.endswith("/"):
                paths.add(install.dest.strip("/"))
            elif not _GLOB & set(install.pattern):
                paths.add(posixpath.join(install.dest.strip("/"), posixpath.basename(install.pattern)))
            else:
                unchecked.append(f"sources[{i}].install {install.pattern!r} -> {install.dest!r}")
    paths |= {link.path.strip("/") for link in recipe.symlinks}
    return paths, unchecked


def staged_trees(stage_dir: Path, name: str) -> list[Path]:
    """The staged trees of recipe `name` in `stage_dir` (build/stage), any version and arch."""
    if not stage_dir.is_dir():
        return []
    return [stage_dir / e.name for e in sorted(os.scandir(stage_dir), key=lambda e: e.name)
            if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")
            and (parsed := naming.parse_image_filename(e.name + naming.IMAGE_SUFFIX))
            and parsed[0] == name]


def shipped_by(recipe: Recipe, stage_dir: Path | None) -> Shipped:
    paths, unchecked = declared_paths(recipe)
    trees = staged_trees(stage_dir, recipe.name) if stage_dir else []
    for tree in trees:
        paths |= {rel for rel, entry in iter_tree(tree) if not entry.is_dir(follow_symlinks=False)}
    return Shipped(frozenset(paths), tuple(t.name for t in trees),
                   () if trees else tuple(unchecked))


def catalogue(recipes: Mapping[str, Recipe], stage_dir: Path | None) -> Catalogue:
    """Every path two of `recipes` ship, with whether the pair declared it."""
    shipped = {name: shipped_by(r, stage_dir) for name, r in sorted(recipes.items())}
    owners: dict[str, list[str]] = {}
    for name, s in shipped.items():
        for path in s.paths:
            owners.setdefault(path, []).append(name)
    pairs: dict[tuple[str, str], list[str]] = {}
    for path, names in sorted(owners.items()):
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                pairs.setdefault((a, b), []).append(path)

    def declared(a: str, b: str) -> bool:
        return b in recipes[a].conflicts or a in recipes[b].conflicts

    overlaps = tuple(Overlap(pair, tuple(paths), declared(*pair))
                     for pair, paths in sorted(pairs.items()))
    unknown = tuple((name, other) for name, r in sorted(recipes.items())
                    for other in r.conflicts if other not in recipes)
    declared_pairs = {(min(name, other), max(name, other)) for name, r in recipes.items()
                      for other in r.conflicts if other in recipes}
    quiet = tuple(sorted(declared_pairs - set(pairs)))
    return Catalogue(shipped, overlaps, unknown, quiet)


def report(cat: Catalogue) -> str:
    """What `doit overlaps` prints."""
    lines = []
    for o in cat.overlaps:
        a, b = o.recipes
        state = "declared in conflicts" if o.declared else "NOT DECLARED"
        lines.append(f"{a} and {b} ship {len(o.paths)} same path(s) ({state}):")
        lines += [f"  /{p}" for p in o.paths]
    for a, b in cat.quiet_conflicts:
        lines.append(f"{a} and {b} declare a conflict; no shared path seen (maybe only in "
                     "archives that are not staged)")
    for name, s in cat.shipped.items():
        if s.unchecked:
            lines.append(f"{name}: not staged, so not checked: {', '.join(s.unchecked)} "
                         f"(doit stage:{name}-<version>-<arch> makes them checkable)")
    if not cat.overlaps:
        lines.append(f"no path is shipped by two of the {len(cat.shipped)} recipes")
    return "\n".join(lines)


def check(cat: Catalogue) -> None:
    """Raise one BakeryError naming every undeclared overlap and every conflict that names
    no recipe."""
    problems = [f"recipes/{a}.toml: conflicts: {other!r} is not a recipe"
                for a, other in cat.unknown_conflicts]
    for o in cat.overlaps:
        if not o.declared:
            a, b = o.recipes
            shown = ", ".join(f"/{p}" for p in o.paths[:5]) + (" …" if len(o.paths) > 5 else "")
            problems.append(f"recipes {a} and {b} both ship {shown}")
    if problems:
        raise BakeryError("\n".join(problems),
                          "install the file under another path in one recipe, or, if the two "
                          "are alternatives by design, declare it: conflicts = [\"<other>\"] "
                          "(see docs/recipes.md, 'Overlaps between recipes')")
