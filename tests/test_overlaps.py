"""The catalogue check (recipe/overlaps.py, `doit overlaps`): paths two recipes ship, from the
recipes as declared and from real staged trees."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import Project
from sysext_bakery.errors import BakeryError
from sysext_bakery.recipe import overlaps
from sysext_bakery.recipe.load import load_recipes

REPO = Path(__file__).resolve().parent.parent
SHARED_FILES = ("usr/lib/systemd/system/containerd.service", "usr/share/containerd/config.toml")


def copy_recipes(tmp_path: Path) -> Path:
    dest = tmp_path / "recipes"
    shutil.copytree(REPO / "recipes", dest)
    return dest


def drop_conflicts(recipes_dir: Path) -> None:
    for path in recipes_dir.glob("*.toml"):
        path.write_text("".join(line for line in path.read_text().splitlines(True)
                                if not line.startswith("conflicts")))


def test_the_repo_catalogue_declares_its_overlaps() -> None:
    recipes, errors = load_recipes(REPO / "recipes")
    assert errors == []
    cat = overlaps.catalogue(recipes, None)
    overlaps.check(cat)
    [docker_containerd] = cat.overlaps
    assert docker_containerd.recipes == ("containerd", "docker") and docker_containerd.declared
    assert set(SHARED_FILES) <= set(docker_containerd.paths)
    # an archive glob is not known without the archive: said, not guessed
    assert cat.shipped["docker"].unchecked == ("sources[0].install 'docker/*' -> '/usr/bin/'",)
    assert "usr/bin/runc" in cat.shipped["containerd"].paths    # a destination naming one file


def test_staged_trees_show_what_archives_ship(tmp_path: Path) -> None:
    recipes, _ = load_recipes(REPO / "recipes")
    stage = tmp_path / "stage"
    for tree in ("docker-24.0.9-x86-64", "containerd-1.7.27-arm64", "docker_notarecipe-2.0-x86-64",
                 ".unpacked"):
        (stage / tree / "usr/bin").mkdir(parents=True)
        (stage / tree / "usr/bin/containerd").write_bytes(b"")
    (stage / "docker-24.0.9-x86-64/usr/bin/dockerd").write_bytes(b"")
    cat = overlaps.catalogue(recipes, stage)
    assert cat.shipped["docker"].staged == ("docker-24.0.9-x86-64",)
    assert cat.shipped["docker"].unchecked == ()
    [overlap] = cat.overlaps
    assert "usr/bin/containerd" in overlap.paths and "usr/bin/dockerd" not in overlap.paths
    assert "/usr/bin/containerd" in overlaps.report(cat)


def test_an_undeclared_overlap_fails(tmp_path: Path) -> None:
    recipes_dir = copy_recipes(tmp_path)
    drop_conflicts(recipes_dir)
    recipes, _ = load_recipes(recipes_dir)
    cat = overlaps.catalogue(recipes, None)
    assert "NOT DECLARED" in overlaps.report(cat)
    with pytest.raises(BakeryError) as err:
        overlaps.check(cat)
    assert err.value.message == ("recipes containerd and docker both ship "
                                 + ", ".join("/" + p for p in sorted(cat.overlaps[0].paths)))
    assert 'conflicts = ["<other>"]' in (err.value.hint or "")
    # one side declaring it is enough
    (recipes_dir / "docker.toml").write_text('conflicts = ["containerd"]\n'
                                             + (recipes_dir / "docker.toml").read_text())
    recipes, _ = load_recipes(recipes_dir)
    overlaps.check(overlaps.catalogue(recipes, None))


def test_a_conflict_with_no_such_recipe_fails(tmp_path: Path) -> None:
    recipes_dir = copy_recipes(tmp_path)
    wasmtime = recipes_dir / "wasmtime.toml"
    wasmtime.write_text('conflicts = ["wasmer"]\n' + wasmtime.read_text())
    recipes, _ = load_recipes(recipes_dir)
    with pytest.raises(BakeryError, match=r"recipes/wasmtime.toml: conflicts: 'wasmer' is not a recipe"):
        overlaps.check(overlaps.catalogue(recipes, None))


def test_doit_overlaps_sees_staged_archives_and_fails_when_undeclared(project: Project) -> None:
    project.doit("stage:docker-24.0.9-x86-64", "stage:containerd-1.7.27-x86-64")
    run = project.doit("overlaps")
    assert "containerd and docker ship" in run.stdout and "(declared in conflicts)" in run.stdout
    for path in ("/usr/bin/containerd", "/usr/bin/ctr", "/usr/bin/runc", *("/" + p for p in SHARED_FILES)):
        assert f"  {path}\n" in run.stdout
    unstaged = [line for line in run.stdout.splitlines() if "not staged" in line]
    assert not [line for line in unstaged if line.startswith(("docker:", "containerd:"))]  # both staged now
    drop_conflicts(project.root / "recipes")
    run = project.doit("overlaps", check=False)
    assert run.returncode != 0
    assert "recipes containerd and docker both ship /usr/bin/containerd" in run.stdout + run.stderr
