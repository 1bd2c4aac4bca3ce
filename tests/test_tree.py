"""tree: clashes between sources and files/, never writing through a symlink."""
from __future__ import annotations


import pytest

from sysext_bakery.errors import BakeryError
from sysext_bakery.model.image import Install
from sysext_bakery.build.stage import stage_image
from archives import ORIGIN, F, L, write_tar, source, image, DOCKER


def test_two_members_on_one_destination(tmp_path):
    archive = write_tar(tmp_path / "a.tgz", "tar.gz", [F("x/tool", b"1", 0o755), F("y/tool", b"2", 0o755)])
    src = source("a.tgz", "tar.gz", Install("x/*", "/usr/bin/"), Install("y/*", "/usr/bin/"))
    with pytest.raises(BakeryError) as err:
        stage_image(image(src), [archive], tmp_path / "out")
    assert err.value.message == (f"usr/bin/tool: {ORIGIN}: a.tgz: 'y/tool' clashes with "
                                 f"{ORIGIN}: a.tgz: 'x/tool'")
    assert not (tmp_path / "out").exists()


def test_files_dir_clashing_with_an_installed_file(tmp_path):
    archive = write_tar(tmp_path / "docker.tgz", "tar.gz", DOCKER)
    files = tmp_path / "files"
    (files / "usr/bin").mkdir(parents=True)
    (files / "usr/bin/docker").write_text("#!/bin/sh\n")
    img = image(source("docker.tgz", "tar.gz", Install("docker/*", "/usr/bin/")), files_dir=files)
    with pytest.raises(BakeryError) as err:
        stage_image(img, [archive], tmp_path / "out")
    assert err.value.message == (f"usr/bin/docker: {files}/usr/bin/docker clashes with "
                                 f"{ORIGIN}: docker.tgz: 'docker/docker'")
    assert not (tmp_path / "out").exists()


def test_file_where_a_directory_is_needed_clashes(tmp_path):
    archive = write_tar(tmp_path / "a.tgz", "tar.gz", [F("tool", b"x", 0o755), F("lib/x.so", b"y")])
    src = source("a.tgz", "tar.gz", Install("tool", "/usr/lib/tool"), Install("lib/*", "/usr/lib/tool/"))
    with pytest.raises(BakeryError, match="^usr/lib/tool: .*'lib/x.so' clashes with .*'tool'"):
        stage_image(image(src), [archive], tmp_path / "out")


def test_symlinked_directory_is_never_written_through(tmp_path):
    # "lib" is a symlink staying inside the archive; installing it and then files below it
    # must not write into wherever the link points.
    archive = write_tar(tmp_path / "a.tgz", "tar.gz", [L("lib", "real"), F("lib/x.so", b"y")])
    src = source("a.tgz", "tar.gz", Install("lib", "/usr/lib/pkg"), Install("lib/*", "/usr/lib/pkg/"))
    with pytest.raises(BakeryError, match="^usr/lib/pkg: .*clashes"):
        stage_image(image(src), [archive], tmp_path / "out")
