"""A stage task hashes its downloads again unless this very run's fetch hashed them and the
files are untouched since (build/actions.py `stage_image`): a cold build hashes each
download once, and a cache entry swapped between two runs is still caught."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from sysext_bakery.build import actions, tidy
from sysext_bakery.model.image import Image
from sysext_bakery.plan import plan
from sysext_bakery.recipe import lock
from sysext_bakery.recipe.load import load_recipes
from sysext_bakery.settings import ImagePaths, settings_from_env


def hashed_files(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the cache entries fetch hashes again from now on."""
    calls: list[str] = []
    from sysext_bakery.build import fetch as fetch_module
    verify = fetch_module._verify_cached

    def counting(cache: Path, sha256: str, url: str):
        calls.append(sha256)
        return verify(cache, sha256, url)
    monkeypatch.setattr(fetch_module, "_verify_cached", counting)
    return calls


def image_of(project, name: str = "wasmtime") -> tuple[Image, object, ImagePaths]:
    settings = settings_from_env(project.root, {"BAKERY_MIRROR": project.mirror.url,
                                                "BAKERY_ARCH": "x86-64"})
    recipes, _ = load_recipes(project.root / "recipes")
    the_plan = plan(recipes, lock.load(project.lock_path), settings)
    image = next(i for i in the_plan.images if i.name == name)
    return image, settings, ImagePaths.of(settings, image.id)


def fetch_then_stage(project, monkeypatch, fetch_run: str, stage_run: str, between=None) -> list[str]:
    image, settings, paths = image_of(project)
    monkeypatch.setattr(tidy, "_run", fetch_run)
    actions.fetch_image(image, settings, paths)
    if between:
        between(settings.download_cache / json.loads(Path(paths.fetch_record).read_text())
                ["sources"][0]["sha256"])
    monkeypatch.setattr(tidy, "_run", stage_run)
    calls = hashed_files(monkeypatch)
    actions.stage_image(image, settings, paths)
    assert Path(paths.tree, "usr/bin/wasmtime").is_file()
    return calls


def test_a_cold_build_hashes_each_download_once(project, monkeypatch) -> None:
    assert fetch_then_stage(project, monkeypatch, "run-1", "run-1") == []


def test_a_later_run_hashes_the_downloads_again(project, monkeypatch) -> None:
    assert len(fetch_then_stage(project, monkeypatch, "run-1", "run-2")) == 1


def test_outside_a_locked_run_the_downloads_are_hashed(project, monkeypatch) -> None:
    assert len(fetch_then_stage(project, monkeypatch, None, None)) == 1


def test_an_entry_changed_in_place_after_the_fetch_is_caught(project, monkeypatch, capsys) -> None:
    def flip(path: Path) -> None:
        st = path.stat()
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))   # same size and mtime: ctime moved
    calls = fetch_then_stage(project, monkeypatch, "run-1", "run-1", between=flip)
    assert calls and len(set(calls)) == 1           # hashed, found bad, fetched again
    assert "removed it, fetching again" in capsys.readouterr().err
    entry = project.root / "build/cache" / calls[0]
    assert hashlib.sha256(entry.read_bytes()).hexdigest() == calls[0]


def test_an_entry_gone_since_the_fetch_is_fetched_again(project, monkeypatch) -> None:
    """The fetch saw no file to sign (it vanished before the stat) and the stage finds none
    either: two missing signatures are no proof of an untouched download."""
    image, settings, paths = image_of(project)
    monkeypatch.setattr(tidy, "_run", "run-1")
    actions.fetch_image(image, settings, paths)
    record = json.loads(Path(paths.fetch_record).read_text())
    sha = record["sources"][0]["sha256"]
    record["verified"]["files"][sha] = None
    Path(paths.fetch_record).write_text(json.dumps(record))
    (settings.download_cache / sha).unlink()
    actions.stage_image(image, settings, paths)
    assert Path(paths.tree, "usr/bin/wasmtime").is_file()
    assert (settings.download_cache / sha).is_file()
