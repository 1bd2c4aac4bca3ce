"""The doit task factory: recipes + lock -> tasks. `dodo.py` only calls `doit_config` and
`generate`.

Per image `<img>` = `<name>-<version>-<arch>`:
  fetch:<img>  downloads into the content-addressed cache; writes build/state/fetch/<img>.json
  stage:<img>  builds build/stage/<img>/; writes build/state/stage/<img>.json (digest of inputs)
  pack:<img>   packs build/images/<img>.raw, writes build/state/images/<img>.json (provenance)
               and sets the image's line in build/images/SHA256SUMS
Groups: build:<name>-<version>, build:<name>-<stream>, build:<name>, build; plus sums,
inspect and release.

Up-to-date checks are stat calls, doit's saved values and mtime checks: a no-op run hashes
no download and no image.
"""
from __future__ import annotations

import functools
import json
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple

from doit.exceptions import TaskFailed
from doit.tools import config_changed

from sysext_bakery.recipe import lock
from sysext_bakery.build import sums
from sysext_bakery.model import naming
from sysext_bakery.model.arch import ARCHES
from sysext_bakery.errors import BakeryError
from sysext_bakery.files import file_digest, write_atomic
from sysext_bakery.model.image import COMPRESSIONS, Image
from sysext_bakery.recipe.schema import Recipe, load_recipes, resolve_image
from sysext_bakery.model.version import stream_of, version_key


LOCK = "release/lock.toml"   # relative to the project root; also how messages name it


@dataclass(frozen=True)
class Settings:
    """Everything a build reads from the environment, read once at the edge."""
    root: Path
    mirror: str | None = None
    cache: Path | None = None
    arches: tuple[str, ...] | None = None      # BAKERY_ARCH: restrict builds to these arches
    fmt: str | None = None                     # BAKERY_FORMAT overrides recipes' format
    compression: str | None = None             # BAKERY_COMPRESSION overrides recipes' compression

    @property
    def build(self) -> Path:
        return self.root / "build"

    @property
    def images(self) -> Path:
        return self.build / "images"

    @property
    def download_cache(self) -> Path:
        return self.cache or self.build / "cache"

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK


class ImagePaths(NamedTuple):
    """Where one image's files live (plain strings: building thousands of Paths per graph
    load costs more than the rest of a no-op run)."""
    fetch_record: str     # build/state/fetch/<img>.json: what was downloaded
    stage_record: str     # build/state/stage/<img>.json: digest of what shaped the tree
    tree: str             # build/stage/<img>/
    image: str            # build/images/<img>.raw
    provenance: str       # build/state/images/<img>.json

    @classmethod
    def of(cls, settings: Settings, image_id: str) -> "ImagePaths":
        build = str(settings.build)
        return cls(f"{build}/state/fetch/{image_id}.json", f"{build}/state/stage/{image_id}.json",
                   f"{build}/stage/{image_id}", f"{build}/images/{image_id}.raw",
                   f"{build}/state/images/{image_id}.json")


def settings_from_env(root: Path, env: Mapping[str, str] = os.environ) -> Settings:
    arches = tuple(a.strip() for a in env.get("BAKERY_ARCH", "").split(",") if a.strip()) or None
    for a in arches or ():
        if a not in ARCHES:
            raise BakeryError(f"BAKERY_ARCH: unknown arch {a!r}", f"use one of {', '.join(ARCHES)}")
    fmt = env.get("BAKERY_FORMAT") or None
    if fmt not in (None, "squashfs", "erofs"):
        raise BakeryError(f"BAKERY_FORMAT: unknown format {fmt!r}", "use squashfs or erofs")
    compression = env.get("BAKERY_COMPRESSION") or None
    allowed = COMPRESSIONS[fmt or "squashfs"]
    if compression is not None and compression not in allowed:
        raise BakeryError(f"BAKERY_COMPRESSION: {compression!r} is not available for {fmt or 'squashfs'}",
                          f"use one of {', '.join(allowed)}")
    return Settings(root=root, mirror=env.get("BAKERY_MIRROR") or None,
                    cache=Path(env["BAKERY_CACHE"]) if env.get("BAKERY_CACHE") else None,
                    arches=arches, fmt=fmt, compression=compression)


# --- the plan: pure, offline ----------------------------------------------------------------

@dataclass(frozen=True)
class Build:
    """A `build:<name>-<x>` group: the images it packs and what the doc line says."""
    images: tuple[str, ...]
    doc: str
    alias_of: str | None = None


@dataclass(frozen=True)
class Plan:
    images: tuple[Image, ...]
    builds: dict[str, Build]
    unbuildable: dict[str, str] = field(default_factory=dict)   # build name -> why it cannot run
    problems: tuple[BakeryError, ...] = ()


def plan(recipes: dict[str, Recipe], pins: dict[str, list[lock.Pin]], settings: Settings) -> Plan:
    images: list[Image] = []
    builds: dict[str, Build] = {}
    unbuildable: dict[str, str] = {}
    problems: list[BakeryError] = []
    for name in sorted(pins):
        if name not in recipes:
            problems.append(BakeryError(
                f"{LOCK}: pins {name!r}, but there is no loadable recipes/{name}.toml",
                "fix or add the recipe, or remove its versions from the lock"))
    for name, recipe in sorted(recipes.items()):
        clash = naming.clash(name, recipes)
        if clash and name.startswith(clash + "-"):   # the shorter name keeps building
            problems.append(BakeryError(
                f"{recipe.shown}: the name {name!r} starts with {clash + '-'!r}, so the "
                f"sysupdate pattern {naming.match_pattern(clash)} of recipes/{clash}.toml "
                f"would also match {name}'s images", naming.clash_hint(name, clash)))
            continue
        versions = sorted(pins.get(name, []), key=lambda p: version_key(p.version))
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
                problems.append(e)
                continue
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
    return Plan(tuple(images), builds, unbuildable, tuple(problems))


def unpinned_message(name: str, wanted: str | None, stream: bool = False) -> str:
    if stream:
        first, example = f"no {name} {wanted}.x is pinned", f"{wanted}.<rest of the version>"
    else:
        first, example = f"{name} {wanted or '(any version)'} is not pinned", wanted or "<version>"
    return (f"{first} in {LOCK}. "
            f"Pin it by adding a table [{name}.\"{example}\"] to the lock (URLs come from "
            f"recipes/{name}.toml, the sha256 is recorded on first fetch); `doit update` will "
            "pin new upstream versions once upstream tracking lands.")


# --- actions: the side-effect edge -------------------------------------------------------------

def _edge(fn: Callable[..., Any]) -> Callable[..., Any]:
    """doit action wrapper: a BakeryError becomes a clean task failure (no traceback).
    functools.wraps keeps fn's signature visible, so doit still passes task params by name."""
    @functools.wraps(fn)
    def action(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BakeryError as e:
            return TaskFailed(f"error: {e}")
    return action


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def fetch_image(image: Image, settings: Settings, paths: ImagePaths) -> dict[str, Any]:
    """Download every source of `image` (verified) and record what was fetched, in a file
    for the stage task and as doit values for the next up-to-date check."""
    from sysext_bakery.build.fetch import fetch   # imported lazily: `doit list` should not pay for requests

    settings.download_cache.mkdir(parents=True, exist_ok=True)
    fetched = []
    record = False
    for source in image.sources:
        got = fetch(source.url, source.sha256, settings.download_cache,
                    checksum_url=source.checksum_url, mirror=settings.mirror)
        if got.first_use:
            print(f"WARNING: trust on first use: {source.url} has no pinned sha256 and no upstream "
                  f"checksum; recorded sha256 {got.sha256} in {settings.lock_path}. Review it "
                  "(git diff) before you commit.", file=sys.stderr)
        record = record or source.sha256 is None
        fetched.append({"url": source.url, "sha256": got.sha256})
    if record:
        lock.record_sha256(settings.lock_path, image.name, image.version, image.arch, fetched)
    _write_json(Path(paths.fetch_record), {"sources": fetched})
    return {"sources": fetched}


def _fetch_current(image: Image, cache: str) -> Callable[..., bool]:
    """Up to date when the last fetch (doit's saved values: no file to read) matches the
    pinned URLs (and sha256, once pinned) and every cached file exists: a trust-on-first-use
    pin then needs no second fetch."""
    def check(task: Any, values: dict[str, Any]) -> bool:
        recorded = values.get("sources")
        if not isinstance(recorded, list) or len(recorded) != len(image.sources):
            return False
        return all(r.get("url") == s.url and (s.sha256 in (None, r.get("sha256")))
                   and os.path.isfile(f"{cache}/{r.get('sha256')}")
                   for s, r in zip(image.sources, recorded))
    return check


def files_signature(files_dir: Path | None) -> str:
    """One line per entry of a recipe's files/ (size, mtime, exec bit; link target), so the
    stage reruns on any edit, chmod or relinked symlink: doit's file_dep sees none of the
    last two, and fails on a symlink that only resolves inside the image."""
    if files_dir is None:
        return ""
    lines = []
    for path in sorted(files_dir.rglob("*")):
        st = path.lstat()
        rel = path.relative_to(files_dir)
        if stat.S_ISLNK(st.st_mode):
            lines.append(f"{rel} -> {os.readlink(path)}")
        elif stat.S_ISREG(st.st_mode):
            lines.append(f"{rel} {st.st_size} {st.st_mtime_ns} {'x' if st.st_mode & 0o111 else '-'}")
    return "\n".join(lines)


def files_digest(files_dir: Path | None) -> dict[str, str]:
    """Content of files/ as recorded in the stage record: sha256 and exec bit per file, the
    target per symlink."""
    digest = {}
    for path in sorted(files_dir.rglob("*")) if files_dir else ():
        rel = str(path.relative_to(files_dir))
        if path.is_symlink():
            digest[rel] = f"-> {os.readlink(path)}"
        elif path.is_file():
            digest[rel] = f"{file_digest(path)} {'x' if path.stat().st_mode & 0o111 else '-'}"
    return digest


def stage_config(image: Image) -> dict[str, Any]:
    """What shapes the staged tree besides the downloads' bytes and the static files. It goes
    into the stage record, pack's only dependency, so a tree that changed is repacked."""
    return {"name": image.name, "version": image.version, "arch": image.arch,
            "sources": [{"url": s.url, "kind": s.kind, "allow_setuid": s.allow_setuid,
                         "install": [[i.pattern, i.dest, i.mode] for i in s.install]}
                        for s in image.sources],
            "files": str(image.files_dir) if image.files_dir else None,
            "upholds": image.upholds, "reload_manager": image.reload_manager,
            "os": [image.os_id, image.sysext_level]}


def stage_image_task(image: Image, settings: Settings, paths: ImagePaths) -> None:
    """Stage and validate the image tree, then record a digest of everything that shaped it."""
    from sysext_bakery.build.stage import stage_image

    fetched = _read_json(Path(paths.fetch_record))["sources"]
    downloads = [settings.download_cache / s["sha256"] for s in fetched]
    stage_image(image, downloads, Path(paths.tree), unpacked=settings.build / "stage" / ".unpacked")
    _write_json(Path(paths.stage_record), {"config": stage_config(image), "sources": fetched,
                                           "files": files_digest(image.files_dir)})


def pack_image_task(image: Image, settings: Settings, paths: ImagePaths, stream: str | None) -> None:
    """Pack the staged tree, check it by reading it back, record provenance and SHA256SUMS."""
    from sysext_bakery.build.pack import pack
    from sysext_bakery.build.provenance import git_revision

    out = Path(paths.image)
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = pack(Path(paths.tree), out, image.fmt, image.compression)
    staged = _read_json(Path(paths.stage_record))
    st = out.stat()
    _write_json(Path(paths.provenance), {
        "name": image.name, "version": image.version, "arch": image.arch, "stream": stream,
        "file": out.name, "sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
        "format": image.fmt, "compression": image.compression, "sources": staged["sources"],
        "revision": git_revision(settings.root),
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    sums.update(out.parent, {out.name: digest})


def write_sums(settings: Settings) -> None:
    """Rewrite build/images/SHA256SUMS for every image present, hashing only images whose
    provenance record does not match their size and mtime (replaced by hand, or a crash
    between placing the image and writing its record)."""
    settings.images.mkdir(parents=True, exist_ok=True)
    entries = {}
    for image in sorted(settings.images.glob("*.raw")):
        record = _read_json(Path(ImagePaths.of(settings, image.stem).provenance)) or {}
        st = image.stat()
        same = (record.get("file"), record.get("size"), record.get("mtime_ns")) == \
            (image.name, st.st_size, st.st_mtime_ns)
        entries[image.name] = record["sha256"] if same else file_digest(image)
    changed = write_atomic(settings.images / sums.NAME, sums.render(entries))
    print(f"{settings.images / sums.NAME}: {len(entries)} images, {'updated' if changed else 'unchanged'}")


def print_images(settings: Settings, names: list[str]) -> None:
    """`doit inspect docker-24.0.9-x86-64 …`: an image id (from build/images) or a file."""
    from sysext_bakery.build.readback import format_image

    if not names:
        raise BakeryError("doit inspect: name an image", "e.g. doit inspect docker-24.0.9-x86-64")
    for name in names:
        path = Path(name) if name.endswith(".raw") else settings.images / f"{name}.raw"
        if not path.exists():
            raise BakeryError(f"{path}: no such image", f"build it first: doit pack:{path.stem}")
        print(format_image(path))


def fail_with(message: str) -> None:
    raise BakeryError(message)


# --- doit tasks ------------------------------------------------------------------------------

_FETCH, _STAGE, _PACK = _edge(fetch_image), _edge(stage_image_task), _edge(pack_image_task)
_INSPECT, _SUMS, _FAIL = _edge(print_images), _edge(write_sums), _edge(fail_with)


def doit_config(root: Path) -> dict[str, Any]:
    state = root / "build" / "state"
    state.mkdir(parents=True, exist_ok=True)
    return {"backend": "sqlite3", "dep_file": str(state / "doit.sqlite3"),
            "default_tasks": ["build"], "verbosity": 1}


def generate(root: Path, argv: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """All tasks of the bakery for the project at `root`."""
    try:
        settings = settings_from_env(root)
        recipes, errors = load_recipes(root / "recipes")
        pins = lock.load(settings.lock_path, LOCK)
    except BakeryError as e:
        print(f"bakery: {e}", file=sys.stderr)
        yield {"basename": "build", "doc": "build every pinned image (broken configuration)",
               "actions": [(_FAIL, [str(e)])]}
        return
    the_plan = plan(recipes, pins, settings)
    for problem in (*errors, *the_plan.problems):
        print(f"bakery: skipped: {problem}", file=sys.stderr)
    yield from image_tasks(the_plan, settings, recipes)
    yield from build_tasks(the_plan, settings, recipes, sys.argv[1:] if argv is None else argv)
    yield release_task(root)


def image_tasks(the_plan: Plan, settings: Settings, recipes: dict[str, Recipe]) -> Iterator[dict]:
    """fetch/stage/pack per image. Paths are plain strings and each task has at most one
    uptodate callable: with a thousand images, pathlib joins and doit's per-callable
    signature inspection are most of a no-op run."""
    for basename, doc in (("fetch", "download and verify an image's sources"),
                          ("stage", "build and validate an image's tree"),
                          ("pack", "pack an image into build/images/")):
        yield {"basename": basename, "name": None, "doc": doc}
    # one config_changed per stage task of a recipe with files/, none for the others
    files_changed = {name: [config_changed(files_signature(r.files_dir))] if r.files_dir else []
                     for name, r in recipes.items()}
    cache = str(settings.download_cache)
    for image in the_plan.images:
        recipe = recipes[image.name]
        paths = ImagePaths.of(settings, image.id)
        stream = stream_of(image.version, recipe.streams)   # recorded in the provenance
        yield {"basename": "fetch", "name": image.id,
               "actions": [(_FETCH, [image, settings, paths])],
               "targets": [paths.fetch_record],
               "uptodate": [_fetch_current(image, cache)],
               "doc": f"download {image.id}'s sources"}
        # The recipe file stands for everything the resolved image takes from it; URL and
        # sha256 changes arrive through the fetch record.
        yield {"basename": "stage", "name": image.id,
               "actions": [(_STAGE, [image, settings, paths])],
               "file_dep": [paths.fetch_record, str(recipe.path)],
               "targets": [paths.stage_record, paths.tree],
               "uptodate": files_changed[image.name],
               "doc": f"stage {image.id}"}
        yield {"basename": "pack", "name": image.id,
               "actions": [(_PACK, [image, settings, paths, stream])],
               "file_dep": [paths.stage_record],
               "targets": [paths.image, paths.provenance],
               "uptodate": [config_changed(f"{image.fmt}:{image.compression}:{stream}")],
               "doc": f"pack build/images/{image.filename}"}
    yield {"basename": "inspect", "actions": [(_INSPECT, [settings])], "pos_arg": "names",
           "uptodate": [False], "verbosity": 2,
           "doc": "print images' extension-release and tree: doit inspect IMAGE-ID|FILE …"}
    yield {"basename": "sums", "actions": [(_SUMS, [settings])], "verbosity": 2,
           "uptodate": [False], "doc": "rewrite build/images/SHA256SUMS for the images present"}


def build_tasks(the_plan: Plan, settings: Settings, recipes: dict[str, Recipe],
                argv: list[str]) -> Iterator[dict]:
    for name, build in sorted(the_plan.builds.items()):
        deps = [f"build:{build.alias_of}"] if build.alias_of else [f"pack:{i}" for i in build.images]
        yield {"basename": f"build:{name}", "actions": None, "task_dep": deps, "doc": build.doc}
    unbuildable = dict(the_plan.unbuildable)
    for name, version in requested_unknown_builds(argv, the_plan, recipes):
        unbuildable[f"{name}-{version}"] = unpinned_message(
            name, version, stream=stream_of(version, recipes[name].streams) == version)
    for name, why in sorted(unbuildable.items()):
        yield {"basename": f"build:{name}", "actions": [(_FAIL, [why])],
               "doc": "not pinned yet"}
    yield {"basename": "build", "actions": None, "doc": "build every pinned image",
           "task_dep": [f"build:{n}" for n, b in sorted(the_plan.builds.items()) if not b.alias_of]}


def requested_unknown_builds(argv: list[str], the_plan: Plan,
                             recipes: dict[str, Recipe]) -> list[tuple[str, str]]:
    """(recipe, version-or-stream) of each `build:<recipe>-<x>` on the command line that the
    plan lacks, so asking for an unpinned version fails with a message that says how to pin
    it instead of doit's generic "not a task"."""
    wanted = []
    for arg in argv:
        m = re.fullmatch(r"build:(.+)", arg)
        if not m or m.group(1) in the_plan.builds:
            continue
        for name in sorted(recipes, key=len, reverse=True):
            if m.group(1).startswith(name + "-"):
                wanted.append((name, m.group(1)[len(name) + 1:]))
                break
    return wanted


def release_task(root: Path) -> dict[str, Any]:
    """`doit release`: publishes whatever is built; always runs (publishing is idempotent
    and says when there is nothing to do)."""
    def release(dest: str, base_url: str, github: bool, repo: str, allow_unsigned: bool) -> None:
        from sysext_bakery.publish.directory import run_release
        run_release(root, dest, base_url, github, repo, allow_unsigned)

    return {
        "basename": "release",
        "doc": "publish built images with SHA256SUMS(.gpg), sysupdate transfers, Butane "
               "snippets and index.json (--dest DIR, --base-url URL, --github)",
        "actions": [_edge(release)],
        "params": [
            {"name": "dest", "long": "dest", "type": str, "default": "build/release",
             "help": "directory to publish into (default build/release)"},
            {"name": "base_url", "long": "base-url", "type": str, "default": "",
             "help": "public URL of that directory (default: base_url of release/release.toml)"},
            {"name": "github", "long": "github", "type": bool, "default": False,
             "help": "also publish to GitHub Releases (token from GITHUB_TOKEN)"},
            {"name": "repo", "long": "repo", "type": str, "default": "",
             "help": "owner/name for --github (default: github.repo of release/release.toml)"},
            {"name": "allow_unsigned", "long": "allow-unsigned", "type": bool, "default": False,
             "help": "publish into a signed directory without a signing key (it becomes unsigned)"},
        ],
        "uptodate": [False],
        "verbosity": 2,
    }
