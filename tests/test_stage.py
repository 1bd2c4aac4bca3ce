"""stage: files/, drop-ins, extension-release, validation, atomicity of the whole stage step."""
from __future__ import annotations

import os
from dataclasses import replace

import pytest

from sysext_bakery.errors import BakeryError
from sysext_bakery.model.image import Install
from sysext_bakery.build.stage import stage_image
from elf import make_elf
from archives import (RELEASE, F, D, write_tar, write_zip, source, image, listing, DOCKER,
                      EXPECTED_DOCKER)


def test_files_dir_units_dropins_and_flatcar_release(tmp_path):
    archive = write_tar(tmp_path / "docker.tgz", "tar.gz", DOCKER)
    files = tmp_path / "recipes/docker/files"
    units = files / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    (units / "docker.socket").write_text("[Socket]\n")
    (units / "containerd.service").write_text("[Service]\n")
    os.chmod(units / "containerd.service", 0o600)
    (files / "usr/bin").mkdir()
    (files / "usr/bin/dockerd-wrapper").write_text("#!/bin/sh\n")
    os.chmod(files / "usr/bin/dockerd-wrapper", 0o4711)            # setuid is normalised away
    os.symlink("docker", files / "usr/bin/docker-compat")
    img = image(source("docker.tgz", "tar.gz", Install("docker/*", "/usr/bin/")), files_dir=files,
                upholds=(("sockets.target", ("docker.socket",)),
                         ("multi-user.target", ("containerd.service", "docker.socket"))),
                reload_manager=True, os_id="flatcar", sysext_level="1.0")
    dest = tmp_path / "out"
    stage_image(img, [archive], dest)
    got = listing(dest)
    sysd = "usr/lib/systemd/system"
    assert got[f"{sysd}/containerd.service"] == ("file 0644", "[Service]\n")
    assert got["usr/bin/dockerd-wrapper"] == ("file 0755", "#!/bin/sh\n")
    assert got["usr/bin/docker-compat"] == ("link", "docker")
    dropins = {k: v for k, v in got.items() if ".target.d" in k}
    assert dropins == {
        f"{sysd}/sockets.target.d": ("dir 0755", ""),
        f"{sysd}/sockets.target.d/10-docker-docker.socket.conf": ("file 0644", "[Unit]\nUpholds=docker.socket\n"),
        f"{sysd}/multi-user.target.d": ("dir 0755", ""),
        f"{sysd}/multi-user.target.d/10-docker-containerd.service.conf":
            ("file 0644", "[Unit]\nUpholds=containerd.service\n"),
        f"{sysd}/multi-user.target.d/10-docker-docker.socket.conf":
            ("file 0644", "[Unit]\nUpholds=docker.socket\n"),
    }
    assert (dest / RELEASE).read_text() == (
        "ID=flatcar\nSYSEXT_LEVEL=1.0\nARCHITECTURE=x86-64\nSYSEXT_VERSION_ID=24.0.9\n"
        "EXTENSION_RELOAD_MANAGER=1\n")


def test_the_tree_is_a_function_of_the_inputs(tmp_path):
    archive = write_tar(tmp_path / "docker.tgz", "tar.gz", DOCKER)
    img = image(source("docker.tgz", "tar.gz", Install("docker/*", "/usr/bin/")))
    old = os.umask(0o077)      # a strict umask must not leak into the modes
    try:
        stage_image(img, [archive], tmp_path / "a")
    finally:
        os.umask(old)
    stage_image(img, [archive], tmp_path / "b")
    assert listing(tmp_path / "a") == listing(tmp_path / "b") == EXPECTED_DOCKER


def test_restaging_replaces_the_old_tree(tmp_path):
    archive = write_tar(tmp_path / "docker.tgz", "tar.gz", DOCKER)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "stale").write_text("old")
    stage_image(image(source("docker.tgz", "tar.gz", Install("docker/*", "/usr/bin/"))), [archive], dest)
    assert listing(dest) == EXPECTED_DOCKER
    assert sorted(os.listdir(tmp_path)) == ["docker.tgz", "out"]


def test_a_failed_stage_keeps_the_previous_tree(tmp_path):
    archive = write_tar(tmp_path / "docker.tgz", "tar.gz", DOCKER)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "previous").write_text("kept")
    with pytest.raises(BakeryError):
        stage_image(image(source("docker.tgz", "tar.gz", Install("nope/*", "/usr/bin/"))), [archive], dest)
    assert os.listdir(dest) == ["previous"]
    assert sorted(os.listdir(tmp_path)) == ["docker.tgz", "out"]


def test_files_dir_may_only_hold_usr_and_opt(tmp_path):
    archive = write_tar(tmp_path / "docker.tgz", "tar.gz", DOCKER)
    files = tmp_path / "files"
    (files / "etc/docker").mkdir(parents=True)
    img = image(source("docker.tgz", "tar.gz", Install("docker/*", "/usr/bin/")), files_dir=files)
    with pytest.raises(BakeryError) as err:
        stage_image(img, [archive], tmp_path / "out")
    assert err.value.message == f"{files}/etc: a recipe's files/ may only hold the directories usr/ and opt/"


def test_wrong_arch_binary_fails_validation_and_leaves_nothing(tmp_path):
    archive = write_tar(tmp_path / "docker.tgz", "tar.gz", DOCKER)
    dest = tmp_path / "stage/docker-24.0.9-arm64"
    with pytest.raises(BakeryError) as err:
        stage_image(image(source("docker.tgz", "tar.gz", Install("docker/*", "/usr/bin/")), arch="arm64"),
                    [archive], dest)
    assert "usr/bin/docker: ELF machine x86-64, image arch arm64" in err.value.message
    assert "usr/bin/dockerd: ELF machine x86-64, image arch arm64" in err.value.message
    assert not dest.exists() and os.listdir(dest.parent) == []


def test_dropin_for_a_unit_not_shipped_fails_validation(tmp_path):
    archive = write_tar(tmp_path / "docker.tgz", "tar.gz", DOCKER)
    img = image(source("docker.tgz", "tar.gz", Install("docker/*", "/usr/bin/")),
                upholds=(("multi-user.target", ("dockre.service",)),))
    with pytest.raises(BakeryError) as err:
        stage_image(img, [archive], tmp_path / "out")
    assert ("usr/lib/systemd/system/multi-user.target.d/10-docker-dockre.service.conf: "
            "Upholds=dockre.service, but usr/lib/systemd/system/dockre.service is not in the image") \
        in err.value.message


def test_multiple_sources(tmp_path):
    a = write_tar(tmp_path / "docker.tgz", "tar.gz", DOCKER)
    b = write_zip(tmp_path / "compose.zip", [F("docker-compose", make_elf("x86-64", b"compose"), 0o755)])
    img = image(source("docker.tgz", "tar.gz", Install("docker/docker*", "/usr/bin/")),
                replace(source("compose.zip", "zip", Install("docker-compose", "/usr/libexec/docker/cli-plugins/")),
                        origin="recipes/docker.toml: sources[1]"))
    dest = tmp_path / "out"
    stage_image(img, [a, b], dest)
    got = listing(dest)
    assert "usr/bin/README" not in got
    assert got["usr/libexec/docker/cli-plugins/docker-compose"][0] == "file 0755"


@pytest.mark.parametrize("reload_manager, with_unit, expected", [
    (None, True, True), (None, False, False), (False, True, False), (True, False, True)])
def test_reload_manager_follows_units_from_any_source(tmp_path, reload_manager, with_unit, expected):
    entries = [D("t"), F("t/tool", make_elf("x86-64"), 0o755)]
    installs = [Install("t/tool", "/usr/bin/")]
    if with_unit:   # a unit that comes from the archive, not from files/ or drop-ins
        entries.append(F("t/tool.service", b"[Service]\nExecStart=/usr/bin/tool\n"))
        installs.append(Install("t/tool.service", "/usr/lib/systemd/system/"))
    archive = write_tar(tmp_path / "t.tar.gz", "tar.gz", entries)
    dest = tmp_path / "out"
    stage_image(image(source("t.tar.gz", "tar.gz", *installs), reload_manager=reload_manager),
                [archive], dest)
    release = next((dest / "usr/lib/extension-release.d").iterdir()).read_text()
    assert ("EXTENSION_RELOAD_MANAGER=1" in release) == expected
