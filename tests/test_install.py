"""install: install-map patterns, modes, setuid, hardlinks, patterns that match wrongly."""
from __future__ import annotations

import stat

import pytest

from sysext_bakery.errors import BakeryError
from sysext_bakery.model.image import Install
from sysext_bakery.build.stage import stage_image
from elf import make_elf
from archives import ORIGIN, F, D, L, H, write_tar, source, image, listing, DOCKER, stage_fails


def test_install_patterns(tmp_path):
    entries = [
        D("pkg"), D("pkg/bin"), D("pkg/lib"), D("pkg/lib/plugins"),
        F("pkg/bin/tool", make_elf("x86-64"), 0o755),
        F("pkg/bin/helper", b"#!/bin/sh\n", 0o700),
        F("pkg/lib/libx.so", make_elf("x86-64", b"lib"), 0o755),
        F("pkg/lib/plugins/a.so", make_elf("x86-64", b"a"), 0o644),
        F("pkg/LICENSE", b"license"),
        L("pkg/bin/tool-alias", "tool"),
    ]
    archive = write_tar(tmp_path / "pkg.tar.xz", "tar.xz", entries)
    src = source("pkg.tar.xz", "tar.xz",
                 Install("pkg/bin/*", "/usr/bin/"),                   # "*" stays in one directory
                 Install("pkg/lib/**", "/opt/pkg/lib/"),              # "**" keeps the sub-path
                 Install("pkg/LICENSE", "/usr/share/doc/pkg/COPYING", mode=0o444),
                 Install("pkg/bin/tool", "/opt/pkg/bin/"))            # literal into a directory
    dest = tmp_path / "out"
    stage_image(image(src), [archive], dest)
    got = listing(dest)
    assert {k: v[0] for k, v in got.items() if not k.startswith("usr/lib")} == {
        "usr": "dir 0755",
        "usr/bin": "dir 0755",
        "usr/bin/tool": "file 0755",
        "usr/bin/helper": "file 0755",           # any exec bit -> 0755
        "usr/bin/tool-alias": "link",
        "usr/share": "dir 0755", "usr/share/doc": "dir 0755", "usr/share/doc/pkg": "dir 0755",
        "usr/share/doc/pkg/COPYING": "file 0444",
        "opt": "dir 0755", "opt/pkg": "dir 0755",
        "opt/pkg/lib": "dir 0755",
        "opt/pkg/lib/libx.so": "file 0755",
        "opt/pkg/lib/plugins": "dir 0755",
        "opt/pkg/lib/plugins/a.so": "file 0644",
        "opt/pkg/bin": "dir 0755",
        "opt/pkg/bin/tool": "file 0755",
    }
    assert got["usr/bin/tool-alias"] == ("link", "tool")
    assert got["opt/pkg/bin/tool"] == got["usr/bin/tool"]   # one member installed twice
    assert got["usr/share/doc/pkg/COPYING"][1] == "license"


@pytest.mark.parametrize("pattern, expected", [
    ("*/tool", {"usr/bin/tool"}),                              # a leading glob: own name only
    ("*/*/*.so", {"usr/bin/a.so"}),                           # "*" never crosses "/"
    ("wasmtime-v1-x86_64-linux/**", {"usr/bin/tool", "usr/bin/lib/a.so", "usr/bin/lib/deep/b.so"}),
    ("*/lib/**", {"usr/bin/a.so", "usr/bin/deep/b.so"}),       # kept from the "**" on
])
def test_globbed_directories_are_not_kept(tmp_path, pattern, expected):
    top = "wasmtime-v1-x86_64-linux"
    archive = write_tar(tmp_path / "w.tar.gz", "tar.gz", [
        D(top), F(f"{top}/tool", make_elf("x86-64"), 0o755), D(f"{top}/lib"),
        F(f"{top}/lib/a.so", make_elf("x86-64", b"a")), D(f"{top}/lib/deep"),
        F(f"{top}/lib/deep/b.so", make_elf("x86-64", b"b"))])
    dest = tmp_path / "out"
    stage_image(image(source("w.tar.gz", "tar.gz", Install(pattern, "/usr/bin/"))), [archive], dest)
    files = {k for k, v in listing(dest).items() if v[0].startswith("file") and k.startswith("usr/bin")}
    assert files == expected


def test_hardlinks_become_copies_even_when_only_the_link_is_selected(tmp_path):
    entries = [F("bin/clang", make_elf("x86-64", b"clang"), 0o755), H("bin/clang++", "bin/clang"),
               H("bin/cc", "bin/clang")]
    archive = write_tar(tmp_path / "llvm.tar.gz", "tar.gz", entries)
    dest = tmp_path / "out"
    stage_image(image(source("llvm.tar.gz", "tar.gz", Install("bin/clang++", "/usr/bin/"))),
                [archive], dest)
    assert (dest / "usr/bin/clang++").read_bytes() == make_elf("x86-64", b"clang")
    assert not (dest / "usr/bin/clang").exists()
    dest2 = tmp_path / "out2"
    stage_image(image(source("llvm.tar.gz", "tar.gz", Install("bin/*", "/usr/bin/"))), [archive], dest2)
    got = listing(dest2)
    assert got["usr/bin/cc"] == got["usr/bin/clang++"] == got["usr/bin/clang"]


def test_setuid_is_refused(tmp_path):
    msg = stage_fails(tmp_path, [F("bin/newuidmap", make_elf("x86-64"), 0o4755)],
                      Install("bin/*", "/usr/bin/"))
    assert msg == (f"{ORIGIN}: evil.tgz: member 'bin/newuidmap' is setuid/setgid (mode 4755)\n"
                   "  hint: set allow-setuid = true on this source if the tool really needs it")


def test_setgid_from_a_zip_is_refused(tmp_path):
    msg = stage_fails(tmp_path, [F("bin/x", b"#!/bin/sh\n", 0o2755)], Install("bin/*", "/usr/bin/"),
                      kind="zip")
    assert "member 'bin/x' is setuid/setgid (mode 2755)" in msg


def test_setuid_is_kept_when_allowed(tmp_path):
    archive = write_tar(tmp_path / "shadow.tgz", "tar.gz", [F("bin/newuidmap", make_elf("x86-64"), 0o4755)])
    dest = tmp_path / "out"
    src = source("shadow.tgz", "tar.gz", Install("bin/*", "/usr/bin/"), allow_setuid=True)
    stage_image(image(src), [archive], dest)
    assert stat.S_IMODE((dest / "usr/bin/newuidmap").stat().st_mode) == 0o4755


def test_setuid_member_not_installed_is_fine(tmp_path):
    archive = write_tar(tmp_path / "a.tgz", "tar.gz",
                        [F("bin/tool", make_elf("x86-64"), 0o755), F("sbin/su", b"", 0o4755)])
    dest = tmp_path / "out"
    stage_image(image(source("a.tgz", "tar.gz", Install("bin/*", "/usr/bin/"))), [archive], dest)
    assert (dest / "usr/bin/tool").is_file()


def test_pattern_matching_nothing(tmp_path):
    archive = write_tar(tmp_path / "docker-24.0.9.tgz", "tar.gz", DOCKER)
    dest = tmp_path / "out"
    src = source("docker-24.0.9.tgz", "tar.gz", Install("docker/*", "/usr/bin/"),
                 Install("bin/*", "/usr/bin/"))
    with pytest.raises(BakeryError) as err:
        stage_image(image(src), [archive], dest)
    assert err.value.message == f"{ORIGIN}: install: pattern 'bin/*' matched nothing in docker-24.0.9.tgz"
    assert err.value.hint.endswith("the archive starts with: docker, docker/docker, docker/dockerd, "
                                   "docker/README")
    assert not dest.exists()


def test_star_does_not_cross_directories(tmp_path):
    archive = write_tar(tmp_path / "a.tgz", "tar.gz", [F("pkg/bin/tool", b"x", 0o755)])
    with pytest.raises(BakeryError, match="pattern 'pkg/\\*' matched nothing"):
        stage_image(image(source("a.tgz", "tar.gz", Install("pkg/*", "/usr/bin/"))), [archive],
                    tmp_path / "out")


def test_several_members_on_a_single_file_destination(tmp_path):
    archive = write_tar(tmp_path / "a.tgz", "tar.gz", DOCKER)
    with pytest.raises(BakeryError) as err:
        stage_image(image(source("a.tgz", "tar.gz", Install("docker/*", "/usr/bin/docker"))), [archive],
                    tmp_path / "out")
    assert err.value.message == (f"{ORIGIN}: install: pattern 'docker/*' matches several members "
                                 "('docker/docker', 'docker/dockerd') but '/usr/bin/docker' is one file")
    assert "end the destination with '/'" in err.value.hint
