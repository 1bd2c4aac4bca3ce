"""The nightly pipeline for the whole catalogue, offline: the repo's recipes, versions.toml and
lock; upstream answers recorded in every discovery type's shape (tests/recorded.py) offering
several streams per recipe; `doit update` twice, then `doit plan` against a published index."""
from __future__ import annotations

import json
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

import recorded
from catalogue import load_toml
from conftest import REPO, Project
from sysupdate import stop_gpg_agent
from upstream import MirrorServer, Upstream


@dataclass
class Nightly:
    project: Project
    up: Upstream
    server: MirrorServer
    offers: dict[str, recorded.Offer]
    first: str              # stdout of the first update
    lock_after_first: str


@pytest.fixture(scope="module")
def nightly(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("nightly")
    signer = recorded.make_signer(tmp)
    try:
        up = Upstream(tmp / "upstream")
        server = MirrorServer(up.root)
        (tmp / "bakery").mkdir()
        project = Project(tmp / "bakery", server, {})
        shutil.copy(REPO / "release" / "lock.toml", project.lock_path)     # the real lock
        recipes = project.root / "recipes"
        # GitHub pages of 4: every github-releases recipe is read over 3 or more pages
        offers = recorded.nightly_catalogue(up, recipes, project.lock_path,
                                            project.root / "release" / "versions.toml", signer,
                                            page_size=4)
        recorded.trust(recipes, signer)
        first = project.doit("update")
        yield Nightly(project, up, server, offers, first.stdout, project.lock_path.read_text())
        server.close()
    finally:
        stop_gpg_agent(signer.gnupghome)


def declares_checksum(source: dict) -> bool:
    return "checksum-url" in source or source.get("checksum") == "github-digest"


def test_every_recipe_is_tracked_and_offered_several_streams(nightly: Nightly) -> None:
    with (REPO / "release" / "versions.toml").open("rb") as f:
        wanted = tomllib.load(f)
    assert sorted(nightly.offers) == sorted(p.stem for p in (REPO / "recipes").glob("*.toml"))
    assert len(nightly.offers) >= 30
    for name, want in wanted.items():
        assert len(nightly.offers[name].expected) == want.get("streams", 1) + len(
            [v for v in want.get("versions", []) if v != "latest"]), name
    assert len(nightly.offers["kubernetes"].expected) == 3


def test_update_pins_what_versions_toml_asks_with_a_sha256_per_arch_and_source(nightly: Nightly) -> None:
    lock = tomllib.loads(nightly.lock_after_first)
    recipes = nightly.project.root / "recipes"
    tofu = set()
    for name, offer in nightly.offers.items():
        assert sorted(lock[name]) == sorted(offer.expected), name
        data = load_toml(recipes, name)
        for version in offer.expected:
            assert sorted(lock[name][version]) == sorted(data["arches"]), (name, version)
            for arch, entry in lock[name][version].items():
                assert entry["sources"], (name, version, arch)
                for source in entry["sources"]:
                    # the sha256 of exactly what upstream serves for that URL
                    assert source["sha256"] == nightly.up.sha256[source["url"]], source
        declared = all(declares_checksum(s) for s in data["sources"])
        said = [line for line in nightly.first.splitlines() if line.startswith(f"{name}: pinned ")]
        assert len(said) >= 1, (name, nightly.first)
        if declared:
            assert all("sha256 from upstream's checksum files" in line for line in said), said
        else:
            tofu.add(name)
    # trust on first use only where a recipe declares no checksum
    first_use = {line.split()[4] for line in nightly.first.splitlines()
                 if line.startswith("trust on first use: ")}
    pinned_by = {s["url"]: name for name, versions in tomllib.loads(nightly.lock_after_first).items()
                 for arches in versions.values() for arch in arches.values()
                 if isinstance(arch, dict) for s in arch.get("sources", [])}
    assert first_use and {pinned_by[u] for u in first_use} <= tofu, (first_use, tofu)
    assert "release/lock.toml: updated" in nightly.first and "0 failed" in nightly.first
    # the lock's comments survive
    assert nightly.lock_after_first.startswith("# Pinned versions per recipe")


def test_second_update_changes_nothing_and_asks_only_discovery(nightly: Nightly) -> None:
    nightly.server.requests.clear()
    again = nightly.project.doit("update")
    assert nightly.project.lock_path.read_text() == nightly.lock_after_first
    assert "release/lock.toml: unchanged (0 recipe(s) changed, 0 failed)" in again.stdout
    for name in nightly.offers:
        assert f"{name}: up to date" in again.stdout
    assert "pinned" not in again.stdout and "trust on first use" not in again.stdout
    # discovery only: every page of every upstream, once; no download, no checksum file
    assert len(nightly.server.requests) == sum(o.requests for o in nightly.offers.values())
    assert len(set(nightly.server.requests)) == len(nightly.server.requests)


def plan(project: Project, published: Path) -> list[str]:
    proc = project.doit("--reporter=zero", "plan", "--from", str(published))
    return [e["image"] for e in json.loads(proc.stdout)["include"]]


def test_plan_builds_nothing_published_and_exactly_what_is_missing(nightly: Nightly, tmp_path: Path) -> None:
    project = nightly.project
    recipes = project.root / "recipes"
    ids = recorded.publish_index(tmp_path / "all", project.lock_path, recipes)
    assert len(ids) >= 2 * sum(len(o.expected) for o in nightly.offers.values())
    assert plan(project, tmp_path / "all") == []
    missing = f"kubernetes-{nightly.offers['kubernetes'].expected[-1]}-arm64"
    recorded.publish_index(tmp_path / "some", project.lock_path, recipes, leave_out=missing)
    assert plan(project, tmp_path / "some") == [missing]


def test_release_lists_and_digest_answers_agree(nightly: Nightly) -> None:
    """Where a recipe takes GitHub's asset digests, the release in the discovery list is the
    object `releases/tags/<tag>` answers: same id, same assets and digests."""
    recipes = nightly.project.root / "recipes"
    checked = 0
    for name, offer in nightly.offers.items():
        data = load_toml(recipes, name)
        if not any(s.get("checksum") == "github-digest" for s in data["sources"]):
            continue
        repo = data["upstream"]["repo"]
        listed = {}
        page = recorded.answer_path(nightly.up.root,
                                    f"https://api.github.com/repos/{repo}/releases?per_page=100")
        later = nightly.up.root / "api.github.com/repositories" / str(recorded.repo_id(repo))
        for path in [page, *sorted(later.glob("releases?*"))]:
            if not path.name.endswith(".headers.json"):
                listed.update({r["tag_name"]: r for r in json.loads(path.read_text())})
        tag = recorded.tag_for(offer.expected[0], data["upstream"])
        by_tag = recorded.answer_path(nightly.up.root,
                                      f"https://api.github.com/repos/{repo}/releases/tags/{tag}")
        assert listed[tag] == json.loads(by_tag.read_text()), name
        assert any(a.get("digest", "").startswith("sha256:") for a in listed[tag]["assets"])
        checked += 1
    assert checked >= 7      # the recipes taking digests, less any the nightly offers skip
