"""install: install-map patterns, modes, setuid, hardlinks, patterns that match wrongly."""
from __future__ import annotations

import bz2
import stat

import pytest

from conftest import lock_for
from sysext_bakery.build.readback import read_file, read_image

from sysext_bakery.errors import BakeryError
from sysext_bakery.model.image import Install, Symlink
from sysext_bakery.build.stage import stage_image
from sysext_bakery.build.tree import resolve_in_tree
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


# --- replace: upstream unit files with rewritten paths --------------------------------------

TAILSCALED_UNIT = (b"[Unit]\nDescription=Tailscale node agent\n\n[Service]\n"
                   b"ExecStartPre=/usr/sbin/tailscaled --cleanup\n"
                   b"ExecStart=/usr/sbin/tailscaled --state=/var/lib/tailscale/tailscaled.state\n"
                   b"ExecStopPost=/usr/sbin/tailscaled --cleanup\n")
TAILSCALE = [
    D("tailscale_1.80.2_amd64"), D("tailscale_1.80.2_amd64/systemd"),
    F("tailscale_1.80.2_amd64/tailscale", make_elf("x86-64", b"cli"), 0o755),
    F("tailscale_1.80.2_amd64/tailscaled", make_elf("x86-64", b"daemon"), 0o755),
    F("tailscale_1.80.2_amd64/systemd/tailscaled.service", TAILSCALED_UNIT),
    F("tailscale_1.80.2_amd64/systemd/tailscaled.defaults", b"PORT=\"41641\"\n"),
]
UNIT = "usr/lib/systemd/system/tailscaled.service"


def tailscale_source(tmp_path, replace=(("/usr/sbin/tailscaled", "/usr/bin/tailscaled"),),
                     pattern="tailscale_*/systemd/tailscaled.service"):
    archive = write_tar(tmp_path / "tailscale_1.80.2_amd64.tgz", "tar.gz", TAILSCALE)
    return archive, source(archive.name, "tar.gz",
                           Install("tailscale_*/tailscale*", "/usr/bin/"),
                           Install(pattern, "/" + UNIT, replace=tuple(replace)))


def test_unit_from_the_archive_is_rewritten_and_validated(tmp_path):
    archive, src = tailscale_source(tmp_path)
    dest = tmp_path / "out"
    stage_image(image(src), [archive], dest)
    text = (dest / UNIT).read_text()
    assert "/usr/sbin" not in text
    assert text == TAILSCALED_UNIT.decode().replace("/usr/sbin/tailscaled", "/usr/bin/tailscaled")
    assert stat.S_IMODE((dest / UNIT).stat().st_mode) == 0o644
    # the program the unit starts is the one the image ships
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    program = dest / exec_start.split("=", 1)[1].split()[0].lstrip("/")
    assert program.is_file() and program.stat().st_mode & 0o111
    assert (dest / "usr/bin/tailscaled").read_bytes() == make_elf("x86-64", b"daemon")


def test_unit_starting_a_program_the_image_ships_elsewhere_fails_validation(tmp_path):
    archive, src = tailscale_source(tmp_path, replace=())
    with pytest.raises(BakeryError) as err:
        stage_image(image(src), [archive], tmp_path / "out")
    assert (f"{UNIT}: ExecStart=/usr/sbin/tailscaled, but the image ships usr/bin/tailscaled, "
            "not usr/sbin/tailscaled") in err.value.message
    assert f"{UNIT}: ExecStartPre=/usr/sbin/tailscaled" in err.value.message
    assert not (tmp_path / "out").exists()


def test_replacements_apply_in_order_to_every_file_of_the_entry(tmp_path):
    archive = write_tar(tmp_path / "t.tgz", "tar.gz", TAILSCALE)
    src = source("t.tgz", "tar.gz", Install("tailscale_*/tailscale*", "/usr/bin/"),
                 Install("tailscale_*/systemd/*", "/usr/share/tailscale/",
                         replace=(("/usr/sbin/", "/usr/bin/"), ("41641", "41642"))))
    dest = tmp_path / "out"
    stage_image(image(src), [archive], dest)
    assert (dest / "usr/share/tailscale/tailscaled.defaults").read_text() == 'PORT="41642"\n'
    assert "ExecStart=/usr/bin/tailscaled" in (dest / "usr/share/tailscale/tailscaled.service").read_text()


def test_a_replacement_that_matches_nothing_is_refused(tmp_path):
    archive, src = tailscale_source(tmp_path, replace=(("/usr/sbin/tailscaled", "/usr/bin/tailscaled"),
                                                       ("/usr/local/sbin/", "/usr/bin/")))
    with pytest.raises(BakeryError) as err:
        stage_image(image(src), [archive], tmp_path / "out")
    assert err.value.message == (
        f'{ORIGIN}: install."tailscale_*/systemd/tailscaled.service".replace."/usr/local/sbin/": '
        "matched nothing in tailscale_1.80.2_amd64/systemd/tailscaled.service "
        "(tailscale_1.80.2_amd64.tgz)")
    assert "upstream's file changed" in err.value.hint
    assert not (tmp_path / "out").exists()


def test_replace_refuses_an_elf_binary(tmp_path):
    archive, src = tailscale_source(tmp_path, pattern="tailscale_*/tailscaled")
    src = source(archive.name, "tar.gz", Install("tailscale_*/tailscaled", "/usr/bin/tailscaled",
                                                 replace=(("/var/lib", "/srv"),)))
    with pytest.raises(BakeryError, match="member 'tailscale_1.80.2_amd64/tailscaled' is an ELF "
                                          "binary; replace only rewrites text files"):
        stage_image(image(src), [archive], tmp_path / "out")


def test_replace_refuses_a_binary_that_is_not_elf(tmp_path):
    archive = write_tar(tmp_path / "t.tgz", "tar.gz", [F("data.bin", b"\x00\x01/usr/sbin/\xff")])
    src = source("t.tgz", "tar.gz", Install("data.bin", "/usr/share/t/data.bin",
                                            replace=(("/usr/sbin/", "/usr/bin/"),)))
    with pytest.raises(BakeryError, match="is not a text file"):
        stage_image(image(src), [archive], tmp_path / "out")


# --- [symlinks] -------------------------------------------------------------------------------

K3S_LINKS = (Symlink("/usr/bin/kubectl", "k3s", 'recipes/k3s.toml: symlinks."/usr/bin/kubectl"'),
             Symlink("/usr/bin/crictl", "/usr/bin/k3s", 'recipes/k3s.toml: symlinks."/usr/bin/crictl"'),
             Symlink("/usr/local/bin/ctr", "../../bin/k3s", 'recipes/k3s.toml: symlinks."/usr/local/bin/ctr"'))


def k3s(tmp_path):
    download = tmp_path / "k3s"
    download.write_bytes(make_elf("x86-64", b"k3s"))
    return download, source("k3s", "file", Install("k3s", "/usr/bin/k3s"))


def test_declared_symlinks_land_and_resolve_inside_the_image(tmp_path):
    download, src = k3s(tmp_path)
    dest = tmp_path / "out"
    stage_image(image(src, symlinks=K3S_LINKS), [download], dest)
    tree = listing(dest)
    assert tree["usr/bin/kubectl"] == ("link", "k3s")
    assert tree["usr/bin/crictl"] == ("link", "/usr/bin/k3s")
    assert tree["usr/local/bin/ctr"] == ("link", "../../bin/k3s")
    for link in ("usr/bin/kubectl", "usr/bin/crictl", "usr/local/bin/ctr"):
        assert resolve_in_tree(dest, link) == "usr/bin/k3s"


def test_a_declared_symlink_that_resolves_to_nothing_is_refused(tmp_path):
    download, src = k3s(tmp_path)
    links = (Symlink("/usr/bin/kubectl", "k3s-server", 'recipes/k3s.toml: symlinks."/usr/bin/kubectl"'),)
    with pytest.raises(BakeryError) as err:
        stage_image(image(src, symlinks=links), [download], tmp_path / "out")
    assert err.value.message == ("recipes/k3s.toml: symlinks.\"/usr/bin/kubectl\": 'k3s-server' does "
                                 "not resolve to anything inside the image (from /usr/bin/kubectl)")
    assert not (tmp_path / "out").exists()


def test_a_declared_symlink_clashing_with_an_installed_file_is_refused(tmp_path):
    download, src = k3s(tmp_path)
    links = (Symlink("/usr/bin/k3s", "kubectl", 'recipes/k3s.toml: symlinks."/usr/bin/k3s"'),)
    with pytest.raises(BakeryError, match=r'^usr/bin/k3s: recipes/k3s.toml: symlinks."/usr/bin/k3s" '
                                          r"clashes with .*k3s: 'k3s'"):
        stage_image(image(src, symlinks=links), [download], tmp_path / "out")


def test_a_symlink_chain_through_the_builders_root_does_not_resolve(tmp_path):
    # /usr/bin/env exists on the builder, not in the image: resolved from the tree's root
    download, src = k3s(tmp_path)
    links = (Symlink("/usr/bin/e", "/usr/bin/env", "e"),)
    with pytest.raises(BakeryError, match="does not resolve"):
        stage_image(image(src, symlinks=links), [download], tmp_path / "out")


# --- through the real doit build: recipe -> fetch -> stage -> pack -> read back --------------

def build_recipe(project, upstream, name: str, files: dict[str, bytes], recipe: str) -> None:
    for url, content in files.items():
        upstream.add(url, content)
    (project.root / "recipes" / f"{name}.toml").write_text(
        f'description = "test"\nhomepage = "https://example.org/"\narches = ["x86-64"]\n{recipe}')
    lock = lock_for(upstream)
    lock[name] = {"1.0": {}}
    project.write_lock(lock)
    project.doit(f"build:{name}-1.0")


def test_k3s_like_recipe_builds_with_its_symlinks(project, upstream):
    build_recipe(project, upstream, "k3slike", {"https://example.org/k3slike/1.0/k3s": make_elf("x86-64", b"k3s")},
                 '[[sources]]\nurl = "https://example.org/k3slike/{version}/k3s"\n'
                 'install = { "k3s" = "/usr/bin/k3s" }\n'
                 '[symlinks]\n"/usr/bin/kubectl" = "k3s"\n"/usr/bin/crictl" = "k3s"\n'
                 '"/usr/bin/ctr" = "/usr/bin/k3s"\n')
    entries = {e.path: e for e in read_image(project.images / "k3slike-1.0-x86-64.raw")}
    assert entries["usr/bin/k3s"].kind == "file" and entries["usr/bin/k3s"].mode == 0o755
    assert {p: (entries[p].kind, entries[p].target) for p in ("usr/bin/kubectl", "usr/bin/crictl", "usr/bin/ctr")} \
        == {"usr/bin/kubectl": ("symlink", "k3s"), "usr/bin/crictl": ("symlink", "k3s"),
            "usr/bin/ctr": ("symlink", "/usr/bin/k3s")}
    staged = project.root / "build/stage/k3slike-1.0-x86-64"
    assert resolve_in_tree(staged, "usr/bin/kubectl") == "usr/bin/k3s"


def test_tailscale_like_recipe_ships_the_rewritten_upstream_unit(project, upstream):
    archive = write_tar(project.root / "t.tgz", "tar.gz", TAILSCALE)
    build_recipe(project, upstream, "tslike",
                 {"https://example.org/tslike/tailscale_1.0_amd64.tgz": archive.read_bytes()},
                 '[[sources]]\nurl = "https://example.org/tslike/tailscale_{version}_amd64.tgz"\n'
                 'install = { "tailscale_*/tailscale*" = "/usr/bin/", '
                 '"tailscale_*/systemd/tailscaled.service" = { to = "/usr/lib/systemd/system/tailscaled.service", '
                 'replace = { "/usr/sbin/tailscaled" = "/usr/bin/tailscaled" } } }\n'
                 '[units]\nupholds = { "multi-user.target" = ["tailscaled.service"] }\n')
    image = project.images / "tslike-1.0-x86-64.raw"
    unit = read_file(image, UNIT).decode()
    assert "ExecStart=/usr/bin/tailscaled --state" in unit and "/usr/sbin" not in unit
    assert {e.path: e.kind for e in read_image(image)}["usr/bin/tailscaled"] == "file"


def test_restic_like_bz2_download_is_shipped_decompressed(project, upstream):
    binary = make_elf("x86-64", b"restic" * 1000)
    build_recipe(project, upstream, "resticlike",
                 {"https://example.org/resticlike/restic_1.0_linux_amd64.bz2": bz2.compress(binary)},
                 '[[sources]]\nurl = "https://example.org/resticlike/restic_{version}_linux_amd64.bz2"\n'
                 'install = { "restic_*_linux_amd64" = "/usr/bin/restic" }\n')
    image = project.images / "resticlike-1.0-x86-64.raw"
    assert read_file(image, "usr/bin/restic") == binary
    assert {e.path: e.mode for e in read_image(image)}["usr/bin/restic"] == 0o755
