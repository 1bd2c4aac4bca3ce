"""Loading recipes: TOML -> validated, frozen `Recipe` values, and resolving one recipe +
version + arch into the `Image` the build uses."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sysext_bakery.errors import BakeryError
from sysext_bakery.inputs import read_toml
from sysext_bakery.model import naming
from sysext_bakery.model.limits import DEFAULT as DEFAULT_LIMITS, ArchiveLimits, from_table
from sysext_bakery.model.arch import ARCHES
from sysext_bakery.model.image import COMPRESSIONS, Image, Install, Source, Symlink, archive_kind
from sysext_bakery.model.version import compare_versions, version_vars
from sysext_bakery.recipe.check import Problems, check_table
from sysext_bakery.recipe.schema import OS_PROFILES, SCHEMA, install_target_problem


@dataclass(frozen=True)
class SourceTemplate:
    url: str
    checksum_url: str | None
    kind: str
    version: str | None
    arches: tuple[str, ...]
    install: tuple[Install, ...]
    allow_setuid: bool
    checksum: str = "sha256"
    signature_url: str | None = None
    signature_key: Path | None = None     # resolved: recipes/<name>/<file>
    since: str | None = None              # applies when since <= version < until
    until: str | None = None
    arch_names: tuple[tuple[str, str], ...] = ()   # overrides the recipe's [arch-names]

    def applies_to(self, version: str) -> bool:
        return ((self.since is None or compare_versions(version, self.since) >= 0)
                and (self.until is None or compare_versions(version, self.until) < 0))


@dataclass(frozen=True)
class Upstream:
    type: str
    repo: str | None = None
    url: str | None = None
    pattern: str | None = None
    prefix: str = ""
    prereleases: bool = False
    path: str | None = None                              # json-api only, like the two below
    filter: tuple[tuple[str, Any], ...] = ()
    next_page: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    description: str
    homepage: str
    arches: tuple[str, ...]
    streams: str
    os: str
    format: str
    compression: str
    reload_manager: bool | None     # None: decided by whether the image ships units
    upstream: Upstream | None
    arch_names: dict[str, str] = field(hash=False)
    sources: tuple[SourceTemplate, ...] = ()
    upholds: tuple[tuple[str, tuple[str, ...]], ...] = ()
    files_dir: Path | None = None
    shown: str = ""                  # how messages name the file: recipes/<name>.toml
    replaces: tuple[str, ...] = ()  # built-in sysexts the image takes the place of
    conflicts: tuple[str, ...] = ()  # recipes shipping some of the same paths, by design
    symlinks: tuple[Symlink, ...] = ()  # [symlinks], in the recipe's order
    limits: ArchiveLimits = DEFAULT_LIMITS   # what each source's archive may write


def parse_recipe(name: str, path: Path, data: dict, files_dir: Path | None,
                 shown: str | None = None) -> Recipe:
    """Validate raw TOML data against SCHEMA and build a Recipe (raises BakeryError).
    `shown` is how messages name the file (`recipes/<name>.toml`)."""
    shown = shown or str(path)
    problems = Problems(shown)
    if problem := naming.name_problem(name):
        problems.add("", f"recipe {problem}")
    check_table(SCHEMA, data, "", problems)
    problems.raise_if_any("see docs/recipes.md for the recipe format")

    arches = tuple(data["arches"])
    arch_names = dict(data.get("arch-names", {}))
    for a in arch_names:
        if a not in ARCHES:
            problems.add(f"arch-names.{a}", f"unknown arch; known: {', '.join(ARCHES)}")
    fmt = data.get("format", "squashfs")
    allowed = COMPRESSIONS[fmt]
    compression = data.get("compression", allowed[0])
    if compression not in allowed:
        problems.add("compression", f"{compression!r} is not available for {fmt}; use one of {', '.join(allowed)}")

    sources = []
    for i, raw in enumerate(data.get("sources", [])):
        kind = raw.get("type") or archive_kind(raw["url"].rsplit("/", 1)[-1]) or "file"
        installs = []
        for pattern, target in raw["install"].items():
            table = target if isinstance(target, dict) else {"to": target}
            mode = table.get("mode")
            if pattern.startswith("/") or ".." in pattern.split("/"):
                problems.add(f"sources[{i}].install", f"pattern {pattern!r} must be relative, without '..'")
            installs.append(Install(pattern, table["to"], int(mode, 8) if mode else None,
                                    tuple(table.get("replace", {}).items())))
        if not installs:
            problems.add(f"sources[{i}].install", "must install at least one path")
        key = raw.get("signature-key")
        key_path = path.parent / name / key if key else None
        _check_verification(raw, f"sources[{i}]", key_path, shown, problems)
        sources.append(SourceTemplate(
            url=raw["url"], checksum_url=raw.get("checksum-url"), kind=kind,
            version=raw.get("version"), arches=tuple(raw.get("arches", arches)),
            install=tuple(installs), allow_setuid=raw.get("allow-setuid", False),
            checksum=raw.get("checksum", "sha256"), signature_url=raw.get("signature-url"),
            signature_key=key_path, since=raw.get("since"), until=raw.get("until"),
            arch_names=tuple(sorted(raw.get("arch-names", {}).items()))))
        for a in raw.get("arch-names", {}):
            if a not in ARCHES:
                problems.add(f"sources[{i}].arch-names.{a}", f"unknown arch; known: {', '.join(ARCHES)}")
        for a in raw.get("arches", []):
            if a not in arches:
                problems.add(f"sources[{i}].arches", f"{a!r} is not in the recipe's arches")

    upholds = tuple((target, tuple(units))
                    for target, units in sorted(data.get("units", {}).get("upholds", {}).items()))

    if files_dir is not None:
        for top in sorted(files_dir.iterdir()):
            if top.name not in ("usr", "opt"):
                problems.add("", f"{shown.removesuffix('.toml')}/files/{top.name}: static files may only live under usr/ and opt/")
        if (files_dir / "usr" / "sbin").exists():
            problems.add("", f"{shown.removesuffix('.toml')}/files/usr/sbin: {install_target_problem('/usr/sbin/x')}")
    if not sources and files_dir is None:
        problems.add("sources", "a recipe needs at least one source or a files/ directory")

    if name in data.get("conflicts", []):
        problems.add("conflicts", f"names the recipe itself ({name!r})")

    upstream = data.get("upstream")
    if upstream and upstream["type"].startswith(("github", "gitlab")) and "repo" not in upstream:
        problems.add("upstream.repo", f"required for type {upstream['type']!r}")
    if upstream and upstream["type"] in ("html-index", "json-api") and "url" not in upstream:
        problems.add("upstream.url", f"required for type {upstream['type']!r}")
    for key, kind in (("pattern", "html-index"), ("path", "json-api")):
        if upstream and upstream["type"] == kind and key not in upstream:
            problems.add(f"upstream.{key}", f"required for type {kind!r}")
    for key in ("path", "filter", "next-page"):
        if upstream and key in upstream and upstream["type"] != "json-api":
            problems.add(f"upstream.{key}", "only for type 'json-api'")
    problems.raise_if_any("see docs/recipes.md for the recipe format")

    return Recipe(
        name=name, path=path, description=data["description"], homepage=data["homepage"],
        arches=arches, streams=data.get("streams", "none"), os=data.get("os", "_any"),
        format=fmt, compression=compression,
        reload_manager=data.get("reload-manager"),
        upstream=Upstream(**{k.replace("-", "_"): tuple(sorted(v.items())) if isinstance(v, dict) else v
                             for k, v in upstream.items()}) if upstream else None,
        arch_names=arch_names, sources=tuple(sources), upholds=upholds, files_dir=files_dir,
        shown=shown, replaces=tuple(data.get("replaces", ())),
        conflicts=tuple(sorted(data.get("conflicts", ()))),
        symlinks=tuple(Symlink(link, target, f'{shown}: symlinks."{link}"')
                       for link, target in data.get("symlinks", {}).items()),
        limits=from_table(data.get("limits", {})))


def _check_verification(raw: dict, where: str, key_path: Path | None, shown: str,
                        problems: Problems) -> None:
    """The checksum, signature and version-range keys of one source, taken together."""
    checksum = raw.get("checksum", "sha256")
    if checksum == "github-digest":
        for key in ("checksum-url", "signature-url", "signature-key"):
            if key in raw:
                problems.add(f"{where}.{key}", "not with checksum = \"github-digest\" "
                             "(the digest comes from GitHub's API)")
        if not raw["url"].startswith("https://github.com/") or "/releases/download/" not in raw["url"]:
            problems.add(f"{where}.checksum", "\"github-digest\" needs a url of the form "
                         "https://github.com/<owner>/<repo>/releases/download/<tag>/<asset>")
    elif checksum != "sha256" and "checksum-url" not in raw:
        problems.add(f"{where}.checksum", f"{checksum!r} is the algorithm of checksum-url, "
                     "which is missing")
    if "signature-url" in raw and "checksum-url" not in raw and checksum != "github-digest":
        problems.add(f"{where}.signature-url", "signs the checksum file: needs checksum-url")
    if ("signature-url" in raw) != ("signature-key" in raw):
        have, lacks = (("signature-url", "signature-key") if "signature-url" in raw
                       else ("signature-key", "signature-url"))
        problems.add(f"{where}.{lacks}", f"missing: {have} needs it")
    if key_path is not None and "signature-key" in raw and not key_path.is_file():
        problems.add(f"{where}.signature-key", f"{shown.removesuffix('.toml')}/{raw['signature-key']} "
                     "does not exist; put upstream's armored public key there")
    since, until = raw.get("since"), raw.get("until")
    if isinstance(since, str) and isinstance(until, str) and compare_versions(since, until) >= 0:
        problems.add(f"{where}.until", f"{until!r} is not after since = {since!r}: "
                     "the source would apply to no version")


def load_recipe(path: Path, shown: str | None = None) -> Recipe:
    """Load and validate `recipes/<name>.toml` (raises BakeryError naming the file as `shown`)."""
    shown = shown or str(path)
    data = read_toml(path, shown, "fix the syntax; see docs/recipes.md")
    files_dir = path.parent / path.stem / "files"
    return parse_recipe(path.stem, path, data, files_dir if files_dir.is_dir() else None, shown)


def load_recipes(directory: Path) -> tuple[dict[str, Recipe], list[BakeryError]]:
    """Every recipe of the directory that loads, plus the errors of those that do not:
    one broken recipe must not hide the others."""
    recipes, broken = load_recipes_named(directory)
    return recipes, list(broken.values())


def load_recipes_named(directory: Path) -> tuple[dict[str, Recipe], dict[str, BakeryError]]:
    """As load_recipes, with each error under the name of the recipe it withholds."""
    recipes: dict[str, Recipe] = {}
    broken: dict[str, BakeryError] = {}
    for path in sorted(directory.glob("*.toml")):
        try:
            recipes[path.stem] = load_recipe(path, f"{directory.name}/{path.name}")
        except BakeryError as e:
            broken[path.stem] = e
    return recipes, broken


# --- images -------------------------------------------------------------------------------

def render_url(template: str, recipe: Recipe, version: str, arch: str, url: str = "",
               source: SourceTemplate | None = None, checksum_url: str = "") -> str:
    """A URL template filled in; a source's own `arch-names` win over the recipe's."""
    names = {**recipe.arch_names, **dict(source.arch_names if source else ())}
    values = {"name": recipe.name, "arch": names.get(arch, ARCHES[arch].uname),
              "sysext_arch": arch, "url": url, "checksum_url": checksum_url,
              **version_vars(version)}
    return template.format(**values)


def applicable_sources(recipe: Recipe, version: str, arch: str) -> list[SourceTemplate]:
    """The recipe's sources one image has, in order (the lock pins them in this order)."""
    return [s for s in recipe.sources if arch in s.arches and s.applies_to(version)]


def source_url(recipe: Recipe, tpl: SourceTemplate, version: str, arch: str) -> str:
    """One source's download URL as the recipe renders it (a companion's own version wins)."""
    return render_url(tpl.url, recipe, tpl.version or version, arch, source=tpl)


def resolve_image(recipe: Recipe, version: str, arch: str,
                  pinned: list[dict[str, str]] | None, *, fmt: str | None = None,
                  compression: str | None = None) -> Image:
    """The Image for one recipe + version + arch. `pinned` is the lock's source list for this
    arch (url + sha256 per source, in the order of the sources that apply to this version and
    arch), or None when the lock only names the version."""
    templates = applicable_sources(recipe, version, arch)
    if pinned is not None and len(pinned) != len(templates):
        raise BakeryError(
            f"release/lock.toml: {recipe.name}.{version}.{arch}: pins {len(pinned)} sources, "
            f"{recipe.shown} has {len(templates)} for {arch} at version {version}",
            f"remove the {arch} entry to re-derive it from the recipe, or fix the list")
    sources = []
    for i, tpl in enumerate(templates):
        v = tpl.version or version
        url = source_url(recipe, tpl, version, arch)
        sha256 = None
        if pinned is not None:
            url = pinned[i].get("url", url)
            sha256 = pinned[i].get("sha256") or None
        checksum_url = (render_url(tpl.checksum_url, recipe, v, arch, url, tpl)
                        if tpl.checksum_url else None)
        sources.append(Source(
            url=url, sha256=sha256, checksum_url=checksum_url,
            kind=tpl.kind, install=tpl.install, allow_setuid=tpl.allow_setuid,
            origin=f"{recipe.shown}: sources[{recipe.sources.index(tpl)}]",
            checksum=tpl.checksum,
            signature_url=(render_url(tpl.signature_url, recipe, v, arch, url, tpl,
                                      checksum_url or "") if tpl.signature_url else None),
            signature_key=tpl.signature_key, limits=recipe.limits))
    fmt = fmt or recipe.format
    return Image(
        name=recipe.name, version=version, arch=arch, sources=tuple(sources),
        files_dir=recipe.files_dir, symlinks=recipe.symlinks, upholds=recipe.upholds,
        reload_manager=recipe.reload_manager,
        os_id=recipe.os, sysext_level=OS_PROFILES[recipe.os], fmt=fmt,
        compression=compression or (recipe.compression if fmt == recipe.format
                                    else COMPRESSIONS[fmt][0]),
        recipe_file=recipe.path, replaces=recipe.replaces, conflicts=recipe.conflicts)
