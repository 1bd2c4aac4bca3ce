"""Recipes: the one schema, loading TOML into frozen values, resolving images.

`SCHEMA` is the single description of the recipe format. The loader walks it to validate a
recipe (so every error names the file and the key), and `docs/recipes.md` is rendered from
it (`python -m sysext_bakery.recipe --docs`), so the reference cannot drift from the parser.
"""
from __future__ import annotations

import re
import string
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from .arch import ARCHES
from .errors import BakeryError
from .upstream.json_api import path_problem
from .version import version_problem, version_vars
from .image import ARCHIVE_KINDS, COMPRESSIONS, Image, Install, Source, archive_kind

OS_PROFILES = {"_any": None, "flatcar": "1.0"}   # ID= -> SYSEXT_LEVEL=
UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path", ".mount", ".target")
URL_PLACEHOLDERS = ("name", "version", "version_bare", "version_major", "version_minor",
                    "version_patch", "arch", "sysext_arch")
UPSTREAM_TYPES = ("github-releases", "github-tags", "gitlab-tags", "html-index", "json-api",
                  "kubernetes-schedule")
NAME_RE = re.compile(r"^[a-z0-9]+(?:[-_][a-z0-9]+)*$")


# --- the schema -------------------------------------------------------------------------

Check = Callable[[Any], "str | None"]   # returns what is wrong, or None


@dataclass(frozen=True)
class Key:
    name: str
    type: str            # "string" | "boolean" | "string list" | "table" | "array of tables" | "map"
    doc: str
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    check: Check | None = None
    keys: tuple["Key", ...] = ()        # for "table" and "array of tables"
    values: str = ""                    # for "map": "string" | "string list" | "install target"
    example: str = ""


def _https(value: str) -> str | None:
    return None if value.startswith("https://") else "must be an https:// URL"


def _template(extra: tuple[str, ...] = ()) -> Check:
    allowed = URL_PLACEHOLDERS + extra

    def check(value: str) -> str | None:
        try:
            names = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
        except ValueError as e:
            return f"bad template {value!r}: {e}"
        unknown = [n for n in names if n not in allowed]
        if unknown:
            return (f"unknown placeholder {{{unknown[0]}}} in {value!r}; "
                    f"known: {', '.join('{' + a + '}' for a in allowed)}")
        return None
    return check


def _url_template(value: str) -> str | None:
    return _template()(value) or _https(value)


def _regex_one_group(value: str) -> str | None:
    try:
        groups = re.compile(value).groups
    except re.error as e:
        return f"bad regular expression {value!r}: {e}"
    return None if groups == 1 else f"pattern {value!r} must have exactly one (group) capturing the version"


def _unit_name(value: str) -> str | None:
    if "/" in value or not value.endswith(UNIT_SUFFIXES):
        return f"{value!r} is not a unit name (expected a name ending in {', '.join(UNIT_SUFFIXES)})"
    return None


def _octal_mode(value: str) -> str | None:
    return None if re.fullmatch(r"0?[0-7]{3,4}", value) else f"mode {value!r} is not an octal mode like \"0755\""


def install_target_problem(dest: str) -> str | None:
    """What is wrong with an install destination, or None. Shared with the files/ check."""
    p = PurePosixPath(dest)
    if not p.is_absolute() or ".." in p.parts:
        return f"destination {dest} must be an absolute path without '..'"
    if p.parts[1:2] not in (("usr",), ("opt",)) or len(p.parts) < 3:
        return f"destination {dest} is outside /usr and /opt"
    if len(p.parts) == 3 and not dest.endswith("/"):
        return (f"destination {dest} would replace the host's whole /{p.parts[1]}/{p.parts[2]}; "
                f"end it with '/' to install into it")
    if p.parts[1:3] == ("usr", "sbin"):
        return (f"destination {dest} is under /usr/sbin, which is a symlink to bin on Flatcar; "
                "install into /usr/bin instead")
    if str(p) == "/usr/lib/os-release" or p.parts[1:4] == ("usr", "lib", "extension-release.d"):
        return f"destination {dest} is written by the bakery itself"
    return None


SOURCE_KEYS = (
    Key("url", "string", "Download URL template (https). Placeholders: "
        + ", ".join("`{" + p + "}`" for p in URL_PLACEHOLDERS) + ".", required=True,
        check=_url_template,
        example='"https://download.docker.com/linux/static/stable/{arch}/docker-{version}.tgz"'),
    Key("checksum-url", "string", "Where upstream publishes the sha256 of `url` (a bare digest or "
        "`sha256sum` lines); also takes `{url}`. Without it, the first fetch records the sha256 "
        "in the lock (trust on first use).", check=_template(("url",)),
        example='"{url}.sha256sum"'),
    Key("type", "string", "Archive type; inferred from the URL's file name when absent "
        "(`file` = a single plain file such as a static binary).", choices=ARCHIVE_KINDS),
    Key("version", "string", "A companion component's own version, used as `{version}` (and the "
        "`{version_*}` helpers) in this source's URLs, e.g. the runc shipped with containerd.",
        check=version_problem, example='"1.2.5"'),
    Key("arches", "string list", "Only fetch this source for these arches (default: all).",
        choices=tuple(ARCHES)),
    Key("install", "map", "Install map: path or glob inside the source -> destination under "
        "`/usr` or `/opt`. `*` matches within one path segment, `**` any depth; a destination "
        "ending in `/` is a directory (files land under their own name; with `**` the path from "
        "the `**` on is kept), "
        "otherwise the exact file name. A value may be a table `{ to = \"/usr/bin/\", mode = "
        "\"0755\" }`. Every pattern must match something.", required=True,
        values="install target", example='{ "docker/*" = "/usr/bin/" }'),
    Key("allow-setuid", "boolean", "Accept set-uid/set-gid files from this source.", default=False),
)

SCHEMA = (
    Key("description", "string", "One line saying what the extension provides.", required=True),
    Key("homepage", "string", "Upstream project or install documentation.", required=True,
        check=_https),
    Key("arches", "string list", "Architectures to build, in systemd's spelling.",
        required=True, choices=tuple(ARCHES), example='["x86-64", "arm64"]'),
    Key("streams", "string", "How versions group into streams for `build:<name>-<stream>` and "
        "stream sysupdate configs: `major` (docker 24.0.9 -> `docker-24`), `minor` "
        "(kubernetes v1.32.2 -> `kubernetes-v1.32`) or `none`.", default="none",
        choices=("major", "minor", "none")),
    Key("os", "string", "OS profile for extension-release: `_any` (ID=_any: any OS) or "
        "`flatcar` (ID=flatcar, SYSEXT_LEVEL=1.0).", default="_any", choices=tuple(OS_PROFILES)),
    Key("format", "string", "Image file system.", default="squashfs", choices=("squashfs", "erofs")),
    Key("compression", "string", "Compressor; the first is the default: "
        + "; ".join(f"{fmt}: {', '.join(c)}" for fmt, c in COMPRESSIONS.items())
        + ". `BAKERY_COMPRESSION` overrides it for one build."),
    Key("reload-manager", "boolean", "Set EXTENSION_RELOAD_MANAGER=1 so systemd reloads units "
        "on merge. Default: true when the image ships units."),
    Key("upstream", "table", "How upstream releases are discovered (upstream tracking; see "
        "Upstream tracking above).", keys=(
        Key("type", "string", "Discovery method.", required=True, choices=UPSTREAM_TYPES),
        Key("repo", "string", "`owner/name` for github-* types, `group/project` for gitlab-tags."),
        Key("url", "string", "Index page (html-index), JSON endpoint (json-api) or schedule "
            "(kubernetes-schedule; default: the Kubernetes website's `schedule.yaml`).",
            check=_https),
        Key("pattern", "string", "Regular expression with one group capturing the version; a "
            "tag it does not match is not a release. Without it a tag's leading `v` is "
            "stripped. Required for html-index, where every match in the page counts.",
            check=_regex_one_group, example=r"'docker-(\d+\.\d+\.\d+)\.tgz'"),
        Key("prefix", "string", "Put in front of every discovered version "
            "(kubernetes: `v` + `1.32.2`).", example='"v"'),
        Key("prereleases", "boolean", "Also take GitHub releases marked pre-release "
            "(github-releases; elsewhere `pattern` or `filter` decide).", default=False),
        Key("path", "string", "json-api: where the tags are: field names joined by `.`, `[*]` "
            "for every element of a list, `[N]` for one.", check=path_problem,
            example='"[*].version"'),
        Key("filter", "map", "json-api: keep only items (the objects holding the path's last "
            "field) whose fields equal these values; a dotted key looks into nested objects.",
            values="scalar", example='{ is_prerelease = false, license_class = "oss" }'),
        Key("next-page", "map", "json-api: query parameter -> field of a page's last item; the "
            "next page is asked with it until a page selects nothing.", values="string",
            example='{ after = "timestamp_created" }'),
    )),
    Key("arch-names", "map", "Our arch -> upstream spelling, available as `{arch}` in URLs "
        "(default: the `uname -m` spelling: x86_64, aarch64).", values="string",
        example='{ x86-64 = "amd64", arm64 = "arm64" }'),
    Key("sources", "array of tables", "What to download for each image, in order.",
        keys=SOURCE_KEYS),
    Key("units", "table", "Enabling units without /etc symlinks.", keys=(
        Key("upholds", "map", "Target or unit -> units it keeps running (`Upholds=` drop-ins "
            "`usr/lib/systemd/system/<target>.d/10-<name>-<unit>.conf`).", values="string list",
            check=_unit_name, example='{ "sockets.target" = ["docker.socket"] }'),
    )),
)


# --- loading ----------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceTemplate:
    url: str
    checksum_url: str | None
    kind: str
    version: str | None
    arches: tuple[str, ...]
    install: tuple[Install, ...]
    allow_setuid: bool


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
    shown: str = ""                 # how messages name the file: recipes/<name>.toml


class _Problems:
    """Collects every problem of one file so the user fixes them in one go."""

    def __init__(self, where: str):
        self.where = where
        self.items: list[str] = []

    def add(self, key: str, what: str) -> None:
        self.items.append(f"{self.where}: {key}: {what}" if key else f"{self.where}: {what}")

    def raise_if_any(self, hint: str) -> None:
        if self.items:
            raise BakeryError("\n".join(self.items), hint)


_PY_TYPES = {"string": str, "boolean": bool, "string list": list, "table": dict,
             "array of tables": list, "map": dict}


def _check_value(key: Key, value: Any, path: str, problems: _Problems) -> None:
    if not isinstance(value, _PY_TYPES[key.type]):
        problems.add(path, f"expected a {key.type}, got {type(value).__name__} {value!r}")
        return
    if key.type == "string list":
        if not all(isinstance(v, str) for v in value):
            problems.add(path, f"expected a list of strings, got {value!r}")
            return
        if key.required and not value:
            problems.add(path, "must not be empty")
        for v in value:
            if key.choices and v not in key.choices:
                problems.add(path, f"{v!r} is not one of {', '.join(key.choices)}")
        if len(set(value)) != len(value):
            problems.add(path, f"duplicate entries in {value!r}")
        return
    if key.type == "table":
        _check_table(key.keys, value, path, problems)
        return
    if key.type == "array of tables":
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                problems.add(f"{path}[{i}]", "expected a table")
            else:
                _check_table(key.keys, item, f"{path}[{i}]", problems)
        return
    if key.type == "map":
        for k, v in value.items():
            _check_map_value(key.values, v, f"{path}.{k}" if key.values != "install target" else path,
                             k, problems)
            if key.check:   # a map's check applies to its keys and string-list items
                for item in (k, *(v if isinstance(v, list) else ())):
                    if what := key.check(item):
                        problems.add(path, what)
        return
    if key.choices and value not in key.choices:
        problems.add(path, f"{value!r} is not one of {', '.join(key.choices)}")
    elif key.check and (what := key.check(value)):
        problems.add(path, what)


def _check_map_value(kind: str, value: Any, path: str, map_key: str, problems: _Problems) -> None:
    if kind == "string":
        if not isinstance(value, str):
            problems.add(path, f"expected a string, got {value!r}")
    elif kind == "scalar":
        if not isinstance(value, (str, bool, int)):
            problems.add(path, f"expected a string, boolean or integer, got {value!r}")
    elif kind == "string list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.add(path, f"expected a list of strings, got {value!r}")
    elif kind == "install target":
        dest, mode = value, None
        if isinstance(value, dict):
            extra = set(value) - {"to", "mode"}
            if extra:
                problems.add(path, f"{map_key!r}: unknown key {sorted(extra)[0]!r} (known: to, mode)")
            dest, mode = value.get("to"), value.get("mode")
            if mode is not None and (not isinstance(mode, str) or _octal_mode(mode)):
                problems.add(path, f"{map_key!r}: mode {mode!r} is not an octal string like \"0755\"")
        if not isinstance(dest, str):
            problems.add(path, f"{map_key!r}: expected a destination path, got {dest!r}")
        elif what := install_target_problem(dest):
            problems.add(path, what)


def _check_table(keys: tuple[Key, ...], data: dict, path: str, problems: _Problems) -> None:
    known = {k.name: k for k in keys}
    prefix = f"{path}." if path else ""
    for name, value in data.items():
        if name not in known:
            close = [k for k in known if _similar(k, name)]
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
            problems.add(f"{prefix}{name}", f"unknown key{hint}")
        else:
            _check_value(known[name], value, f"{prefix}{name}", problems)
    for key in keys:
        if key.required and key.name not in data:
            problems.add(f"{prefix}{key.name}", "missing (required)")


def _similar(a: str, b: str) -> bool:
    a, b = a.replace("_", "-"), b.replace("_", "-")
    return a == b or (len(a) > 3 and (a in b or b in a)) or sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b)) <= 2


def parse_recipe(name: str, path: Path, data: dict, files_dir: Path | None,
                 shown: str | None = None) -> Recipe:
    """Validate raw TOML data against SCHEMA and build a Recipe (raises BakeryError).
    `shown` is how messages name the file (`recipes/<name>.toml`)."""
    shown = shown or str(path)
    problems = _Problems(shown)
    if not NAME_RE.match(name):
        problems.add("", f"recipe name {name!r} must be lower-case letters and digits, words "
                         "joined by single '-' or '_'")
    _check_table(SCHEMA, data, "", problems)
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
            dest, mode = (target["to"], target.get("mode")) if isinstance(target, dict) else (target, None)
            if pattern.startswith("/") or ".." in pattern.split("/"):
                problems.add(f"sources[{i}].install", f"pattern {pattern!r} must be relative, without '..'")
            installs.append(Install(pattern, dest, int(mode, 8) if mode else None))
        if not installs:
            problems.add(f"sources[{i}].install", "must install at least one path")
        sources.append(SourceTemplate(
            url=raw["url"], checksum_url=raw.get("checksum-url"), kind=kind,
            version=raw.get("version"), arches=tuple(raw.get("arches", arches)),
            install=tuple(installs), allow_setuid=raw.get("allow-setuid", False)))
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
        shown=shown)


def load_recipe(path: Path, shown: str | None = None) -> Recipe:
    """Load and validate `recipes/<name>.toml` (raises BakeryError naming the file as `shown`)."""
    shown = shown or str(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise BakeryError(f"{shown}: not valid TOML: {e}", "fix the syntax; see docs/recipes.md") from None
    except OSError as e:
        raise BakeryError(f"{shown}: cannot read: {e.strerror}") from None
    files_dir = path.parent / path.stem / "files"
    return parse_recipe(path.stem, path, data, files_dir if files_dir.is_dir() else None, shown)


def load_recipes(directory: Path) -> tuple[dict[str, Recipe], list[BakeryError]]:
    """Every recipe of the directory that loads, plus the errors of those that do not:
    one broken recipe must not hide the others."""
    recipes: dict[str, Recipe] = {}
    errors: list[BakeryError] = []
    for path in sorted(directory.glob("*.toml")):
        try:
            recipes[path.stem] = load_recipe(path, f"{directory.name}/{path.name}")
        except BakeryError as e:
            errors.append(e)
    return recipes, errors


# --- images -------------------------------------------------------------------------------

def render_url(template: str, recipe: Recipe, version: str, arch: str, url: str = "") -> str:
    values = {"name": recipe.name, "arch": recipe.arch_names.get(arch, ARCHES[arch].uname),
              "sysext_arch": arch, "url": url, **version_vars(version)}
    return template.format(**values)


def resolve_image(recipe: Recipe, version: str, arch: str,
                  pinned: list[dict[str, str]] | None, *, fmt: str | None = None,
                  compression: str | None = None) -> Image:
    """The Image for one recipe + version + arch. `pinned` is the lock's source list for this
    arch (url + sha256 per source), or None when the lock only names the version."""
    templates = [s for s in recipe.sources if arch in s.arches]
    if pinned is not None and len(pinned) != len(templates):
        raise BakeryError(
            f"release/lock.toml: {recipe.name}.{version}.{arch}: pins {len(pinned)} sources, "
            f"{recipe.shown} has {len(templates)} for {arch}",
            f"remove the {arch} entry to re-derive it from the recipe, or fix the list")
    sources = []
    for i, tpl in enumerate(templates):
        v = tpl.version or version
        url = render_url(tpl.url, recipe, v, arch)
        sha256 = None
        if pinned is not None:
            url = pinned[i].get("url", url)
            sha256 = pinned[i].get("sha256") or None
        sources.append(Source(
            url=url, sha256=sha256,
            checksum_url=render_url(tpl.checksum_url, recipe, v, arch, url) if tpl.checksum_url else None,
            kind=tpl.kind, install=tpl.install, allow_setuid=tpl.allow_setuid,
            origin=f"{recipe.shown}: sources[{recipe.sources.index(tpl)}]"))
    fmt = fmt or recipe.format
    return Image(
        name=recipe.name, version=version, arch=arch, sources=tuple(sources),
        files_dir=recipe.files_dir, upholds=recipe.upholds, reload_manager=recipe.reload_manager,
        os_id=recipe.os, sysext_level=OS_PROFILES[recipe.os], fmt=fmt,
        compression=compression or (recipe.compression if fmt == recipe.format
                                    else COMPRESSIONS[fmt][0]),
        recipe_file=recipe.path)


# --- the reference, rendered from SCHEMA ----------------------------------------------------

def reference_markdown() -> str:
    """The key tables of docs/recipes.md, generated from SCHEMA."""
    out: list[str] = []

    def table(keys: tuple[Key, ...], title: str) -> None:
        out.append(f"### {title}\n")
        out.append("| key | type | required | default | meaning |")
        out.append("| --- | --- | --- | --- | --- |")
        for k in keys:
            meaning = k.doc
            if k.choices:
                meaning += " One of: " + ", ".join(f"`{c}`" for c in k.choices) + "."
            if k.example:
                meaning += f" Example: `{k.name} = {k.example}`."
            default = "" if k.default is None else f"`{str(k.default).lower() if isinstance(k.default, bool) else k.default}`"
            typ = k.type + (f" of {k.values}" if k.values else "")
            out.append(f"| `{k.name}` | {typ} | {'yes' if k.required else ''} | {default} | {meaning} |")
        out.append("")
        for k in keys:
            if k.keys:
                table(k.keys, f"`[{k.name}]`" if k.type == "table" else f"`[[{k.name}]]`")

    table(SCHEMA, "Top-level keys")
    return "\n".join(out)


START, END = "<!-- reference:start (generated from SCHEMA) -->\n", "<!-- reference:end -->"


def update_docs(path: Path) -> None:
    """Replace the generated part of the recipe reference."""
    text = path.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    path.write_text(f"{head}{START}{reference_markdown()}{END}{tail}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--docs"] and len(sys.argv) == 3:
        update_docs(Path(sys.argv[2]))
    else:
        print("usage: python -m sysext_bakery.recipe --docs docs/recipes.md", file=sys.stderr)
        sys.exit(2)
