"""A changed bakery rebuilds: STAGE_FORMAT and PACK_FORMAT (build/formats.py) are part of
stage's and pack's up-to-date checks. The end-to-end runs load a dodo file that changes
the constant before the tasks are made, as an edit of build/formats.py would."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest import Project, executed, lock_for
from sysext_bakery import tasks
from sysext_bakery.build import actions, formats
from sysext_bakery.build.provenance import read as read_provenance
from sysext_bakery.model.image import Image
from upstream import Upstream

IMAGES = ("wasmtime-29.0.1-x86-64", "wasmtime-29.0.1-arm64")


def uptodate_configs(root: Path, basename: str) -> list[str]:
    made = [t for t in tasks.generate(root, ["list"]) if t.get("basename") == basename and t.get("name")]
    return [u.config for t in made for u in t["uptodate"]]


@pytest.mark.parametrize("constant, basename", [("STAGE_FORMAT", "stage"), ("PACK_FORMAT", "pack")])
def test_the_format_is_in_the_tasks_uptodate(project: Project, monkeypatch, capsys,
                                             constant: str, basename: str) -> None:
    before = uptodate_configs(project.root, basename)
    assert before and all(f"{basename} format {getattr(formats, constant)}" in c for c in before)
    monkeypatch.setattr(formats, constant, getattr(formats, constant) + 1)
    after = uptodate_configs(project.root, basename)
    assert len(after) == len(before) and all(a != b for a, b in zip(after, before))


def test_the_stage_format_is_in_the_stage_record(monkeypatch) -> None:
    """The stage record is pack's dependency: a new stage format repacks too."""
    image = Image("t", "1.0", "x86-64", ())
    before = actions.stage_config(image)
    monkeypatch.setattr(formats, "STAGE_FORMAT", formats.STAGE_FORMAT + 1)
    assert actions.stage_config(image) != before


def bumped(project: Project, *constants: str) -> str:
    """A dodo file for the project that runs the bakery with each constant one higher."""
    dodo = project.root / f"dodo_{'_'.join(constants).lower()}.py"
    dodo.write_text("from sysext_bakery.build import formats\n"
                    + "".join(f"formats.{c} += 1\n" for c in constants)
                    + (project.root / "dodo.py").read_text())
    return dodo.name


def digests(project: Project) -> dict[str, str]:
    return {i: hashlib.sha256((project.images / f"{i}.raw").read_bytes()).hexdigest() for i in IMAGES}


def test_a_new_pack_format_repacks_a_new_stage_format_restages_and_repacks(
        project: Project, upstream: Upstream) -> None:
    project.write_lock({"wasmtime": lock_for(upstream)["wasmtime"]})
    project.doit("build")
    before = digests(project)
    packed_at = {i: read_provenance(project.root / f"build/state/images/{i}.json")["mtime_ns"]
                 for i in IMAGES}
    run = project.doit("-f", bumped(project, "PACK_FORMAT"), "build")
    assert sorted(executed(run)) == sorted(f"pack:{i}" for i in IMAGES)
    both = bumped(project, "PACK_FORMAT", "STAGE_FORMAT")
    run = project.doit("-f", both, "build")
    assert sorted(executed(run)) == sorted([f"{s}:{i}" for s in ("stage", "pack") for i in IMAGES])
    assert executed(project.doit("-f", both, "build")) == []
    # nothing about the images really changed here: same bytes, but packed anew
    assert digests(project) == before
    assert all(read_provenance(project.root / f"build/state/images/{i}.json")["mtime_ns"]
               != packed_at[i] for i in IMAGES)
