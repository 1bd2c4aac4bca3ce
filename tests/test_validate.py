"""validate: every rule with its message, and all problems reported in one error."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from elf import EM_AARCH64, EM_X86_64, make_elf
from sysext_bakery.errors import BakeryError
from sysext_bakery.build.validate import elf_header, validate_tree

RELEASE = "usr/lib/extension-release.d/extension-release.docker"
UNITS = "usr/lib/systemd/system"


def put(tree: Path, rel: str, data: bytes | str = b"") -> Path:
    path = tree / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def good_tree(tmp_path: Path, arch: str = "x86-64") -> Path:
    tree = tmp_path / "tree"
    put(tree, "usr/bin/docker", make_elf(arch, b"docker"))
    put(tree, "usr/bin/script", "#!/bin/sh\n")
    put(tree, "opt/docker/lib/libx.so", make_elf(arch))
    put(tree, f"{UNITS}/docker.socket", "[Socket]\n")
    put(tree, f"{UNITS}/getty@.service", "[Service]\n")
    put(tree, f"{UNITS}/sockets.target.d/10-docker-docker.socket.conf", "[Unit]\nUpholds=docker.socket\n")
    put(tree, f"{UNITS}/docker.socket.d/10-deps.conf",
        "[Unit]\n# Wants=commented.service\nWants=network-online.target getty@tty1.service\n")
    put(tree, RELEASE, f"ID=_any\nARCHITECTURE={arch}\nSYSEXT_VERSION_ID=24.0.9\n")
    return tree


def problems(tree: Path, arch: str = "x86-64") -> list[str]:
    with pytest.raises(BakeryError) as err:
        validate_tree(tree, "docker", arch)
    head, *lines = err.value.message.split("\n")
    assert head == f"docker ({arch}): the staged tree is not a valid sysext:"
    assert err.value.hint
    return [line.removeprefix("  ") for line in lines]


@pytest.mark.parametrize("arch", ["x86-64", "arm64"])
def test_good_tree_passes(tmp_path, arch):
    validate_tree(good_tree(tmp_path, arch), "docker", arch)


def test_only_usr_and_opt_at_the_top(tmp_path):
    tree = good_tree(tmp_path)
    put(tree, "etc/docker/daemon.json", "{}")
    put(tree, "var/lib/x", "")
    put(tree, "README", "")
    assert problems(tree) == [
        "README: only usr/ and opt/ may be at the top of a sysext",
        "etc: a sysext cannot ship /etc (host configuration); put defaults under usr/",
        "var: only usr/ and opt/ may be at the top of a sysext",
    ]


def test_top_level_symlink_is_refused(tmp_path):
    tree = good_tree(tmp_path)
    (tree / "opt").rename(tree / "real-opt")
    os.symlink("real-opt", tree / "opt")
    assert problems(tree) == ["opt: must be a directory",
                              "real-opt: only usr/ and opt/ may be at the top of a sysext"]


def test_os_release_is_refused(tmp_path):
    tree = good_tree(tmp_path)
    put(tree, "usr/lib/os-release", "ID=flatcar\n")
    assert problems(tree) == ["usr/lib/os-release: a sysext must not replace the host's os-release"]


def test_usr_sbin_is_refused(tmp_path):
    tree = good_tree(tmp_path)
    put(tree, "usr/sbin/dockerd", "#!/bin/sh\n")
    put(tree, "usr/sbin/x/y", "")
    assert problems(tree) == [
        "usr/sbin: must not exist (on Flatcar it is a symlink to bin and the image would replace "
        "it); install into usr/bin instead; found usr/sbin/dockerd, usr/sbin/x, usr/sbin/x/y"]


def test_empty_usr_sbin_is_refused_too(tmp_path):
    tree = good_tree(tmp_path)
    (tree / "usr/sbin").mkdir()
    assert problems(tree)[0].startswith("usr/sbin: must not exist")


def test_arm64_image_with_an_x86_64_binary(tmp_path):
    tree = good_tree(tmp_path, "arm64")
    put(tree, "usr/bin/docker", make_elf("x86-64"))
    assert problems(tree, "arm64") == ["usr/bin/docker: ELF machine x86-64, image arch arm64"]


def test_x86_64_image_with_arm64_and_32_bit_binaries(tmp_path):
    tree = good_tree(tmp_path)
    put(tree, "opt/docker/lib/libx.so", make_elf("arm64"))
    i386 = bytearray(make_elf("x86-64"))
    i386[4] = 1                                     # ELFCLASS32
    struct.pack_into("<H", i386, 18, 3)             # EM_386
    put(tree, "usr/bin/old", bytes(i386))
    x32 = bytearray(make_elf("x86-64"))
    x32[4] = 1                                      # 32-bit class, x86-64 machine (x32 ABI)
    put(tree, "usr/bin/x32", bytes(x32))
    assert problems(tree) == [
        "opt/docker/lib/libx.so: ELF machine arm64, image arch x86-64",
        "usr/bin/old: ELF machine x86 (i386), image arch x86-64",
        "usr/bin/x32: 32-bit ELF, image arch x86-64 is 64-bit",
    ]


def test_symlinks_to_foreign_binaries_are_not_followed(tmp_path):
    tree = good_tree(tmp_path)
    outside = put(tmp_path, "host/arm-binary", make_elf("arm64"))
    os.symlink(outside, tree / "usr/bin/link")
    validate_tree(tree, "docker", "x86-64")


def test_elf_header(tmp_path):
    assert elf_header(put(tmp_path, "a", make_elf("x86-64"))) == (2, EM_X86_64)
    assert elf_header(put(tmp_path, "b", make_elf("arm64", b"x" * 1000))) == (2, EM_AARCH64)
    big_endian = bytearray(make_elf("arm64"))
    big_endian[5] = 2                                   # ELFDATA2MSB
    struct.pack_into(">H", big_endian, 18, 22)          # EM_S390
    assert elf_header(put(tmp_path, "c", bytes(big_endian)))[1] == 22
    assert elf_header(put(tmp_path, "d", b"#!/bin/sh\n")) is None
    assert elf_header(put(tmp_path, "e", b"\x7fELF")) is None      # too short for e_machine
    assert elf_header(put(tmp_path, "f", b"")) is None


def test_extension_release_missing(tmp_path):
    tree = good_tree(tmp_path)
    (tree / RELEASE).unlink()
    assert problems(tree) == [
        f"{RELEASE}: missing or not a regular file (systemd-sysext refuses the image without it)"]


def test_extension_release_named_for_another_image(tmp_path):
    tree = good_tree(tmp_path)
    (tree / RELEASE).rename(tree / "usr/lib/extension-release.d/extension-release.docker-24")
    assert problems(tree) == [
        "usr/lib/extension-release.d/extension-release.docker-24: named for another image "
        "(systemd-sysext reads only extension-release.docker)",
        f"{RELEASE}: missing or not a regular file (systemd-sysext refuses the image without it)",
    ]


def test_extension_release_architecture_mismatch(tmp_path):
    tree = good_tree(tmp_path, "arm64")
    put(tree, RELEASE, 'ID=flatcar\nSYSEXT_LEVEL=1.0\nARCHITECTURE="x86-64"\n')
    assert problems(tree, "arm64") == [f"{RELEASE}: ARCHITECTURE=x86-64, image arch arm64"]


def test_extension_release_without_id_or_architecture(tmp_path):
    tree = good_tree(tmp_path)
    put(tree, RELEASE, "SYSEXT_VERSION_ID=1\n")
    assert problems(tree) == [f"{RELEASE}: no ID= (use ID=_any for any OS)",
                              f"{RELEASE}: ARCHITECTURE=, image arch x86-64"]


def test_dropin_naming_a_missing_unit(tmp_path):
    tree = good_tree(tmp_path)
    put(tree, f"{UNITS}/multi-user.target.d/10-docker-containerd.service.conf",
        "[Unit]\nUpholds=containerd.service\n")
    put(tree, f"{UNITS}/docker.socket.d/20-more.conf",
        "[Unit]\nRequires = docker.service foo@bar.service\nWants=\n")
    assert problems(tree) == [
        f"{UNITS}/docker.socket.d/20-more.conf: Requires=docker.service, but {UNITS}/docker.service "
        "is not in the image",
        f"{UNITS}/docker.socket.d/20-more.conf: Requires=foo@bar.service, but {UNITS}/foo@bar.service "
        "is not in the image",
        f"{UNITS}/multi-user.target.d/10-docker-containerd.service.conf: Upholds=containerd.service, "
        f"but {UNITS}/containerd.service is not in the image",
    ]


def test_unit_path_tricks_are_not_units(tmp_path):
    tree = good_tree(tmp_path)
    put(tree, f"{UNITS}/multi-user.target.d/10-x.conf", "[Unit]\nWants=../../../bin/docker\n")
    assert problems(tree) == [
        f"{UNITS}/multi-user.target.d/10-x.conf: Wants=../../../bin/docker, but "
        f"{UNITS}/../../../bin/docker is not in the image"]


def test_every_problem_in_one_error(tmp_path):
    tree = good_tree(tmp_path, "arm64")
    put(tree, "etc/x", "")
    put(tree, "usr/lib/os-release", "")
    put(tree, "usr/sbin/y", "")
    put(tree, f"{UNITS}/a.target.d/10-docker-b.service.conf", "[Unit]\nUpholds=b.service\n")
    got = problems(tree, "x86-64")
    assert [p.split(":")[0] for p in got] == [
        "etc", "usr/lib/os-release", "usr/sbin",
        "opt/docker/lib/libx.so", "usr/bin/docker",
        RELEASE,
        f"{UNITS}/a.target.d/10-docker-b.service.conf",
    ]


def test_unknown_arch(tmp_path):
    assert problems(good_tree(tmp_path), "riscv64")[0] == \
        "image arch 'riscv64' is unknown (known: x86-64, arm64)"


def test_a_file_or_link_where_the_host_has_a_directory_is_refused(tmp_path):
    tree = good_tree(tmp_path)
    put(tree, "usr/share", "not a directory")
    os.symlink("lib", tree / "usr/lib64")
    assert problems(tree) == [
        "usr/lib64: must be a directory (a file or link here would hide the host's whole "
        "/usr/lib64 once merged)",
        "usr/share: must be a directory (a file or link here would hide the host's whole "
        "/usr/share once merged)"]
