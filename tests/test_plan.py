"""The plan: recipes + lock -> images, build groups and the problems to report."""
from __future__ import annotations

from pathlib import Path

from conftest import REPO
from sysext_bakery.recipe.lock import Pin
from sysext_bakery.plan import plan
from sysext_bakery.recipe.load import load_recipes
from sysext_bakery.settings import Settings


def pins(**versions: list[str]) -> dict[str, list[Pin]]:
    return {name: [Pin(name, v, {}) for v in vs] for name, vs in versions.items()}


def test_plan_groups_streams_and_newest() -> None:
    recipes, _ = load_recipes(REPO / "recipes")
    the_plan = plan(recipes, pins(docker=["24.0.10", "24.0.9", "25.0.0"]), Settings(REPO))
    assert the_plan.builds["docker-24.0.10"].images == ("docker-24.0.10-x86-64", "docker-24.0.10-arm64")
    assert the_plan.builds["docker-24"].alias_of == "docker-24.0.10"
    assert the_plan.builds["docker-25"].alias_of == "docker-25.0.0"
    assert the_plan.builds["docker"].alias_of == "docker-25.0.0"
    assert "wasmtime" in the_plan.unbuildable and "not pinned" in the_plan.unbuildable["wasmtime"]
    assert len(the_plan.images) == 6


def test_plan_restricted_arch_and_orphan_pin() -> None:
    recipes, _ = load_recipes(REPO / "recipes")
    the_plan = plan(recipes, pins(docker=["24.0.9"], nosuch=["1.0"]), Settings(REPO, arches=("arm64",)))
    assert [i.id for i in the_plan.images] == ["docker-24.0.9-arm64"]
    assert len(the_plan.problems) == 1
    assert "pins 'nosuch', but there is no loadable recipes/nosuch.toml" in str(the_plan.problems[0])


def test_a_name_extending_another_with_dash_is_refused(tmp_path: Path) -> None:
    for name in ("tool", "tool-extra"):
        (tmp_path / f"{name}.toml").write_text(
            'description = "t"\nhomepage = "https://example.org/"\narches = ["x86-64"]\n'
            '[[sources]]\nurl = "https://example.org/t-{version}"\ninstall = { "t-*" = "/usr/bin/t" }\n')
    recipes, _ = load_recipes(tmp_path)
    the_plan = plan(recipes, pins(tool=["1.0"], **{"tool-extra": ["1.0"]}), Settings(tmp_path))
    assert [i.id for i in the_plan.images] == ["tool-1.0-x86-64"]
    assert str(the_plan.problems[0]).startswith(
        f"{tmp_path.name}/tool-extra.toml: the name 'tool-extra' starts with 'tool-', so the "
        "sysupdate pattern tool-@v-%a.raw of recipes/tool.toml would also match tool-extra's images")
