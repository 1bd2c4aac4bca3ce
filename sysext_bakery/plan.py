"""The plan: recipes + lock + settings -> the images to build, the `build:` groups, the
builds that cannot run yet and the problems to report. Pure and offline: `doit list` never
needs the network."""
from __future__ import annotations

from dataclasses import dataclass, field

from sysext_bakery.errors import BakeryError
from sysext_bakery.model import naming
from sysext_bakery.model.image import Image
from sysext_bakery.model.version import stream_of, version_key
from sysext_bakery.recipe import lock
from sysext_bakery.recipe.drift import Drift, drift
from sysext_bakery.recipe.load import Recipe, resolve_image
from sysext_bakery.settings import LOCK, Settings

@dataclass(frozen=True)
class Build:
    """A `build:<name>-<x>` group: the images it packs and what the doc line says."""
    images: tuple[str, ...]
    doc: str
    alias_of: str | None = None


@dataclass(frozen=True)
class Problem:
    """Something in the recipes or the lock that withholds images: `doit build`, `doit
    release` and the recipe's own groups fail over it (after building what they can)."""
    recipe: str        # the recipe whose images (some or all) it withholds
    error: BakeryError
    versions: tuple[str, ...] = ()   # the pinned versions it withholds, when it names them

    def __str__(self) -> str:
        return str(self.error)


@dataclass(frozen=True)
class Plan:
    images: tuple[Image, ...]
    builds: dict[str, Build]
    unbuildable: dict[str, str] = field(default_factory=dict)   # build name -> why it cannot run
    problems: tuple[Problem, ...] = ()
    # image id -> why its pin is stale (recipe/drift.py); built from the pin, with a warning
    warnings: dict[str, str] = field(default_factory=dict)


def plan(recipes: dict[str, Recipe], pins: dict[str, list[lock.Pin]], settings: Settings,
         earlier: tuple[Problem, ...] = ()) -> Plan:
    """`earlier`: the problems found while loading (broken recipes, refused pins); they come
    first in the plan's problems."""
    images: list[Image] = []
    builds: dict[str, Build] = {}
    unbuildable: dict[str, str] = {}
    warnings: dict[str, str] = {}
    problems: list[Problem] = list(earlier)
    withheld = {p.recipe for p in earlier}
    for name in sorted(pins):
        if name not in recipes and name not in withheld:   # a broken recipe says so itself
            problems.append(Problem(name, BakeryError(
                f"{LOCK}: pins {name!r}, but there is no loadable recipes/{name}.toml",
                "fix or add the recipe, or remove its versions from the lock")))
    for name, recipe in sorted(recipes.items()):
        clash = naming.clash(name, recipes)
        if clash and name.startswith(clash + "-"):   # the shorter name keeps building
            problems.append(Problem(name, BakeryError(
                f"{recipe.shown}: the name {name!r} starts with {clash + '-'!r}, so the "
                f"sysupdate pattern {naming.match_pattern(clash)} of recipes/{clash}.toml "
                f"would also match {name}'s images", naming.clash_hint(name, clash))))
            continue
        versions = sorted(pins.get(name, []), key=lambda p: version_key(p.version))
        if not versions and name in withheld:
            continue
        if not versions:
            unbuildable[f"{name}"] = unpinned_message(name, None)
            continue
        for pin in versions:
            arches = [a for a in recipe.arches if settings.arches is None or a in settings.arches]
            try:   # all arches of a version or none: a half version would build as if whole
                resolved = [resolve_image(recipe, pin.version, arch, pin.arches.get(arch),
                                          fmt=settings.fmt, compression=settings.compression)
                            for arch in arches]
            except BakeryError as e:
                problems.append(Problem(name, e, (pin.version,)))
                continue
            stale = [d for arch in arches
                     if (d := drift(recipe, pin.version, arch, pin.arches.get(arch)))]
            if stale and settings.locked:   # CI and releases build what the lock says, or nothing
                problems.append(Problem(name, stale_refused(recipe, pin.version, stale), (pin.version,)))
                continue
            for d in stale:
                warnings[f"{name}-{pin.version}-{d.arch}"] = stale_warning(recipe, pin.version, d)
            images += resolved
            builds[f"{name}-{pin.version}"] = Build(
                tuple(i.id for i in resolved),
                f"{name} {pin.version} for {', '.join(arches) or 'no arch selected'}")
        newest_by_stream: dict[str, str] = {}
        for pin in versions:
            stream = stream_of(pin.version, recipe.streams)
            if stream is not None:
                newest_by_stream[stream] = pin.version
        for stream, version in newest_by_stream.items():
            if f"{name}-{version}" in builds and f"{name}-{stream}" not in builds:
                builds[f"{name}-{stream}"] = Build((), f"newest pinned {name} {stream}.x: {version}",
                                                   alias_of=f"{name}-{version}")
        newest = versions[-1].version
        if f"{name}-{newest}" in builds:
            builds[name] = Build((), f"newest pinned {name}: {newest}", alias_of=f"{name}-{newest}")
    return Plan(tuple(images), builds, unbuildable, tuple(problems), warnings)


def _fix(name: str) -> str:
    return (f"run `doit update:{name}` to pin the URLs the recipe renders (with their "
            f"sha256) and commit {LOCK}")


def stale_refused(recipe: Recipe, version: str, stale: list[Drift]) -> BakeryError:
    """A locked build's problem: the pinned URLs of `version` are not the recipe's."""
    # resolve_image refused a different number of sources already: each drift has changes
    lines = "".join(f"\n  {d.arch}: pinned URL {old}\n  {' ' * len(d.arch)}  recipe URL {new}"
                    for d in stale for old, new in d.changes)
    return BakeryError(
        f"{LOCK}: {recipe.name} {version} pins URLs {recipe.shown} no longer renders (its "
        f"URL template or a companion version was edited); a locked build (BAKERY_LOCKED=1) "
        f"does not build it from the stale pin:{lines}", _fix(recipe.name))


def stale_warning(recipe: Recipe, version: str, d: Drift) -> str:
    """An unlocked build's warning: it builds from the pin, not from the edited recipe."""
    urls = "".join(f"\n  pinned URL: {old}\n  recipe URL: {new}"
                   for old, new in d.changes)
    return (f"WARNING: {recipe.name} {version} {d.arch}: building from the URL pinned in "
            f"{LOCK}, not the one {recipe.shown} now renders:{urls}\n  fix: {_fix(recipe.name)}")


def unpinned_message(name: str, wanted: str | None, stream: bool = False) -> str:
    if stream:
        first, example = f"no {name} {wanted}.x is pinned", f"{wanted}.<rest of the version>"
    else:
        first, example = f"{name} {wanted or '(any version)'} is not pinned", wanted or "<version>"
    return (f"{first} in {LOCK}. "
            f"Pin it by adding a table [{name}.\"{example}\"] to the lock (URLs come from "
            f"recipes/{name}.toml) and running `doit update:{name}` for its sha256, or let "
            f"`doit update:{name}` pin what release/versions.toml asks for (docs/ci.md).")
