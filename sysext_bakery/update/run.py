"""`doit update` / `doit update:<name>`: discover upstream versions, resolve the desired state
(release/versions.toml), pin new versions with per-arch URL and sha256, re-pin versions whose
recipe changed, drop what retention lets go, and write the lock once, atomically, comments
kept. One failing upstream costs only its own recipe's update; the report says the run was
partial."""
from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, TextIO

from sysext_bakery import upstream
from sysext_bakery.build import tidy
from sysext_bakery.errors import BakeryError
from sysext_bakery.model.image import Source
from sysext_bakery.model.version import same_version_groups, same_version_phrase, version_key
from sysext_bakery.recipe import lock
from sysext_bakery.recipe.load import Recipe, load_recipes
from sysext_bakery.settings import LOCK, Settings
from sysext_bakery.update import desired as desired_mod
from sysext_bakery.update.desired import VERSIONS, Desired
from sysext_bakery.update.pins import Hasher, Sources, pin_version, why_repin

DISCOVERY_THREADS = 8


@dataclass
class RecipeUpdate:
    name: str
    added: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)      # version -> why
    repinned: dict[str, str] = field(default_factory=dict)     # version -> why
    writes: dict[str, dict[str, Sources]] = field(default_factory=dict)
    skipped_tags: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)       # discovery read only part
    error: BakeryError | None = None

    @property
    def changed(self) -> bool:
        return bool(self.added or self.dropped or self.repinned)


@dataclass
class Report:
    recipes: list[RecipeUpdate]
    tofu: list[tuple[str, str]]           # (url, sha256) hashed by download at update time
    lock_written: bool = False
    untracked: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[RecipeUpdate]:
        return [r for r in self.recipes if r.error]

    @property
    def changed(self) -> list[RecipeUpdate]:
        return [r for r in self.recipes if r.changed]


def update_recipe(recipe: Recipe, want: Desired, pins: list[lock.Pin],
                  discover: Callable[[Recipe], upstream.Discovery],
                  sha256: Callable[[Source], str]) -> RecipeUpdate:
    """The update of one recipe, or its error (never raised: the others go on)."""
    result = RecipeUpdate(recipe.name)
    try:
        desired_mod.check_recipe(want, recipe.streams)
        offered: tuple[str, ...] = ()
        if want.discovers:
            if recipe.upstream is None:
                raise BakeryError(f"{recipe.shown}: no [upstream] table, but {VERSIONS} asks "
                                  f"for {recipe.name}'s newest versions",
                                  "add [upstream] to the recipe (docs/recipes.md), or carry "
                                  "exact versions only")
            found = discover(recipe)
            offered = found.versions
            result.skipped_tags = [str(s) for s in found.skipped]
            result.warnings = list(found.warnings)
        pinned = {p.version: p for p in pins}
        plan = desired_mod.resolve(want, offered, tuple(pinned), recipe.streams)
        for same in same_version_groups([*plan.add, *plan.keep]):
            # upstream (or versions.toml) spells a version twice: pinning both would make a
            # lock that is refused on load
            raise BakeryError(f"{recipe.name}: {same_version_phrase(same)}, so they cannot "
                              f"both be pinned in {LOCK} (sysupdate could not order their images)",
                              f"keep one spelling: remove the other from {LOCK} or "
                              f"{VERSIONS}, or map upstream's tags to one spelling in "
                              f"{recipe.shown} ([upstream])")
        for version in plan.add:
            result.writes[version] = pin_version(recipe, version, sha256)
            result.added.append(version)
        for version in plan.keep:
            if why := why_repin(recipe, pinned[version]):
                result.writes[version] = pin_version(recipe, version, sha256)
                result.repinned[version] = why
        result.dropped = dict(plan.why_dropped)
    except BakeryError as e:
        result = RecipeUpdate(recipe.name, error=e)   # nothing of a failed recipe is written
    return result


Loaded = tuple[dict[str, Recipe], list[BakeryError], dict[str, list[lock.Pin]]]


def run(settings: Settings, names: list[str] | None,
        get: upstream.Get | None = None, out: TextIO = sys.stdout,
        loaded: Loaded | None = None) -> Report:
    """Update the named recipes (None: every recipe in release/versions.toml) and write the
    lock. Configuration errors (unreadable versions.toml or lock, unknown name) raise.
    `loaded`: recipes, their load errors and the lock's pins, when the caller has them
    already (the doit task: the graph was built from them moments ago)."""
    root = settings.root
    if loaded is None:
        recipes, errors = load_recipes(root / "recipes")
        pins = lock.load(settings.lock_path, LOCK)
    else:
        recipes, errors, pins = loaded
    wanted = desired_mod.load(root / VERSIONS)
    broken = {}
    for name in wanted:
        if name in recipes:
            continue
        if not (root / "recipes" / f"{name}.toml").exists():
            raise BakeryError(f"{VERSIONS}: [{name}]: there is no recipes/{name}.toml",
                              f"remove [{name}] from {VERSIONS} or add the recipe")
        # a recipe that does not load fails its own update only
        broken[name] = next((e for e in errors if f"recipes/{name}.toml" in str(e)),
                            BakeryError(f"recipes/{name}.toml does not load"))
    if names is None:
        selected = sorted(wanted)
        untracked = sorted(set(recipes) - set(wanted))
    else:
        for name in names:
            if name not in recipes and name not in broken:
                raise BakeryError(f"update:{name}: no recipes/{name}.toml",
                                  "name a recipe: doit list shows update:<name> tasks")
            if name not in wanted:
                raise BakeryError(f"update:{name}: {name} is not in {VERSIONS}",
                                  f"add [{name}] with what to carry (docs/ci.md)")
        selected, untracked = list(names), []
    hasher = Hasher(settings.download_cache, settings.mirror)
    found = discover_all([recipes[n] for n in selected
                          if n not in broken and wanted[n].discovers and recipes[n].upstream],
                         get or _per_thread_get(settings.mirror))

    def discovered(recipe: Recipe) -> upstream.Discovery:
        result = found[recipe.name]
        if isinstance(result, BakeryError):
            raise result
        return result

    results = [RecipeUpdate(n, error=broken[n]) if n in broken else
               update_recipe(recipes[n], wanted[n], pins.get(n, []), discovered, hasher.sha256)
               for n in selected]
    report = Report(results, hasher.tofu, untracked=untracked)
    if any(r.changed for r in results):
        report.lock_written = lock.edit(settings.lock_path, lambda text: apply(text, results))
    print_report(report, out)
    return report


def _per_thread_get(mirror: str | None) -> upstream.Get:
    """A `get` with one HTTP client (session) per discovery thread: sessions are not
    meant to be shared between threads."""
    from sysext_bakery.upstream.net import make_get
    local = threading.local()

    def get(url: str, headers: Mapping[str, str]) -> upstream.Reply:
        if not hasattr(local, "get"):
            local.get = make_get(mirror)
        return local.get(url, headers)
    return get


def discover_all(recipes: list[Recipe], get: upstream.Get
                 ) -> dict[str, upstream.Discovery | BakeryError]:
    """Every recipe's discovery, a few at a time: each is one or a few small GETs that wait
    on the network, and a catalogue has a hundred of them."""
    def one(recipe: Recipe) -> upstream.Discovery | BakeryError:
        try:
            return upstream.discover(recipe.upstream, get)
        except BakeryError as e:
            return e
    if len(recipes) <= 1:
        return {r.name: one(r) for r in recipes}
    with ThreadPoolExecutor(max_workers=min(DISCOVERY_THREADS, len(recipes))) as pool:
        try:
            with tidy.stop_signals_held():   # map starts the threads: they leave Ctrl-C to us
                found = pool.map(one, recipes)
            return dict(zip([r.name for r in recipes], found))
        except BaseException:
            # Ctrl-C, SIGTERM: the discoveries under way end (bounded by the HTTP timeouts),
            # the others are dropped
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def apply(text: str, results: list[RecipeUpdate]) -> str:
    """The lock text with every recipe's writes and drops."""
    from sysext_bakery.recipe.lock_edit import with_version, without_version
    for r in results:
        for version in sorted(r.writes, key=version_key):
            text = with_version(text, r.name, version, r.writes[version], LOCK)
        for version in r.dropped:
            text = without_version(text, r.name, version, LOCK)
    return text


def print_report(report: Report, out: TextIO) -> None:
    tofu = dict(report.tofu)
    for r in report.recipes:
        if r.error:
            print(f"{r.name}: FAILED: {r.error}", file=out)
            continue
        for version in r.added:
            urls = [s["url"] for sources in r.writes[version].values() for s in sources]
            how = ("sha256 by download (trust on first use: review it in the commit)"
                   if any(u in tofu for u in urls) else "sha256 from upstream's checksum files")
            print(f"{r.name}: pinned {version} ({', '.join(r.writes[version])}; {how})", file=out)
        for version, why in r.repinned.items():
            print(f"{r.name}: re-pinned {version}: {why}", file=out)
        for version, why in r.dropped.items():
            print(f"{r.name}: dropped {version} (retention: {why})", file=out)
        if not r.changed:
            print(f"{r.name}: up to date", file=out)
        for tag in r.skipped_tags:
            print(f"{r.name}: note: upstream tag {tag}", file=out)
        for warning in r.warnings:
            print(f"{r.name}: warning: {warning}", file=out)
    for url, digest in report.tofu:
        print(f"trust on first use: {url} sha256 {digest} (no upstream checksum; computed by "
              "downloading it now: review it in the commit)", file=out)
    for name in report.untracked:
        print(f"{name}: not in {VERSIONS}, not updated", file=out)
    changed = len(report.changed)
    print(f"{LOCK}: {'updated' if report.lock_written else 'unchanged'} "
          f"({changed} recipe(s) changed, {len(report.failed)} failed)", file=out)


def summary(report: Report) -> list[str]:
    """One line per changed recipe, for the commit message."""
    lines = []
    for r in report.changed:
        parts = []
        if r.added:
            parts.append("pinned " + ", ".join(r.added))
        if r.repinned:
            parts.append("re-pinned " + ", ".join(r.repinned) + " (recipe changed)")
        if r.dropped:
            parts.append("dropped " + ", ".join(r.dropped))
        lines.append(f"{r.name}: {'; '.join(parts)}")
    return lines


def partial_message(report: Report) -> str:
    names = ", ".join(r.name for r in report.failed)
    return (f"update was partial: {len(report.failed)} of {len(report.recipes)} recipe(s) failed "
            f"({names}); the others' updates were written to {LOCK}")
