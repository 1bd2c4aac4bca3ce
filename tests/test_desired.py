"""The desired-state rule (release/versions.toml -> adds and drops), as plain values."""
from __future__ import annotations

from pathlib import Path

import pytest

from sysext_bakery.errors import BakeryError
from sysext_bakery.update.desired import check_recipe, load, parse_entry, resolve

DOCKER = ("28.0.4", "28.0.3", "27.5.1", "27.5.0", "25.0.0", "24.0.9")


def entry(**kw):
    return parse_entry("docker", {k.replace("_", "-"): v for k, v in kw.items()}, "versions.toml")


def test_last_two_majors_with_default_retention() -> None:
    got = resolve(entry(streams=2), DOCKER, ("24.0.9", "27.5.0", "28.0.3"), "major")
    assert got.add == ("28.0.4", "27.5.1")
    assert got.drop == ("28.0.3", "27.5.0", "24.0.9")
    assert got.why_dropped["24.0.9"] == "keep-streams = 2: stream 24 is not among the newest"


def test_retention_limits() -> None:
    got = resolve(entry(streams=1, keep_per_stream=2, keep_streams=3), DOCKER,
                  ("27.5.0", "28.0.3"), "major")
    assert got.add == ("28.0.4",) and got.keep == ("28.0.3", "27.5.0") and got.drop == ()
    capped = resolve(entry(streams=2, keep_per_stream=3, keep=3), DOCKER, ("27.5.0", "28.0.3"), "major")
    assert capped.add == ("28.0.4", "27.5.1") and capped.drop == ("27.5.0",)
    assert capped.why_dropped == {"27.5.0": "keep = 3"}


def test_exact_versions_latest_and_hold() -> None:
    got = resolve(entry(versions=["latest", "24.0.9"], hold=["28"]), DOCKER, ("24.0.9", "27.5.0"), "major")
    assert got.add == ("27.5.1",)            # 28 is held back; latest is the newest 27
    assert got.keep == ("24.0.9",)           # exact versions are never dropped, even past keep
    assert got.drop == ("27.5.0",)
    held = resolve(entry(streams=2, hold=["28.0.4"]), DOCKER, (), "major")
    assert held.add == ("28.0.3", "27.5.1")


def test_nothing_offered_keeps_the_pins() -> None:
    assert resolve(entry(streams=2), (), ("28.0.3",), "major").drop == ()


def test_defaults_and_checks(tmp_path: Path) -> None:
    assert entry(versions=["latest"]).keep == 1
    assert entry(streams=3).keep_streams == 3 and entry(streams=3).keep_per_stream == 1
    with pytest.raises(BakeryError, match="versions.toml: docker.streams: recipes/docker.toml has no streams"):
        check_recipe(entry(streams=2), "none", "versions.toml")
    with pytest.raises(BakeryError, match="docker.hold: \"latest\" cannot be held"):
        entry(streams=1, hold=["latest"])
    with pytest.raises(BakeryError, match="docker.keep: expected a whole number >= 1, got True"):
        entry(streams=1, keep=True)
    assert load(tmp_path / "missing.toml") == {}
    (tmp_path / "v.toml").write_text("docker = 2\n")
    with pytest.raises(BakeryError, match=r"v.toml: docker: expected a table \[docker\]"):
        load(tmp_path / "v.toml", "v.toml")


def test_repo_versions_toml_loads() -> None:
    wanted = load(Path(__file__).resolve().parent.parent / "release" / "versions.toml")
    assert wanted["docker"].streams == 2 and wanted["containerd"].streams == 2
    assert wanted["wasmtime"].versions == ("latest",)


def test_exact_versions_systemd_orders_as_equal_are_refused() -> None:
    with pytest.raises(BakeryError) as e:
        entry(versions=["latest", "1.0+1", "1.0_1"])
    assert str(e.value).startswith("versions.toml: docker.versions: '1.0+1' and '1.0_1' are the "
                                   "same version to systemd")


def test_update_refuses_pinning_a_second_spelling_of_a_pinned_version() -> None:
    from sysext_bakery.recipe.load import load_recipe
    from sysext_bakery.recipe.lock import Pin
    from sysext_bakery.update.run import update_recipe
    recipe = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "wasmtime.toml")
    got = update_recipe(recipe, entry(versions=["29.0.01"]), [Pin("wasmtime", "29.0.1", {})],
                        discover=lambda r: pytest.fail("exact versions discover nothing"),
                        sha256=lambda s: pytest.fail("nothing is pinned"))
    assert got.error is not None and not got.writes
    assert str(got.error).startswith("wasmtime: '29.0.01' and '29.0.1' are the same version to "
                                     "systemd") and "cannot both be pinned" in str(got.error)
