"""The catalogue contract: every recipe in recipes/ builds, for both arches, from
upstream-shaped downloads, and its images hold what its install map, symlinks and units say.

Nothing here names a recipe's contents: the downloads are synthesized from each recipe's own
URLs, layout and checksum declarations (tests/catalogue.py), served on loopback through
BAKERY_MIRROR, and built with the real doit CLI in one run. A new recipe is tested by being
added. Where a recipe's sources depend on the version (`since`/`until`), EXTRA_VERSIONS pins
a version on the other side too, so each source is built once.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from catalogue import load_toml, sources_for, install_target
from sysext_bakery.recipe.catalogue import catalogue_markdown
from conftest import CATALOGUE_RECIPES as RECIPES, CATALOGUE_NAMES as NAMES, Catalogue
from sysext_bakery.build.readback import extension_release, read_file, read_image
from sysext_bakery.model.naming import image_filename

ELF_MACHINE = {"x86-64": 62, "arm64": 183}


def _image(cat: Catalogue, name: str, version: str, arch: str) -> Path:
    image = cat.project.images / image_filename(name, version, arch)
    if not image.exists():
        relevant = [line for line in (cat.run.stdout + cat.run.stderr).splitlines()
                    if name in line or "Error" in line or "error" in line]
        raise AssertionError(f"{image.name} was not built:\n" + "\n".join(relevant[-40:]))
    return image


@pytest.mark.parametrize("name", NAMES)
def test_recipe_builds_both_arches_and_holds_its_layout(catalogue: Catalogue, name: str) -> None:
    problem = catalogue.skipped(name)
    assert not problem, f"recipes/{name}.toml does not load:\n{problem}"
    data = load_toml(RECIPES, name)
    assert catalogue.versions[name], f"release/lock.toml pins no version of {name}"
    for version in catalogue.versions[name]:
        for arch in data["arches"]:
            image = _image(catalogue, name, version, arch)
            assert extension_release(image)["ARCHITECTURE"] == arch
            assert extension_release(image)["SYSEXT_VERSION_ID"] == version
            entries = {e.path: e for e in read_image(image)}
            for source in sources_for(data, version, arch):
                _check_installed(image, entries, source, arch)
            for link, target in data.get("symlinks", {}).items():
                e = entries.get(link.lstrip("/"))
                assert e is not None and e.kind == "symlink", f"{image.name}: no symlink {link}"
                assert e.target == target, f"{image.name}: {link} -> {e.target}, not {target}"
            for target, units in data.get("units", {}).get("upholds", {}).items():
                for unit in units:
                    assert f"usr/lib/systemd/system/{unit}" in entries, f"{image.name}: no {unit}"
                    assert f"usr/lib/systemd/system/{target}.d/10-{name}-{unit}.conf" in entries


def _check_installed(image: Path, entries: dict, source: dict, arch: str) -> None:
    for pattern, entry in source["install"].items():
        dest, opts = install_target(entry)
        inner = dest.strip("/")
        if dest.endswith("/"):
            below = [p for p, e in entries.items() if p.startswith(inner + "/") and e.kind == "file"]
            assert below, f"{image.name}: {pattern!r} installed nothing below {dest}"
            continue
        e = entries.get(inner)
        assert e is not None and e.kind == "file", f"{image.name}: {pattern!r} -> {dest} missing"
        if "mode" in opts:
            assert e.mode == int(opts["mode"], 8), f"{image.name}: {dest} mode {oct(e.mode)}"
        content = read_file(image, inner)
        if content[:4] == b"\x7fELF":
            assert int.from_bytes(content[18:20], "little") == ELF_MACHINE[arch], \
                f"{image.name}: {dest} is not a {arch} ELF file"
        for old, new in opts.get("replace", {}).items():
            assert old.encode() not in content and new.encode() in content, \
                f"{image.name}: {dest} still has {old!r} (replace not applied)"


@pytest.mark.parametrize("name", NAMES)
def test_declared_checksums_are_what_the_build_checked(catalogue: Catalogue, name: str) -> None:
    """Each source's declared verification was asked of upstream: the checksum file, its
    signature, or the GitHub release's digests; a source without one is trust on first use."""
    assert not catalogue.skipped(name), f"recipes/{name}.toml does not load"
    data = load_toml(RECIPES, name)
    for version in catalogue.versions[name]:
        _image(catalogue, name, version, data["arches"][0])
    synth = catalogue.synthesized[name]
    for sig in synth.signed:
        assert catalogue.requested(sig), f"{name}: signature {sig} was never fetched"
    for api in synth.digests:
        assert catalogue.requested(api), f"{name}: release digests {api} were never asked"
    with catalogue.project.lock_path.open("rb") as f:
        lock = tomllib.load(f)
    for version in catalogue.versions[name]:
        for arch in data["arches"]:
            pins = lock[name][version][arch]["sources"]
            assert all(re.fullmatch(r"[0-9a-f]{64}", p["sha256"]) for p in pins), pins


def test_every_recipe_is_listed_by_doit(catalogue: Catalogue) -> None:
    tasks = {line.split()[0] for line in catalogue.listed.stdout.splitlines() if line.strip()}
    missing = [n for n in NAMES if f"build:{n}" not in tasks]
    assert not missing, "not in doit list: " + ", ".join(missing) + "\n" + catalogue.listed.stderr


def test_every_recipe_declares_discovery_and_covers_both_arches() -> None:
    for name in NAMES:
        data = load_toml(RECIPES, name)
        assert "upstream" in data, f"recipes/{name}.toml has no [upstream]"
        assert data["arches"] == ["x86-64", "arm64"], f"{name}: {data['arches']}"
        for i, source in enumerate(data.get("sources", [])):
            url = source["url"]
            assert url.startswith("https://") and "example" not in url, f"{name}: sources[{i}]"


def test_every_unverified_download_says_why() -> None:
    """A source is checked against upstream (checksum-url or GitHub's digest) or says in
    `no-checksum` why it cannot be; never both."""
    for name in NAMES:
        for i, source in enumerate(load_toml(RECIPES, name).get("sources", [])):
            verified = "checksum-url" in source or source.get("checksum") == "github-digest"
            assert verified != ("no-checksum" in source), \
                f"recipes/{name}.toml: sources[{i}]: checksum-url/checksum or no-checksum, exactly one"


def test_catalogue_table_in_docs_is_current() -> None:
    table = catalogue_markdown(RECIPES)
    docs = (RECIPES.parent / "docs" / "recipes.md").read_text()
    assert table in docs, "docs/recipes.md is stale: run `python -m sysext_bakery.recipe.docs docs/recipes.md`"
    for name in NAMES:
        assert f"| `{name}` |" in table
    assert "**trust on first use**: download.docker.com" in table


def test_catalogue_table_follows_the_recipes(tmp_path: Path) -> None:
    """The generator sees a new recipe and its verification, not a fixed list."""
    (tmp_path / "mytool.toml").write_text(
        'description = "My tool"\nhomepage = "https://example.org/"\narches = ["x86-64"]\n'
        '[[sources]]\nurl = "https://github.com/me/mytool/releases/download/v{version}/mytool"\n'
        'checksum = "sha512"\nchecksum-url = "{url}.sha512"\ninstall = { "mytool" = "/usr/bin/" }\n')
    table = catalogue_markdown(tmp_path)
    assert "| `mytool` | My tool | GitHub me/mytool | sha512 of the file | x86-64 | none |  |" in table
    assert "0 of 1 recipes rely on trust on first use" in table
