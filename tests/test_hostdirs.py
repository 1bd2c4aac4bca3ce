"""hostdirs: no file or symlink where a base OS has a directory, at any depth; the shipped
list and its generator; BAKERY_BASE_TREE; and a real merge showing what the rule prevents."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from sysext import make_root, requires_sysext, run_merged
from sysext_bakery.build import hostdirs
from sysext_bakery.errors import BakeryError
from sysext_bakery.model.image import Install
from sysext_bakery.recipe.load import load_recipe
from sysext_bakery.build.stage import stage_image
from sysext_bakery.build.validate import validate_tree
from archives import F, L, image, source, write_tar

SHIPPED = REPO / "sysext_bakery" / hostdirs.DATA_FILE
RECIPE = """\
description = "Tool"
homepage = "https://example.org/"
arches = ["x86-64"]

[[sources]]
url = "https://example.org/tool-{version}-{arch}.tar.gz"
install = { "tool/*" = "/usr/bin/", "units/main" = "DEST" }
"""


def test_shipped_list_is_what_the_generator_makes() -> None:
    done = subprocess.run([sys.executable, str(REPO / "scripts/gen-host-directories"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_shipped_list_is_sorted_and_loaded_from_the_package() -> None:
    lines = [ln for ln in SHIPPED.read_text().splitlines() if not ln.startswith("#")]
    assert lines == sorted(set(lines))
    assert hostdirs.listed_dirs() == frozenset(lines)
    for deep in ("usr/lib/systemd/system", "usr/lib/modules", "usr/share/dbus-1", "usr/lib64",
                 "usr/libexec", "usr/share/man/man1", "usr/lib/systemd/system/multi-user.target.wants",
                 "usr/share/baselayout", "usr/lib/x86_64-linux-gnu", "usr/lib/aarch64-linux-gnu"):
        assert deep in lines, deep
    # symlinks on those systems, and one package's own sub-directories, are not listed
    for absent in ("usr/tmp", "usr/lib/debug/bin", "usr/share/doc/bash", "usr/share/locale/de",
                   "usr/lib/extension-release.d"):
        assert absent not in lines, absent


def test_shadows_host_dir() -> None:
    assert hostdirs.shadows_host_dir("usr/lib/systemd")
    assert hostdirs.shadows_host_dir("/usr/lib/modules")
    assert hostdirs.shadows_host_dir("usr/anything")        # any name directly under usr/, opt/
    assert hostdirs.shadows_host_dir("opt/bin")
    assert not hostdirs.shadows_host_dir("usr/lib/systemd/system/docker.service")
    assert not hostdirs.shadows_host_dir("opt/docker/bin")
    assert not hostdirs.shadows_host_dir("usr/lib/custom")
    assert hostdirs.shadows_host_dir("usr/lib/custom", {"usr/lib/custom"})


def test_recipe_mapping_a_file_to_a_host_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tool.toml"
    path.write_text(RECIPE.replace("DEST", "/usr/lib/systemd"))
    with pytest.raises(BakeryError) as err:
        load_recipe(path)
    assert err.value.message == (
        f"{path}: sources[0].install: destination /usr/lib/systemd would replace the host's "
        "whole /usr/lib/systemd; end it with '/' to install into it")


def test_recipe_mapping_a_file_into_a_host_directory_loads(tmp_path: Path) -> None:
    path = tmp_path / "tool.toml"
    path.write_text(RECIPE.replace("DEST", "/usr/lib/systemd/system/tool.service"))
    assert load_recipe(path).name == "tool"


def test_archive_symlink_at_a_host_directory_is_refused(tmp_path: Path) -> None:
    # The install map is fine ("into /usr/lib/"); the archive's own symlink lib/modules is not.
    archive = write_tar(tmp_path / "kmods.tgz", "tar.gz",
                        [F("lib/kmods/x.ko", b"\0"), L("lib/modules", "kmods")])
    dest = tmp_path / "stage"
    with pytest.raises(BakeryError) as err:
        stage_image(image(source("kmods.tgz", "tar.gz", Install("lib/**", "/usr/lib/"))),
                    [archive], dest)
    assert err.value.message == (
        "docker (x86-64): the staged tree is not a valid sysext:\n"
        "  usr/lib/modules: must be a directory (a file or link here would hide the host's whole "
        "/usr/lib/modules once merged)")
    assert not dest.exists()


def test_files_inside_host_directories_are_fine(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "units.tgz", "tar.gz", [
        F("units/tool.service", b"[Service]\n"), L("units/alias.service", "tool.service"),
        F("modules/6.6/extra/tool.ko", b"\0")])
    dest = tmp_path / "stage"
    stage_image(image(source("units.tgz", "tar.gz", Install("units/*", "/usr/lib/systemd/system/"),
                             Install("modules/**", "/usr/lib/modules/"))), [archive], dest)
    assert (dest / "usr/lib/systemd/system/tool.service").is_file()
    assert (dest / "usr/lib/systemd/system/alias.service").is_symlink()
    assert (dest / "usr/lib/modules/6.6/extra/tool.ko").is_file()


def good_tree(root: Path, name: str = "docker") -> Path:
    release = root / f"usr/lib/extension-release.d/extension-release.{name}"
    release.parent.mkdir(parents=True)
    release.write_text("ID=_any\nARCHITECTURE=x86-64\n")
    return root


def test_base_tree_directories_are_refused_too(tmp_path: Path, monkeypatch) -> None:
    base = tmp_path / "base"
    (base / "usr/lib/vendor-thing/plugins").mkdir(parents=True)
    (base / "usr/share/real").mkdir(parents=True)
    (base / "usr/share/alias").symlink_to("real")      # a link on the host: not a directory
    tree = good_tree(tmp_path / "tree")
    (tree / "usr/lib/vendor-thing").write_text("a file where the host has a directory\n")
    (tree / "usr/share").mkdir()
    (tree / "usr/share/alias").write_text("fine: a link on the host\n")

    monkeypatch.delenv(hostdirs.BASE_TREE_ENV, raising=False)
    validate_tree(tree, "docker", "x86-64")              # not in the shipped list

    monkeypatch.setenv(hostdirs.BASE_TREE_ENV, str(base))
    with pytest.raises(BakeryError) as err:
        validate_tree(tree, "docker", "x86-64")
    assert err.value.message.splitlines()[1:] == [
        "  usr/lib/vendor-thing: must be a directory (a file or link here would hide the host's "
        "whole /usr/lib/vendor-thing once merged)"]


def test_base_tree_without_usr_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BakeryError) as err:
        hostdirs.base_tree_dirs({hostdirs.BASE_TREE_ENV: str(tmp_path)})
    assert err.value.message == f"{hostdirs.BASE_TREE_ENV}={tmp_path}: no usr/ directory there"


def test_host_dirs_of_is_bounded(tmp_path: Path) -> None:
    (tmp_path / "usr/a/b/c/d").mkdir(parents=True)
    (tmp_path / "opt/x").mkdir(parents=True)
    (tmp_path / "etc/ignored").mkdir(parents=True)
    (tmp_path / "usr/link").symlink_to("a")
    assert hostdirs.host_dirs_of(tmp_path, max_depth=3) == {"usr", "opt", "usr/a", "usr/a/b",
                                                            "opt/x"}
    with pytest.raises(BakeryError, match="more than 3 directories"):
        hostdirs.host_dirs_of(tmp_path, max_dirs=3)


@pytest.mark.root
@requires_sysext
def test_a_file_at_a_host_directory_hides_it_in_a_real_merge(tmp_path: Path) -> None:
    # Packed by hand, around the bakery's checks: what the rule exists to prevent.
    tree = good_tree(tmp_path / "tree", "shadow")
    (tree / "usr/lib/systemd").write_text("not a directory\n")
    image_path = tmp_path / "shadow.raw"
    subprocess.run(["mksquashfs", str(tree), str(image_path), "-all-root", "-noappend", "-quiet"],
                   check=True, capture_output=True)
    root = make_root(tmp_path / "host")
    (root / "usr/lib/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd/system/foo.service").write_text("[Service]\nExecStart=/bin/true\n")

    done = run_merged(root, {"shadow": image_path}, """
        [ -d "$ROOT/usr/lib/systemd/system" ] && echo unit-dir-there || echo unit-dir-gone
        cat "$ROOT/usr/lib/systemd/system/foo.service" 2>&1 | sed "s|$ROOT||"
        cat "$ROOT/usr/lib/systemd"
    """)

    assert done.stdout.splitlines() == [
        "unit-dir-gone",
        "cat: /usr/lib/systemd/system/foo.service: Not a directory",
        "not a directory",
    ]
    assert (root / "usr/lib/systemd/system/foo.service").is_file()   # back after unmerge
    # ... and the bakery refuses that very tree.
    with pytest.raises(BakeryError) as err:
        validate_tree(tree, "shadow", "x86-64")
    assert "  usr/lib/systemd: must be a directory (a file or link here would hide the host's " \
           "whole /usr/lib/systemd once merged)" in err.value.message.splitlines()


def test_changing_the_base_tree_revalidates_through_doit(project, upstream, tmp_path: Path) -> None:
    """BAKERY_BASE_TREE is part of stage's up-to-date check (no `doit forget` needed):
    setting, changing or unsetting it re-runs validation; the same tree again runs nothing.
    It shapes no tree, so nothing is repacked."""
    from conftest import executed, lock_for
    project.write_lock({"wasmtime": lock_for(upstream)["wasmtime"]})
    stages = sorted(f"stage:wasmtime-29.0.1-{a}" for a in ("x86-64", "arm64"))
    project.doit("build")
    base = tmp_path / "base"
    (base / "usr/lib").mkdir(parents=True)
    (base / "usr/lib/os-release").write_text("ID=flatcar\nVERSION_ID=4152.2.0\n")
    env = {hostdirs.BASE_TREE_ENV: str(base)}
    assert sorted(executed(project.doit("build", env=env))) == stages
    assert executed(project.doit("build", env=env)) == []
    # another release at the same path
    (base / "usr/lib/os-release").write_text("ID=flatcar\nVERSION_ID=4230.1.0\n")
    assert sorted(executed(project.doit("build", env=env))) == stages
    # a tree with a directory where wasmtime ships its binary: the staged image is refused
    (base / "usr/bin/wasmtime").mkdir(parents=True)
    (base / "usr/lib/os-release").write_text("ID=flatcar\nVERSION_ID=4231.0.0\n")
    run = project.doit("build", env=env, check=False)
    assert run.returncode != 0
    assert "usr/bin/wasmtime: must be a directory" in run.stdout + run.stderr
    assert sorted(executed(project.doit("build"))) == stages   # unset: validated without it
