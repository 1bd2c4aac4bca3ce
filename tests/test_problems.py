"""Exit status through the real doit CLI: a broken recipe or a refused pin withholds only
its own images; `doit build` and `doit release` build/publish what they can, name each
problem once at the end and exit non-zero; `doit list` lists the rest and exits 0."""
from __future__ import annotations

import pytest

from conftest import Project, executed, lock_for
from sysext_bakery import report
from upstream import Upstream

BROKEN = "recipes/broken.toml: homepage: expected a string, got int 1"
TILDE = "release/lock.toml: wasmtime.30.0~rc1: version '30.0~rc1' must not contain '~'"
ORPHAN = "release/lock.toml: pins 'nosuch', but there is no loadable recipes/nosuch.toml"
WASMTIME = ("wasmtime-29.0.1-x86-64.raw", "wasmtime-29.0.1-arm64.raw")


def wasmtime_only(project: Project, upstream: Upstream, **extra: dict) -> None:
    project.write_lock({"wasmtime": lock_for(upstream)["wasmtime"], **extra})


def with_broken_recipe(project: Project, upstream: Upstream) -> None:
    (project.root / "recipes" / "broken.toml").write_text('description = "x"\nhomepage = 1\n')
    wasmtime_only(project, upstream, broken={"1.0": {}})


def output(run) -> str:
    return run.stdout + run.stderr


def built(project: Project) -> list[str]:
    return sorted(p.name for p in project.images.glob("*.raw"))


@pytest.mark.parametrize("jobs", [[], ["-n", "2"]], ids=["serial", "parallel"])
def test_build_builds_the_good_recipe_and_fails_naming_the_broken_once(
        project: Project, upstream: Upstream, jobs: list[str]) -> None:
    with_broken_recipe(project, upstream)
    run = project.doit(*jobs, "build", check=False)
    assert run.returncode != 0
    assert built(project) == sorted(WASMTIME)
    assert output(run).count(BROKEN) == 1
    assert "skipped" not in output(run)
    # at the end: after the last task doit ran, and as the last thing on stderr
    assert run.stderr.rstrip().endswith("hint: see docs/recipes.md for the recipe format")
    assert "bakery: 1 problem withheld images:" in run.stderr


def test_list_lists_the_good_recipe_exits_0_and_names_the_problem_on_stderr(
        project: Project, upstream: Upstream) -> None:
    with_broken_recipe(project, upstream)
    run = project.doit("list")
    assert "build:wasmtime-29.0.1" in run.stdout
    assert run.stderr.count(BROKEN) == 1 and BROKEN not in run.stdout
    assert "build:broken " in run.stdout    # asking for it fails and says why, see below
    asked = project.doit("build:broken", check=False)
    assert asked.returncode != 0 and output(asked).count(BROKEN) == 1


def test_a_refused_pin_withholds_only_that_version(project: Project, upstream: Upstream) -> None:
    lock = {"wasmtime": {**lock_for(upstream)["wasmtime"], "30.0~rc1": {}}}
    project.write_lock(lock)
    listed = project.doit("list")
    assert "build:wasmtime-29.0.1" in listed.stdout and listed.stderr.count(TILDE) == 1
    exact = project.doit("build:wasmtime-29.0.1")        # whole: that version has no problem
    assert built(project) == sorted(WASMTIME) and TILDE not in output(exact)
    # the recipe's newest and stream groups could not be planned fully: 30.0~rc1 would
    # have been newest, so they fail, after building what they can
    for group in ("build:wasmtime", "build:wasmtime-29", "build"):
        run = project.doit(group, check=False)
        assert run.returncode != 0, group
        assert output(run).count(TILDE) == 1, group


def test_a_pin_without_its_recipe_fails_build(project: Project, upstream: Upstream) -> None:
    wasmtime_only(project, upstream, nosuch={"1.0": {}})
    run = project.doit("build", check=False)
    assert run.returncode != 0 and built(project) == sorted(WASMTIME)
    assert output(run).count(ORPHAN) == 1
    asked = project.doit("build:nosuch", check=False)
    assert asked.returncode != 0 and ORPHAN in output(asked)


def test_a_build_of_another_recipe_stays_green_with_a_note(project: Project,
                                                           upstream: Upstream) -> None:
    with_broken_recipe(project, upstream)
    run = project.doit("build:wasmtime-29.0.1")
    assert BROKEN not in output(run)
    assert "bakery: note: 1 problem(s) in other recipes or the lock (not part of this run)" in run.stderr
    assert executed(project.doit("build:wasmtime")) == []   # broken is not wasmtime's problem


def test_continue_past_a_failed_download_still_names_the_problem(project: Project,
                                                                upstream: Upstream) -> None:
    """`-c`: build's check never runs (a dependency failed), the reporter names it anyway."""
    with_broken_recipe(project, upstream)
    (project.root / "recipes" / "gone.toml").write_text(
        'description = "t"\nhomepage = "https://example.org/"\narches = ["x86-64"]\n'
        '[[sources]]\nurl = "https://example.org/gone/gone-{version}.tar.gz"\n'
        'install = { "tool/*" = "/usr/bin/" }\n')
    wasmtime_only(project, upstream, broken={"1.0": {}}, gone={"1.0": {}})
    run = project.doit("-c", "build", check=False)
    assert run.returncode != 0
    assert built(project) == sorted(WASMTIME)
    assert "HTTP 404 Not Found" in output(run) and output(run).count(BROKEN) == 1


def test_release_with_a_problem_publishes_nothing(project: Project, upstream: Upstream,
                                                  monkeypatch) -> None:
    with_broken_recipe(project, upstream)
    project.doit("build", check=False)
    dest = project.root / "site"
    args = ("release", "--dest", str(dest), "--base-url", "https://example.org/ext/")
    for name in ("BAKERY_SIGNING_KEY", "BAKERY_SIGNING_KEY_ID"):   # an unsigned release
        monkeypatch.delenv(name, raising=False)
    run = project.doit(*args, check=False)
    assert run.returncode != 0
    assert not dest.exists()
    assert output(run).count(BROKEN) == 1 and "nothing published" in run.stderr
    (project.root / "recipes" / "broken.toml").unlink()
    wasmtime_only(project, upstream)
    project.doit(*args)
    assert sorted(p.name for p in dest.glob("*.raw")) == sorted(WASMTIME)


@pytest.mark.parametrize("argv, runs", [
    ([], True), (["build"], True), (["-n", "2", "build"], True), (["run", "build"], True),
    (["list"], False), (["list", "--all"], False), (["-f", "dodo.py", "list"], False),
    (["info", "build"], False), (["release", "--dest", "list"], True),
])
def test_which_commands_run_tasks(argv: list[str], runs: bool) -> None:
    assert report.runs_tasks(argv) is runs


def test_a_plan_run_still_notes_the_problems(project: Project, upstream: Upstream) -> None:
    """`doit plan` loads no image tasks (tasks.pipeline_only); the matrix lacks the withheld
    images, so its run still ends with the note that there are problems."""
    with_broken_recipe(project, upstream)
    run = project.doit("plan")
    assert "wasmtime" in run.stdout
    assert "bakery: note: 1 problem(s) in other recipes or the lock (not part of this run)" in run.stderr
