"""The doit tasks that are commands rather than the image graph: `release`, `overlaps` and
`plan`. Each always runs, takes its options from the command line and imports what it
needs only when it runs (the graph loads without them: test_tasks)."""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from doit.exceptions import TaskFailed

from sysext_bakery import report
from sysext_bakery.build import actions
from sysext_bakery.edge import edge
from sysext_bakery.errors import BakeryError
from sysext_bakery.plan import Plan
from sysext_bakery.recipe.load import load_recipes
from sysext_bakery.settings import settings_from_env

_FAIL = edge(actions.fail_with)


def release_task(root: Path, problems: Sequence[str] = (), broken: str | None = None) -> dict[str, Any]:
    """`doit release`: publishes whatever is built; always runs (publishing is idempotent
    and says when there is nothing to do). With a problem in the plan it publishes nothing:
    the catalogue it would publish lacks the withheld images, and the scheduled job
    publishes into a fresh directory, so hosts would lose them (docs/release.md).
    `broken`: fail with that instead (the task keeps its parameters, so the command line
    still parses)."""
    def release(dest: str, base_url: str, github: bool, repo: str, allow_unsigned: bool,
                rotate_key: bool) -> TaskFailed | None:
        if problems:
            print(f"bakery: release: nothing published, {dest} is unchanged: fix the "
                  "problems named below, then run `doit build` and `doit release` again",
                  file=sys.stderr)
            return report.check(list(problems))
        from sysext_bakery.publish.directory import run_release
        run_release(root, dest, base_url, github, repo, allow_unsigned, rotate_key)
        return None

    return {
        "basename": "release",
        "doc": "publish built images with SHA256SUMS(.gpg), sysupdate transfers, Butane "
               "snippets and index.json (--dest DIR, --base-url URL, --github)",
        "actions": [(_FAIL, [broken])] if broken else [edge(release)],
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
             "help": "publish unsigned although release.toml or the directory say signed"},
            {"name": "rotate_key", "long": "rotate-key", "type": bool, "default": False,
             "help": "sign with [signing] next of release.toml (docs/release.md: key rotation)"},
        ],
        "uptodate": [False],
        "verbosity": 2,
        "meta": {report.META: list(problems)},
    }


def overlaps_task(root: Path) -> dict[str, Any]:
    """`doit overlaps`: the catalogue check (recipe/overlaps.py). It reads the recipes when it
    runs, so a broken recipe elsewhere does not hide the check of the others."""
    def overlaps() -> None:
        from sysext_bakery.recipe import overlaps as catalogue_check
        recipes, errors = load_recipes(root / "recipes")
        cat = catalogue_check.catalogue(recipes, root / "build" / "stage")
        print(catalogue_check.report(cat))
        catalogue_check.check(cat)
        if errors:
            raise BakeryError("\n".join(str(e) for e in errors), "fix these recipes, then rerun")

    return {"basename": "overlaps", "actions": [edge(overlaps)], "uptodate": [False],
            "verbosity": 2,
            "doc": "list every path two recipes ship; fail on one their conflicts do not declare"}


def _said_on_stderr(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`doit --reporter=zero plan` (how CI runs it, to keep stdout JSON) shows no task
    failure: the error goes to stderr here, and the reporter gets only a pointer to it."""
    @functools.wraps(fn)
    def action(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BakeryError as e:
            print(f"bakery: error: {e}", file=sys.stderr)
            raise BakeryError("doit plan failed: the error is above (bakery: error: …)") from None
    return action


def plan_task(root: Path, the_plan: Plan | None) -> dict[str, Any]:
    """`doit plan`: the pinned images not yet published, as a GitHub Actions matrix. The
    images are those of the graph (its problems were reported while loading it)."""
    def plan_action(from_: str, github: bool, repo: str, output: str) -> None:
        from sysext_bakery.files import write_atomic
        from sysext_bakery.publish import pending

        settings = settings_from_env(root)
        gh_repo = None
        tag = "metadata"
        if github:
            from sysext_bakery.publish.directory import release_config
            config = release_config(root / "release" / "release.toml")
            gh_repo, tag = repo or config.github_repo, config.github_metadata_tag
            if not gh_repo:
                raise BakeryError("doit plan --github: no repository",
                                  "pass --repo owner/name or set [github] repo in release/release.toml")
        done = pending.published(from_ or "build/release", gh_repo, tag, settings.mirror, root)
        text = pending.render(pending.matrix(the_plan.images, done))
        if output:
            write_atomic(Path(output) if Path(output).is_absolute() else root / output, text)
        else:
            sys.stdout.write(text)

    return {
        "basename": "plan",
        "doc": "print the pinned images not yet published as a CI matrix JSON "
               "(--from DIR|URL, --github [--repo owner/name], --output FILE)",
        "actions": [edge(_said_on_stderr(plan_action))],
        "params": [
            {"name": "from_", "long": "from", "type": str, "default": "",
             "help": "published directory or URL holding index.json (default build/release)"},
            {"name": "github", "long": "github", "type": bool, "default": False,
             "help": "read index.json from the GitHub metadata release instead"},
            {"name": "repo", "long": "repo", "type": str, "default": "",
             "help": "owner/name for --github (default: github.repo of release/release.toml)"},
            {"name": "output", "long": "output", "type": str, "default": "",
             "help": "write the JSON to this file instead of stdout"},
        ],
        "uptodate": [False],
        "verbosity": 2,
    }
