"""A pin its recipe no longer renders (a companion `version` or URL template edited since
`doit update`), through the real doit CLI: an unlocked build builds from the pin and warns,
naming recipe, version, arch, both URLs and the fix; a locked build refuses that version
(named once at the end, exit non-zero) and builds the rest. The rule is update's
(recipe/drift.py), so `doit update` re-pins exactly what a build complains about."""
from __future__ import annotations

from pathlib import Path

from conftest import Project, executed, lock_for
from sysext_bakery.recipe.drift import drift
from sysext_bakery.recipe.load import load_recipe
from upstream import Upstream, runc_url

CONTAINERD = ("containerd-1.7.27-x86-64", "containerd-1.7.27-arm64")
FIX = "run `doit update:containerd` to pin the URLs the recipe renders (with their sha256) " \
      "and commit release/lock.toml"


def edit_runc(project: Project, new: str = "1.2.6") -> None:
    recipe = project.root / "recipes" / "containerd.toml"
    recipe.write_text(recipe.read_text().replace('version = "1.2.5"', f'version = "{new}"'))


def built(project: Project) -> list[str]:
    return sorted(p.stem for p in project.images.glob("*.raw"))


def test_an_unlocked_build_uses_the_pin_and_warns(project: Project, upstream: Upstream) -> None:
    project.write_lock({"containerd": lock_for(upstream)["containerd"]})
    edit_runc(project)
    run = project.doit("build:containerd")
    assert built(project) == sorted(CONTAINERD)
    for arch in ("x86-64", "arm64"):
        warning = (f"bakery: WARNING: containerd 1.7.27 {arch}: building from the URL pinned in "
                   f"release/lock.toml, not the one recipes/containerd.toml now renders:\n"
                   f"  pinned URL: {runc_url(arch)}\n"
                   f"  recipe URL: {runc_url(arch, '1.2.6')}\n"
                   f"  fix: {FIX}")
        assert run.stderr.count(warning) == 1, run.stderr
    # the pinned runc went in (the mirror has no 1.2.6 at all)
    record = (project.root / "build/state/fetch/containerd-1.7.27-arm64.json").read_text()
    assert runc_url("arm64") in record and "1.2.6" not in record
    # said on every run that reaches the image, also when nothing is rebuilt
    again = project.doit("build:containerd-1.7.27")
    assert executed(again) == [] and again.stderr.count("bakery: WARNING: containerd 1.7.27") == 2
    # and by `doit list`; a build of another recipe does not mention it
    assert project.doit("list").stderr.count("WARNING: containerd 1.7.27") == 2
    project.write_lock(lock_for(upstream))
    other = project.doit("build:wasmtime")
    assert "WARNING" not in other.stderr


def test_a_locked_build_refuses_the_stale_version_and_builds_the_rest(
        project: Project, upstream: Upstream) -> None:
    lock = lock_for(upstream)
    project.write_lock({"containerd": lock["containerd"], "wasmtime": lock["wasmtime"]})
    edit_runc(project)
    run = project.doit("build", env={"BAKERY_LOCKED": "1"}, check=False)
    assert run.returncode != 0
    assert built(project) == ["wasmtime-29.0.1-arm64", "wasmtime-29.0.1-x86-64"]
    refused = ("release/lock.toml: containerd 1.7.27 pins URLs recipes/containerd.toml no longer "
               "renders (its URL template or a companion version was edited); a locked build "
               "(BAKERY_LOCKED=1) does not build it from the stale pin:\n"
               f"    x86-64: pinned URL {runc_url('x86-64')}\n"
               f"            recipe URL {runc_url('x86-64', '1.2.6')}\n"
               f"    arm64: pinned URL {runc_url('arm64')}\n"
               f"           recipe URL {runc_url('arm64', '1.2.6')}\n"
               f"    hint: {FIX}")
    assert run.stderr.count(refused) == 1, run.stderr
    assert "bakery: 1 problem withheld images:" in run.stderr
    assert "WARNING" not in run.stderr and "Traceback" not in run.stderr
    assert not any("containerd" in t for t in executed(run))
    # asking for the version itself fails the same way
    asked = project.doit("build:containerd-1.7.27", env={"BAKERY_LOCKED": "1"}, check=False)
    assert asked.returncode != 0 and asked.stderr.count("containerd 1.7.27 pins URLs") == 1


def test_an_unchanged_or_hand_pinned_recipe_has_no_drift(project: Project, upstream: Upstream,
                                                        tmp_path: Path) -> None:
    recipe = load_recipe(project.root / "recipes" / "containerd.toml")
    pinned = lock_for(upstream)["containerd"]["1.7.27"]["x86-64"]["sources"]
    assert drift(recipe, "1.7.27", "x86-64", pinned) is None
    assert drift(recipe, "1.7.27", "x86-64", None) is None           # arch pinned by hand
    assert drift(recipe, "1.7.27", "x86-64", [{"sha256": "0" * 64}, {}]) is None
    edit_runc(project)
    edited = load_recipe(project.root / "recipes" / "containerd.toml")
    found = drift(edited, "1.7.27", "x86-64", pinned)
    assert found is not None and found.changes == [(runc_url("x86-64"), runc_url("x86-64", "1.2.6"))]


def test_credentials_in_a_stale_pin_never_reach_a_message(project: Project, upstream: Upstream) -> None:
    """A pin of a private mirror's URL with userinfo or a token: the warning, the locked
    refusal and update's re-pin line name the URL with them redacted."""
    from sysext_bakery.model.url import url_problem
    from sysext_bakery.plan import stale_refused, stale_warning
    recipe = load_recipe(project.root / "recipes" / "containerd.toml")
    pinned = [dict(s) for s in lock_for(upstream)["containerd"]["1.7.27"]["x86-64"]["sources"]]
    pinned[1]["url"] = pinned[1]["url"].replace("https://", "https://bot:hunter2@") + "?token=s3cret"
    found = drift(recipe, "1.7.27", "x86-64", pinned)
    assert found is not None
    for text in (stale_warning(recipe, "1.7.27", found), str(stale_refused(recipe, "1.7.27", [found])),
                 found.detail()):
        assert "hunter2" not in text and "s3cret" not in text and "https://***@" in text, text
    assert "hunter2" not in url_problem("https://bot:hunter2@example.com/a b")
