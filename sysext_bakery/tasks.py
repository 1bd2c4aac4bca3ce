"""The doit task factory: recipes + lock -> tasks. `dodo.py` only calls `doit_config` and
`generate`. What to build comes from `plan`, what the tasks do from `build.actions`.

Per image `<img>` = `<name>-<version>-<arch>`:
  fetch:<img>  downloads into the content-addressed cache; writes build/state/fetch/<img>.json
  stage:<img>  builds build/stage/<img>/; writes build/state/stage/<img>.json (digest of inputs)
  pack:<img>   packs build/images/<img>.raw, writes build/state/images/<img>.json (provenance)
               and sets the image's line in build/images/SHA256SUMS
Groups: build:<name>-<version>, build:<name>-<stream>, build:<name>, build; plus sums,
inspect, update and update:<name>; release, overlaps and plan are in command_tasks.

Up-to-date checks are stat calls, doit's saved values and mtime checks: a no-op run hashes
no download and no image.
"""
from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from doit.exceptions import TaskFailed
from doit.tools import config_changed

from sysext_bakery import output, report, schedule
from sysext_bakery.build import actions, formats, hostdirs, tidy
from sysext_bakery.command_tasks import overlaps_task, plan_task, release_task
from sysext_bakery.edge import edge
from sysext_bakery.errors import BakeryError
from sysext_bakery.model.image import Image
from sysext_bakery.model.version import stream_of
from sysext_bakery.plan import Plan, Problem, plan, unpinned_message
from sysext_bakery.recipe import lock
from sysext_bakery.recipe.load import Recipe, load_recipes_named
from sysext_bakery.settings import LOCK, ImagePaths, Settings, settings_from_env


def _fetch_current(image: Image, cache: str, locked: bool = False) -> Callable[..., bool]:
    """Up to date when the last fetch (doit's saved values: no file to read) matches the
    pinned URLs (and sha256, once pinned) and every cached file exists: a trust-on-first-use
    pin then needs no second fetch. A fetch whose sha256 the lock still lacks (it has not
    staged yet) runs again, so a fixed upstream or mirror is picked up. Locked
    (BAKERY_LOCKED=1), an unpinned source is never up to date, so the fetch action refuses it
    even when an earlier fetch left a record."""
    def check(task: Any, values: dict[str, Any]) -> bool:
        if locked and any(s.sha256 is None for s in image.sources):
            return False
        recorded = values.get("sources")
        if not isinstance(recorded, list) or len(recorded) != len(image.sources):
            return False
        if any(s.sha256 is None for s in image.sources):
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


# --- doit tasks ------------------------------------------------------------------------------

_FETCH, _STAGE, _PACK = (edge(actions.fetch_image), edge(actions.stage_image),
                         edge(actions.pack_image))
_INSPECT, _SUMS, _FAIL = edge(actions.print_images), edge(actions.write_sums), edge(actions.fail_with)
_CHECK = report.check


def doit_config(root: Path, argv: list[str] | None = None) -> dict[str, Any]:
    """doit's settings for the tree at `root`. A run that may write the tree first takes
    build/.lock (a second run on the tree is refused, before doit opens its database) and
    removes what killed runs left behind (build/tidy.py)."""
    output.setup_doit()
    schedule.install()   # `-n N`: the next image downloads while another packs
    state = root / "build" / "state"
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"bakery: error: {state}: cannot create doit's state directory: {e.strerror or e}\n"
              "  hint: run doit in a writable checkout", file=sys.stderr)
        raise SystemExit(3) from None   # doit's status for "error before tasks run"
    if tidy.needs_tree_lock(sys.argv[1:] if argv is None else argv):
        try:
            tidy.lock_tree(root / "build")
        except BakeryError as e:
            print(f"bakery: error: {e}", file=sys.stderr)
            raise SystemExit(3) from None
        tidy.clean_tree(root / "build")
        tidy.exit_on_signals()
        # BAKERY_CACHE may be shared with other trees: clean_cache spares live downloads
        tidy.clean_cache(Path(os.environ.get("BAKERY_CACHE") or root / "build" / "cache"))
    return {"backend": "sqlite3", "dep_file": str(state / "doit.sqlite3"),
            "default_tasks": ["build"], "verbosity": 1, "reporter": output.Reporter}


def generate(root: Path, argv: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """All tasks of the bakery for the project at `root`."""
    argv = sys.argv[1:] if argv is None else argv
    recipes, broken = load_recipes_named(root / "recipes")
    try:
        settings = settings_from_env(root)
        pins, refused = lock.load_checked(settings.lock_path, LOCK)
    except BakeryError as e:
        # Said once, here, where `doit list` shows it too; the tasks that need settings and
        # the lock fail pointing back at it. A broken lock or setting must not turn
        # `doit build:x` into doit's "Invalid parameter".
        print(f"bakery: error: {e}", file=sys.stderr)
        why = "not run: the configuration is broken (bakery: error above)"
        yield from broken_tasks(argv, why)
        yield release_task(root, broken=why)
        # the real tasks' docs and parameters (so `doit update --commit` still parses)
        for task in (overlaps_task(root), *update_tasks(root, (recipes, list(broken.values()), {})),
                     plan_task(root, None)):
            yield {**task, "actions": [(_FAIL, [why])]}
        return
    earlier = (*(Problem(n, e) for n, e in broken.items()), *(Problem(*r) for r in refused))
    the_plan = plan(recipes, pins, settings, earlier)
    if not report.runs_tasks(argv):   # a run names them at its end (report.Reporter)
        for warning in dict.fromkeys(the_plan.warnings.values()):
            print(f"bakery: {warning}", file=sys.stderr)
        for problem in the_plan.problems:
            print(f"bakery: problem: {problem}", file=sys.stderr)
    if pipeline_only(argv):
        # the nightly job's `doit update` and `doit plan` need neither the image tasks nor
        # the build groups: doit would build and check a thousand task objects for nothing
        yield from update_tasks(root, (recipes, list(broken.values()), pins))
        yield plan_task(root, the_plan)
        # not run, but it carries the problems: the run's end still notes them
        yield release_task(root, [str(p) for p in the_plan.problems])
        return
    yield from image_tasks(the_plan, settings, recipes)
    yield from build_tasks(the_plan, settings, recipes, argv)
    yield release_task(root, [str(p) for p in the_plan.problems])
    yield overlaps_task(root)
    yield from update_tasks(root, (recipes, list(broken.values()), pins))
    yield plan_task(root, the_plan)


def pipeline_only(argv: list[str]) -> bool:
    """Whether the command line runs only `update`, `update:<name>` and `plan` tasks."""
    names = report.selected_tasks(argv)
    return bool(names) and all(n in ("update", "plan") or n.startswith("update:")
                               for n in names)


def broken_tasks(argv: list[str], why: str) -> Iterator[dict[str, Any]]:
    """The tasks that need settings and the lock, each failing with `why`: the groups, and
    every fetch:/stage:/pack:/build: task the command line asks for."""
    for basename in ("fetch", "stage", "pack"):
        yield {"basename": basename, "name": None, "doc": f"{basename} (broken configuration)"}
    asked = {a for a in argv if re.fullmatch(r"(fetch|stage|pack|build):[^\s=]+", a)}
    for name in sorted(asked):
        group, _, sub = name.partition(":")
        if group == "build":
            yield {"basename": name, "actions": [(_FAIL, [why])], "doc": "broken configuration"}
        else:
            yield {"basename": group, "name": sub, "actions": [(_FAIL, [why])],
                   "doc": "broken configuration"}
    for basename, extra in (("build", {}), ("sums", {}), ("inspect", {"pos_arg": "names"})):
        yield {"basename": basename, "actions": [(_FAIL, [why])], "uptodate": [False],
               "doc": f"{basename} (broken configuration)", **extra}


def image_tasks(the_plan: Plan, settings: Settings, recipes: dict[str, Recipe]) -> Iterator[dict]:
    """fetch/stage/pack per image. Paths are plain strings and each task has at most one
    uptodate callable: with a thousand images, pathlib joins and doit's per-callable
    signature inspection are most of a no-op run."""
    for basename, doc in (("fetch", "download and verify an image's sources"),
                          ("stage", "build and validate an image's tree"),
                          ("pack", "pack an image into build/images/")):
        yield {"basename": basename, "name": None, "doc": doc}
    # one config_changed per recipe, shared by its stage tasks: the bakery's stage format,
    # the base tree validation checks against, and the recipe's files/
    base_tree = hostdirs.base_tree_signature()
    stage_changed = {name: [config_changed(f"stage format {formats.STAGE_FORMAT}\n"
                                           + (f"{base_tree}\n" if base_tree else "")
                                           + files_signature(r.files_dir))]
                     for name, r in recipes.items()}
    cache = str(settings.download_cache)
    for image in the_plan.images:
        recipe = recipes[image.name]
        paths = ImagePaths.of(settings, image.id)
        stream = stream_of(image.version, recipe.streams)   # recorded in the provenance
        yield {"basename": "fetch", "name": image.id,
               "actions": [(_FETCH, [image, settings, paths])],
               "targets": [paths.fetch_record],
               "uptodate": [_fetch_current(image, cache, settings.locked)],
               "doc": f"download {image.id}'s sources",
               # a stale pin (plan.stale_warning): every run that reaches the image says so
               "meta": {**schedule.network_meta(),
                        **({report.WARNINGS: [the_plan.warnings[image.id]]}
                           if image.id in the_plan.warnings else {})}}
        # The recipe file stands for everything the resolved image takes from it; URL and
        # sha256 changes arrive through the fetch record.
        yield {"basename": "stage", "name": image.id,
               "actions": [(_STAGE, [image, settings, paths])],
               "file_dep": [paths.fetch_record, str(recipe.path)],
               "targets": [paths.stage_record, paths.tree],
               "uptodate": stage_changed[image.name],
               "doc": f"stage {image.id}"}
        yield {"basename": "pack", "name": image.id,
               "actions": [(_PACK, [image, settings, paths, stream])],
               "file_dep": [paths.stage_record],
               "targets": [paths.image, paths.provenance],
               # replaces/conflicts go into the provenance record, not the image bytes
               "uptodate": [config_changed(f"{image.fmt}:{image.compression}:{stream}:"
                                           f"{','.join(image.replaces)}:{','.join(image.conflicts)}:"
                                           f"pack format {formats.PACK_FORMAT}")],
               "doc": f"pack build/images/{image.filename}"}
    yield {"basename": "inspect", "actions": [(_INSPECT, [settings])], "pos_arg": "names",
           "uptodate": [False], "verbosity": 2,
           "doc": "print images' extension-release and tree: doit inspect IMAGE-ID|FILE …"}
    yield {"basename": "sums", "actions": [(_SUMS, [settings])], "verbosity": 2,
           "uptodate": [False], "doc": "rewrite build/images/SHA256SUMS for the images present"}


def build_tasks(the_plan: Plan, settings: Settings, recipes: dict[str, Recipe],
                argv: list[str]) -> Iterator[dict]:
    """The build groups. A recipe with a problem keeps its exact-version groups (each is
    whole); its `build:<name>` and `build:<name>-<stream>` fail after building, since the
    withheld version might have been the newest; `build` fails over every problem."""
    withheld: dict[str, list[str]] = {}
    for problem in the_plan.problems:
        withheld.setdefault(problem.recipe, []).append(str(problem))
    for name, build in sorted(the_plan.builds.items()):
        deps = [f"build:{build.alias_of}"] if build.alias_of else [f"pack:{i}" for i in build.images]
        recipe = build.alias_of.rsplit("-", 1)[0] if build.alias_of else None
        problems = withheld.get(recipe, []) if recipe else []
        yield {"basename": f"build:{name}", "actions": [(_CHECK, [problems])] if problems else None,
               "task_dep": deps, "doc": build.doc, "meta": {report.META: problems}}
    unbuildable = dict(the_plan.unbuildable)
    for name, version in requested_unknown_builds(argv, the_plan, recipes):
        if any(p.recipe == name and version in p.versions for p in the_plan.problems):
            continue
        unbuildable[f"{name}-{version}"] = unpinned_message(
            name, version, stream=stream_of(version, recipes[name].streams) == version)
    for name, why in sorted(unbuildable.items()):
        yield {"basename": f"build:{name}", "actions": [(_FAIL, [why])],
               "doc": "not pinned yet"}
    # a withheld version asked for by name fails over its problem, not as "not pinned"
    for problem in the_plan.problems:
        for version in problem.versions:
            withheld.setdefault(f"{problem.recipe}-{version}", []).append(str(problem))
    for name, problems in sorted(withheld.items()):
        if name not in the_plan.builds and name not in unbuildable:
            yield {"basename": f"build:{name}", "actions": [(_CHECK, [problems])],
                   "doc": "withheld by a problem (`doit list` names it)", "meta": {report.META: problems}}
    every = [str(p) for p in the_plan.problems]
    # the check is build's own action: doit runs it after all of task_dep, so it comes last
    yield {"basename": "build", "actions": [(_CHECK, [every])] if every else None,
           "doc": "build every pinned image",
           "task_dep": [f"build:{n}" for n, b in sorted(the_plan.builds.items()) if not b.alias_of],
           "meta": {report.META: every}}


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


_UPDATE_PARAMS = [
    {"name": "commit", "long": "commit", "type": bool, "default": False,
     "help": "commit release/lock.toml (GitPython): one commit listing the bumps"},
    {"name": "branch", "long": "branch", "type": str, "default": "",
     "help": "with --commit: create this branch and commit there (for a pull request)"},
    {"name": "author", "long": "author", "type": str, "default": "",
     "help": "with --commit: 'Name <mail>' of the commit (default: sysext-bakery)"},
]


def update_tasks(root: Path, loaded: tuple[dict[str, Recipe], list[BakeryError],
                                           dict[str, list[lock.Pin]]]) -> Iterator[dict[str, Any]]:
    """`doit update` (every recipe in release/versions.toml) and `doit update:<name>`: own
    tasks, not a group, so `--commit` makes one commit for the whole run. They need the
    network (or BAKERY_MIRROR) and always run. `loaded` is what the graph was built from."""
    yield _update_task(root, "update", None, loaded,
                       "pin new upstream versions of every recipe in release/versions.toml "
                       "(--commit [--branch NAME] [--author 'Name <mail>'])")
    for name in sorted(loaded[0]):
        yield _update_task(root, f"update:{name}", [name], loaded,
                           f"pin new upstream versions of {name}")


def _update_task(root: Path, basename: str, names: list[str] | None, loaded: Any,
                 doc: str) -> dict[str, Any]:
    outcome: dict[str, Any] = {}

    def update(commit: bool, branch: str, author: str) -> None:
        from sysext_bakery.update import run as update_run
        if (branch or author) and not commit:
            raise BakeryError("--branch and --author only apply with --commit",
                              "add --commit, or leave them out")
        if commit:
            from sysext_bakery.update.commit import preflight
            preflight(root, author, branch)
        report = update_run.run(settings_from_env(root), names, loaded=loaded)
        outcome["report"] = report
        if commit:
            from sysext_bakery.update.commit import commit as commit_lock
            made = commit_lock(root, report, author, branch)
            print(f"committed {made.sha[:12]} on {made.branch}: {made.message.splitlines()[0]}"
                  if made else "nothing to commit")

    def partial() -> Any:
        # a last action of its own: the lock (and commit) of the recipes that worked stays
        report = outcome.get("report")
        if report is not None and report.failed:
            from sysext_bakery.update.run import partial_message
            return TaskFailed(f"error: {partial_message(report)}")
        return None

    return {"basename": basename, "doc": doc, "actions": [edge(update), partial],
            "params": _UPDATE_PARAMS, "uptodate": [False], "verbosity": 2}
