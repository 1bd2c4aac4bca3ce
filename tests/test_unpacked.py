"""unpacked: the unpacked-source cache makes the same tree and never shares a written inode."""
from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from sysext_bakery import files
from sysext_bakery.errors import BakeryError
from sysext_bakery.model.image import Image, Install
from sysext_bakery.build.pack import pack
from sysext_bakery.build.stage import stage_image
from sysext_bakery.build.tree import Tree
from sysext_bakery.build.unpacked import unpacked_key
from elf import make_elf
from archives import (ORIGIN, RELEASE, F, D, L, H, write_tar, source, image, listing, by_hash,
                      DOCKER, EXPECTED_DOCKER, children)


# --- the unpacked cache: sources kept between stages, hardlinked into the tree ----------------

RICH = [D("docker"), *DOCKER[1:], L("docker/dockerd-alias", "dockerd"), H("docker/docker-hl", "docker/docker"),
        F("docker/su", make_elf("x86-64", b"su"), 0o4755)]


def rich_image(tmp_path: Path, archive_name: str = "docker.tgz", **kw) -> Image:
    files = tmp_path / "files"
    if not files.exists():
        (files / "usr/lib/systemd/system").mkdir(parents=True)
        (files / "usr/lib/systemd/system/docker.service").write_text("[Service]\nExecStart=/usr/bin/dockerd\n")
        os.symlink("docker", files / "usr/lib/systemd/system/moby.service")
    src = source(archive_name, "tar.gz", Install("docker/*", "/usr/bin/"),
                 Install("docker/docker", "/usr/libexec/docker/cli"), allow_setuid=True)
    return image(src, files_dir=files, upholds=(("multi-user.target", ("docker.service",)),), **kw)


def inode(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_dev, st.st_ino


@pytest.mark.parametrize("fmt, compression", [("squashfs", "zstd"), ("erofs", "lz4hc")])
def test_the_cache_makes_the_same_image_and_spares_the_archive(tmp_path, fmt, compression):
    archive = by_hash(write_tar(tmp_path / "docker.tgz", "tar.gz", RICH))
    img, unpacked = rich_image(tmp_path), tmp_path / "stage/.unpacked"
    stage_image(img, [archive], tmp_path / "stage/plain")
    stage_image(img, [archive], tmp_path / "stage/first", unpacked=unpacked)    # fills the cache
    archive.unlink()                                                            # not read again
    stage_image(img, [archive], tmp_path / "stage/again", unpacked=unpacked)
    trees = [tmp_path / "stage" / name for name in ("plain", "first", "again")]
    assert listing(trees[0]) == listing(trees[1]) == listing(trees[2])
    assert listing(trees[0])["usr/bin/su"][0] == "file 4755"
    sums = {pack(tree, tmp_path / f"{tree.name}.raw", fmt, compression) for tree in trees}
    assert len(sums) == 1
    entries = os.listdir(unpacked)
    assert len(entries) == 1                                                    # no temp dirs
    cached = unpacked / entries[0] / "tree/usr/bin/dockerd"
    # Both trees share the cached inode; the copy of an archive hardlink does not.
    assert inode(trees[1] / "usr/bin/dockerd") == inode(trees[2] / "usr/bin/dockerd") == inode(cached)
    assert cached.stat().st_nlink == 3
    assert inode(trees[2] / "usr/bin/docker-hl") != inode(trees[2] / "usr/bin/docker")


def test_static_and_generated_files_never_share_an_inode_with_the_cache(tmp_path):
    archive = by_hash(write_tar(tmp_path / "docker.tgz", "tar.gz", RICH))
    unpacked, dest = tmp_path / ".unpacked", tmp_path / "out"
    stage_image(rich_image(tmp_path), [archive], dest, unpacked=unpacked)
    for rel in ("usr/lib/systemd/system/docker.service", RELEASE,
                "usr/lib/systemd/system/multi-user.target.d/10-docker-docker.service.conf"):
        assert (dest / rel).stat().st_nlink == 1
    cached = next(unpacked.iterdir()) / "tree/usr/bin/docker"
    before = cached.read_bytes()
    # Even a Tree that knows nothing about the paths (no clash check) cannot write into a
    # cached inode: files are only ever created, exclusively.
    with pytest.raises(FileExistsError):
        Tree(dest).add_text("usr/bin/docker", "overwritten", "a test")
    assert cached.read_bytes() == (dest / "usr/bin/docker").read_bytes() == before


def test_files_dir_clash_with_a_cached_file_reads_the_same_and_leaves_the_cache_alone(tmp_path):
    archive = by_hash(write_tar(tmp_path / "docker.tgz", "tar.gz", DOCKER))
    files = tmp_path / "files"
    (files / "usr/bin").mkdir(parents=True)
    (files / "usr/bin/docker").write_text("#!/bin/sh\n")
    img = image(source("docker.tgz", "tar.gz", Install("docker/*", "/usr/bin/")), files_dir=files)
    unpacked = tmp_path / ".unpacked"
    messages = []
    for cache in (None, unpacked, unpacked):
        with pytest.raises(BakeryError) as err:
            stage_image(img, [archive], tmp_path / "out", unpacked=cache)
        messages.append(str(err.value))
    assert messages == [f"usr/bin/docker: {files}/usr/bin/docker clashes with {ORIGIN}: docker.tgz: "
                        "'docker/docker'\n  hint: each path of the image comes from exactly one "
                        "place: narrow the install patterns or remove the file from files/"] * 3
    assert (next(unpacked.iterdir()) / "tree/usr/bin/docker").read_bytes() == make_elf("x86-64", b"cli")
    assert sorted(os.listdir(tmp_path)) == [".unpacked", archive.name, "files"]


def test_clashes_between_sources_name_each_image_s_own_origin(tmp_path):
    a = by_hash(write_tar(tmp_path / "docker.tgz", "tar.gz", DOCKER))
    b = by_hash(write_tar(tmp_path / "cli.tgz", "tar.gz", [F("bin/docker", make_elf("x86-64", b"2"), 0o755)]))
    unpacked = tmp_path / ".unpacked"
    for origin in ("recipes/docker.toml", "recipes/moby.toml"):     # same downloads, same maps
        img = image(replace(source("docker.tgz", "tar.gz", Install("docker/*", "/usr/bin/")),
                            origin=f"{origin}: sources[0]"),
                    replace(source("cli.tgz", "tar.gz", Install("bin/*", "/usr/bin/")),
                            origin=f"{origin}: sources[1]"))
        for cache in (None, unpacked):
            with pytest.raises(BakeryError) as err:
                stage_image(img, [a, b], tmp_path / "out", unpacked=cache)
            assert err.value.message == (f"usr/bin/docker: {origin}: sources[1]: cli.tgz: 'bin/docker' "
                                         f"clashes with {origin}: sources[0]: docker.tgz: 'docker/docker'")
    assert len(os.listdir(unpacked)) == 2


def test_each_install_map_and_setuid_choice_has_its_own_entry(tmp_path):
    archive = by_hash(write_tar(tmp_path / "docker.tgz", "tar.gz", DOCKER))
    unpacked, dest = tmp_path / ".unpacked", tmp_path / "out"
    variants = [source("docker.tgz", "tar.gz", Install("docker/*", "/usr/bin/")),
                source("docker.tgz", "tar.gz", Install("docker/docker*", "/usr/bin/")),
                source("docker.tgz", "tar.gz", Install("docker/docker*", "/usr/bin/", mode=0o700)),
                source("docker.tgz", "tar.gz", Install("docker/*", "/usr/bin/"), allow_setuid=True)]
    for src in variants:
        stage_image(image(src), [archive], dest, unpacked=unpacked)
        expected = tmp_path / "expected"
        stage_image(image(src), [archive], expected)
        assert listing(dest) == listing(expected)
    assert len({unpacked_key(src, archive) for src in variants}) == len(os.listdir(unpacked)) == 4


def test_a_failed_unpack_leaves_no_entry(tmp_path):
    archive = by_hash(write_tar(tmp_path / "docker.tgz", "tar.gz", [*DOCKER, F("../evil", b"")]))
    unpacked = tmp_path / ".unpacked"
    with pytest.raises(BakeryError, match="member '../evil' has a '..' component"):
        stage_image(image(source("docker.tgz", "tar.gz", Install("docker/*", "/usr/bin/"))), [archive],
                    tmp_path / "out", unpacked=unpacked)
    assert os.listdir(unpacked) == []
    assert sorted(os.listdir(tmp_path)) == [".unpacked", archive.name]
    assert children() == []
    assert files._temporaries == {}    # discarded: a later stop has nothing of it to remove


def test_restaging_from_the_cache_keeps_the_cache_intact(tmp_path):
    archive = by_hash(write_tar(tmp_path / "docker.tgz", "tar.gz", DOCKER))
    unpacked, dest = tmp_path / ".unpacked", tmp_path / "out"
    img = image(source("docker.tgz", "tar.gz", Install("docker/*", "/usr/bin/")))
    for _ in range(3):
        stage_image(img, [archive], dest, unpacked=unpacked)
        assert listing(dest) == EXPECTED_DOCKER
        # renamed into place and forgotten, the replaced tree removed: nothing kept for a stop
        assert files._temporaries == {}
        assert sorted(os.listdir(tmp_path)) == [".unpacked", archive.name, "out"]
    cached = next(unpacked.iterdir()) / "tree/usr/bin/docker"
    assert cached.read_bytes() == make_elf("x86-64", b"cli") and cached.stat().st_nlink == 2
    shutil.rmtree(dest)
    assert cached.stat().st_nlink == 1


def test_a_cache_on_another_file_system_is_copied_from(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's temp dir")
    archive = by_hash(write_tar(tmp_path / "docker.tgz", "tar.gz", DOCKER))
    unpacked = shm / f"bakery-test-{os.getpid()}"
    try:
        img = image(source("docker.tgz", "tar.gz", Install("docker/*", "/usr/bin/")))
        stage_image(img, [archive], tmp_path / "out", unpacked=unpacked)
        assert listing(tmp_path / "out") == EXPECTED_DOCKER
        assert (tmp_path / "out/usr/bin/docker").stat().st_nlink == 1
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)


def test_a_damaged_entry_is_reported_with_how_to_recover(tmp_path):
    archive = by_hash(write_tar(tmp_path / "docker.tgz", "tar.gz", DOCKER))
    img, unpacked = image(source("docker.tgz", "tar.gz", Install("docker/*", "/usr/bin/"))), tmp_path / ".u"
    stage_image(img, [archive], tmp_path / "out", unpacked=unpacked)
    (next(unpacked.iterdir()) / "tree/usr/bin/dockerd").unlink()
    with pytest.raises(BakeryError) as err:
        stage_image(img, [archive], tmp_path / "out", unpacked=unpacked)
    assert "the unpacked copy of docker.tgz is damaged" in err.value.message
    assert err.value.hint == f"delete {unpacked} (a cache, safe to delete) and stage again"
    shutil.rmtree(unpacked)
    stage_image(img, [archive], tmp_path / "out", unpacked=unpacked)
    assert listing(tmp_path / "out") == EXPECTED_DOCKER
