"""stage: safe archive reading, install map, files/, drop-ins, extension-release, atomicity."""
from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import zstandard

from sysext_bakery.errors import BakeryError
from sysext_bakery.model.image import Image, Install, Source
from sysext_bakery.model.image import archive_kind
from sysext_bakery.build.pack import pack
from sysext_bakery.build.archive import Member, iter_members
from sysext_bakery.build.stage import stage_image
from sysext_bakery.build.tree import Tree
from sysext_bakery.build.unpacked import unpacked_key
from elf import make_elf

ORIGIN = "recipes/docker.toml: sources[0]"
RELEASE = "usr/lib/extension-release.d/extension-release.docker"


@dataclass(frozen=True)
class Entry:
    """One member of a test archive."""
    name: str
    data: bytes = b""
    mode: int = 0o644
    type: bytes = tarfile.REGTYPE
    linkname: str = ""


def F(name: str, data: bytes = b"", mode: int = 0o644) -> Entry:
    return Entry(name, data, mode)


def D(name: str) -> Entry:
    return Entry(name, mode=0o755, type=tarfile.DIRTYPE)


def L(name: str, target: str) -> Entry:
    return Entry(name, mode=0o777, type=tarfile.SYMTYPE, linkname=target)


def H(name: str, target: str) -> Entry:
    return Entry(name, mode=0o755, type=tarfile.LNKTYPE, linkname=target)


def write_tar(path: Path, kind: str, entries: list[Entry]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type, info.mode, info.linkname = e.type, e.mode, e.linkname
            if e.type == tarfile.REGTYPE:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    raw = buf.getvalue()
    compress = {
        "tar": lambda b: b,
        "tar.gz": lambda b: __import__("gzip").compress(b, mtime=0),
        "tar.xz": lambda b: __import__("lzma").compress(b),
        "tar.bz2": lambda b: __import__("bz2").compress(b),
        "tar.zst": lambda b: zstandard.ZstdCompressor().compress(b),
    }[kind]
    path.write_bytes(compress(raw))
    return path


def write_zip(path: Path, entries: list[Entry]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for e in entries:
            ftype = {tarfile.REGTYPE: stat.S_IFREG, tarfile.DIRTYPE: stat.S_IFDIR,
                     tarfile.SYMTYPE: stat.S_IFLNK}[e.type]
            info = zipfile.ZipInfo(e.name + ("/" if e.type == tarfile.DIRTYPE else ""))
            info.create_system = 3
            info.external_attr = (ftype | e.mode) << 16
            zf.writestr(info, e.linkname.encode() if e.type == tarfile.SYMTYPE else e.data)
    return path


def source(filename: str, kind: str, *install: Install, allow_setuid: bool = False) -> Source:
    return Source(url=f"https://example.org/dl/{filename}", sha256=None, checksum_url=None,
                  kind=kind, install=install, allow_setuid=allow_setuid, origin=ORIGIN)


def image(*sources: Source, arch: str = "x86-64", **kw) -> Image:
    return Image(name="docker", version="24.0.9", arch=arch, sources=sources, **kw)


def listing(tree: Path) -> dict[str, tuple[str, str]]:
    """path -> (type and mode, content or link target) for everything in the tree."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = p.relative_to(tree).as_posix()
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = (f"dir {stat.S_IMODE(st.st_mode):04o}", "")
            else:
                out[rel] = (f"file {stat.S_IMODE(st.st_mode):04o}", p.read_bytes().decode("latin-1"))
    return out


@pytest.fixture(params=["gzip", "pigz", "in-process"])
def decompressor(request, tmp_path_factory, monkeypatch) -> str:
    """Runs a test with the decompressor tools (a child process per archive) and gzip or
    pigz for tar.gz, then again without any of them on PATH (the in-process fallback)."""
    tools = {"gzip": ["gzip", "xz", "zstd", "bzip2"], "pigz": ["pigz", "xz", "zstd", "bzip2"],
             "in-process": []}[request.param]
    bin_dir = tmp_path_factory.mktemp("path")
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
        os.symlink(shutil.which(tool), bin_dir / tool)
    monkeypatch.setenv("PATH", str(bin_dir))
    return request.param


DECOMPRESSORS = {"pigz", "gzip", "xz", "zstd", "bzip2"}


def children() -> list[str]:
    """"pid state command" of every decompressor child of this process, zombies included
    (other children, such as GitPython's long-lived `git cat-file`, are not ours to judge)."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat_file.read_text()
        except OSError:
            continue                                   # exited meanwhile
        command, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:]
        state, ppid = rest.split()[:2]
        if int(ppid) == os.getpid() and command in DECOMPRESSORS:
            found.append(f"{stat_file.parent.name} {state} {command}")
    return found


def by_hash(path: Path) -> Path:
    """The file renamed to its sha256, as the download cache names downloads."""
    return path.rename(path.with_name(hashlib.sha256(path.read_bytes()).hexdigest()))


DOCKER = [
    D("docker"),
    F("docker/docker", make_elf("x86-64", b"cli"), 0o755),
    F("docker/dockerd", make_elf("x86-64", b"daemon"), 0o755),
    F("docker/README", b"read me", 0o644),
]

EXPECTED_DOCKER = {
    "usr": ("dir 0755", ""),
    "usr/bin": ("dir 0755", ""),
    "usr/bin/docker": ("file 0755", make_elf("x86-64", b"cli").decode("latin-1")),
    "usr/bin/dockerd": ("file 0755", make_elf("x86-64", b"daemon").decode("latin-1")),
    "usr/bin/README": ("file 0644", "read me"),
    "usr/lib": ("dir 0755", ""),
    "usr/lib/extension-release.d": ("dir 0755", ""),
    RELEASE: ("file 0644", "ID=_any\nARCHITECTURE=x86-64\nSYSEXT_VERSION_ID=24.0.9\n"),
}


@pytest.mark.parametrize("filename, kind", [
    ("docker-24.0.9.tgz", "tar.gz"), ("x.tar.gz", "tar.gz"), ("x.tar.xz", "tar.xz"),
    ("x.txz", "tar.xz"), ("x.tar.zst", "tar.zst"), ("x.tar.bz2", "tar.bz2"), ("x.tbz2", "tar.bz2"),
    ("x.zip", "zip"), ("x.tar", "tar"), ("X.TGZ", "tar.gz"), ("wasmtime", None),
    ("tailscale_1.2_amd64", None), ("x.gz", None),
])
def test_archive_kind(filename, kind):
    assert archive_kind(filename) == kind


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "tar.xz", "tar.zst", "tar.bz2", "zip"])
def test_every_archive_kind_stages_the_same_tree(tmp_path, kind, decompressor):
    ext = {"tar.gz": "tgz"}.get(kind, kind)
    archive = tmp_path / f"docker-24.0.9.{ext}"
    write_zip(archive, DOCKER) if kind == "zip" else write_tar(archive, kind, DOCKER)
    dest = tmp_path / "stage" / "docker-24.0.9-x86-64"
    stage_image(image(source(archive.name, kind, Install("docker/*", "/usr/bin/"))), [archive], dest)
    assert listing(dest) == EXPECTED_DOCKER
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert sorted(os.listdir(dest.parent)) == ["docker-24.0.9-x86-64"]   # no temp dirs left


def test_download_named_by_hash_uses_the_source_file_name(tmp_path):
    cached = write_tar(tmp_path / ("ab" * 32), "tar.gz", DOCKER)
    dest = tmp_path / "out"
    stage_image(image(source("docker-24.0.9.tgz", "tar.gz", Install("docker/*", "/usr/bin/"))),
                [cached], dest)
    assert listing(dest) == EXPECTED_DOCKER


def test_plain_file_source_is_one_executable_member(tmp_path):
    cached = tmp_path / ("cd" * 32)
    cached.write_bytes(make_elf("arm64", b"static"))
    dest = tmp_path / "out"
    img = image(source("wasmtime-aarch64", "file", Install("wasmtime-aarch64", "/usr/bin/wasmtime")),
                arch="arm64")
    stage_image(img, [cached], dest)
    assert listing(dest)["usr/bin/wasmtime"] == ("file 0755", make_elf("arm64", b"static").decode("latin-1"))
    assert (dest / RELEASE).read_text() == "ID=_any\nARCHITECTURE=arm64\nSYSEXT_VERSION_ID=24.0.9\n"


def test_plain_file_that_is_not_a_program_is_0644(tmp_path):
    cached = tmp_path / "blob"
    cached.write_bytes(b"some data")
    members = [(m, s.read() if s else None) for m, s in iter_members(cached, "file", ORIGIN, "cfg.json")]
    assert members == [(Member("cfg.json", "file", 0o644, 9), b"some data")]


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


# --- refusals: each names origin, archive and member, and leaves no dest behind ---------------

def stage_fails(tmp_path: Path, entries: list[Entry], *install: Install, kind: str = "tar.gz",
                allow_setuid: bool = False) -> str:
    name = {"zip": "evil.zip"}.get(kind, "evil.tgz")
    archive = tmp_path / name
    write_zip(archive, entries) if kind == "zip" else write_tar(archive, kind, entries)
    dest = tmp_path / "stage" / "evil"
    src = source(name, kind, *(install or (Install("**", "/usr/bin/"),)), allow_setuid=allow_setuid)
    with pytest.raises(BakeryError) as err:
        stage_image(image(src), [archive], dest)
    assert not dest.exists()
    assert os.listdir(dest.parent) == []
    return str(err.value)


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_dotdot_member_is_refused(tmp_path, kind):
    msg = stage_fails(tmp_path, [F("ok", b"x"), F("../evil", b"x")], kind=kind)
    assert msg.startswith(f"{ORIGIN}: evil.{'zip' if kind == 'zip' else 'tgz'}: "
                          "member '../evil' has a '..' component")
    assert "hint: refusing a hostile or broken archive" in msg


def test_dotdot_inside_a_path_is_refused(tmp_path):
    msg = stage_fails(tmp_path, [F("a/../../evil", b"x")])
    assert f"{ORIGIN}: evil.tgz: member 'a/../../evil' has a '..' component" in msg


def test_absolute_member_is_refused(tmp_path):
    msg = stage_fails(tmp_path, [F("/etc/passwd", b"root::0:0")])
    assert msg.startswith(f"{ORIGIN}: evil.tgz: member '/etc/passwd' has an absolute path")


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_symlink_climbing_out_is_refused(tmp_path, kind):
    msg = stage_fails(tmp_path, [D("bin"), L("bin/etc", "../../etc"), F("bin/etc/passwd", b"x")], kind=kind)
    assert f"evil.{'zip' if kind == 'zip' else 'tgz'}: symlink 'bin/etc' points outside the archive " \
           "('../../etc')" in msg


def test_absolute_symlink_is_refused(tmp_path):
    msg = stage_fails(tmp_path, [L("passwd", "/etc/passwd")])
    assert f"{ORIGIN}: evil.tgz: symlink 'passwd' points outside the archive ('/etc/passwd')" in msg


def test_symlink_staying_inside_is_kept(tmp_path):
    archive = write_tar(tmp_path / "ok.tgz", "tar.gz",
                        [F("a/b/tool", b"x", 0o755), L("a/b/link", "../b/./tool")])
    dest = tmp_path / "out"
    stage_image(image(source("ok.tgz", "tar.gz", Install("a/b/*", "/usr/bin/"))), [archive], dest)
    assert os.readlink(dest / "usr/bin/link") == "../b/./tool"


def test_hardlink_escaping_is_refused(tmp_path):
    msg = stage_fails(tmp_path, [F("a", b"x"), H("shadow", "../../etc/shadow")])
    assert f"{ORIGIN}: evil.tgz: hardlink 'shadow' points outside the archive ('../../etc/shadow')" in msg


def test_absolute_hardlink_is_refused(tmp_path):
    msg = stage_fails(tmp_path, [H("shadow", "/etc/shadow")])
    assert "hardlink 'shadow' points outside the archive ('/etc/shadow')" in msg


def test_hardlink_to_a_later_or_missing_member_is_refused(tmp_path):
    msg = stage_fails(tmp_path, [H("link", "target"), F("target", b"x")])
    assert "hardlink 'link' points to 'target', which is not an earlier regular file" in msg


@pytest.mark.parametrize("tartype, what", [(tarfile.CHRTYPE, "a character device"),
                                           (tarfile.BLKTYPE, "a block device"),
                                           (tarfile.FIFOTYPE, "a fifo")])
def test_device_nodes_and_fifos_are_refused(tmp_path, tartype, what):
    msg = stage_fails(tmp_path, [Entry("dev/sda", mode=0o600, type=tartype)])
    assert msg.startswith(f"{ORIGIN}: evil.tgz: member 'dev/sda' is {what}")


def test_unselected_hostile_member_still_fails_the_archive(tmp_path):
    msg = stage_fails(tmp_path, [F("docker/docker", make_elf("x86-64"), 0o755), F("../x", b"")],
                      Install("docker/*", "/usr/bin/"))
    assert "member '../x' has a '..' component" in msg


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


def test_two_members_on_one_destination(tmp_path):
    archive = write_tar(tmp_path / "a.tgz", "tar.gz", [F("x/tool", b"1", 0o755), F("y/tool", b"2", 0o755)])
    src = source("a.tgz", "tar.gz", Install("x/*", "/usr/bin/"), Install("y/*", "/usr/bin/"))
    with pytest.raises(BakeryError) as err:
        stage_image(image(src), [archive], tmp_path / "out")
    assert err.value.message == (f"usr/bin/tool: {ORIGIN}: a.tgz: 'y/tool' clashes with "
                                 f"{ORIGIN}: a.tgz: 'x/tool'")
    assert not (tmp_path / "out").exists()


def test_several_members_on_a_single_file_destination(tmp_path):
    archive = write_tar(tmp_path / "a.tgz", "tar.gz", DOCKER)
    with pytest.raises(BakeryError) as err:
        stage_image(image(source("a.tgz", "tar.gz", Install("docker/*", "/usr/bin/docker"))), [archive],
                    tmp_path / "out")
    assert err.value.message == (f"{ORIGIN}: install: pattern 'docker/*' matches several members "
                                 "('docker/docker', 'docker/dockerd') but '/usr/bin/docker' is one file")
    assert "end the destination with '/'" in err.value.hint


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


def test_files_dir_may_only_hold_usr_and_opt(tmp_path):
    archive = write_tar(tmp_path / "docker.tgz", "tar.gz", DOCKER)
    files = tmp_path / "files"
    (files / "etc/docker").mkdir(parents=True)
    img = image(source("docker.tgz", "tar.gz", Install("docker/*", "/usr/bin/")), files_dir=files)
    with pytest.raises(BakeryError) as err:
        stage_image(img, [archive], tmp_path / "out")
    assert err.value.message == f"{files}/etc: a recipe's files/ may only hold the directories usr/ and opt/"


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


@pytest.mark.parametrize("kind", ["tar.gz", "tar.xz", "tar.zst", "tar.bz2", "zip"])
def test_corrupt_archive(tmp_path, kind, decompressor):
    archive = tmp_path / "broken"
    archive.write_bytes(b"this is not an archive at all" * 100)
    with pytest.raises(BakeryError) as err:
        stage_image(image(source("docker.tgz", kind, Install("docker/*", "/usr/bin/"))), [archive],
                    tmp_path / "out")
    prefix = f"{ORIGIN}: docker.tgz: cannot be read as {kind}: "
    assert err.value.message.startswith(prefix)
    assert len(err.value.message) > len(prefix) + 5        # says why (the tool's own complaint)
    assert "delete it from the download cache" in err.value.hint
    assert sorted(os.listdir(tmp_path)) == ["broken"]      # no temp dir left
    assert children() == []


@pytest.mark.parametrize("kind", ["tar.gz", "tar.xz", "tar.zst", "tar.bz2"])
def test_archive_truncated_inside_a_member(tmp_path, kind, decompressor):
    # bzip2 writes nothing before a whole block (900 kB) is in: text, as random data is slow.
    big = b"".join(b"%d\n" % i for i in range(200_000)) if kind == "tar.bz2" else os.urandom(300_000)
    archive = write_tar(tmp_path / "a.tgz", kind, [F("bin/tool", big, 0o755)])
    archive.write_bytes(archive.read_bytes()[:archive.stat().st_size * 9 // 10])
    with pytest.raises(BakeryError, match="^" + re.escape(f"{ORIGIN}: a.tgz: bin/tool: cannot be read as {kind}: ")):
        stage_image(image(source("a.tgz", kind, Install("bin/*", "/usr/bin/"))), [archive],
                    tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["a.tgz"]
    assert children() == []


def test_decompression_runs_in_a_child_process(tmp_path, monkeypatch):
    # A real gzip, reached through a wrapper that notes it ran and with what.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gzip").write_text(f'#!/bin/sh\necho "$$ $*" > {tmp_path}/ran\nexec {shutil.which("gzip")} "$@"\n')
    os.chmod(bin_dir / "gzip", 0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    archive = write_tar(tmp_path / "docker.tgz", "tar.gz", DOCKER)
    stage_image(image(source("docker.tgz", "tar.gz", Install("docker/*", "/usr/bin/"))), [archive],
                tmp_path / "out")
    assert listing(tmp_path / "out") == EXPECTED_DOCKER
    pid, args = (tmp_path / "ran").read_text().split(" ", 1)
    assert int(pid) != os.getpid() and args == "-dc\n"
    assert children() == []


def test_the_child_checks_the_gzip_crc_at_the_end(tmp_path, decompressor):
    if decompressor == "in-process":
        pytest.skip("tarfile stops at the tar end marker, before the gzip trailer")
    archive = write_tar(tmp_path / "a.tgz", "tar.gz", DOCKER)
    data = bytearray(archive.read_bytes())
    data[-8] ^= 0xFF                        # the trailer's CRC32, read after all the data
    archive.write_bytes(bytes(data))
    with pytest.raises(BakeryError) as err:
        stage_image(image(source("a.tgz", "tar.gz", Install("docker/*", "/usr/bin/"))), [archive],
                    tmp_path / "out")
    assert err.value.message.startswith(f"{ORIGIN}: a.tgz: cannot be read as tar.gz: {decompressor}: ")
    assert "crc" in err.value.message
    assert sorted(os.listdir(tmp_path)) == ["a.tgz"]
    assert children() == []


@pytest.mark.parametrize("kind", ["tar.gz", "tar.xz", "tar.zst", "tar.bz2"])
def test_a_refusal_mid_archive_stops_the_child(tmp_path, kind):
    # The child still has megabytes to write into a full pipe when the archive is refused.
    big = F("docker/blob", bytes(4 << 20))
    for entries, install in (
            ([F("docker/x", b"x"), F("../evil", b"x"), big], Install("docker/*", "/usr/bin/")),
            ([*DOCKER, big], Install("docker/*", "/usr/bin/dockerd"))):     # raised by install
        archive = write_tar(tmp_path / "a.tgz", kind, entries)
        with pytest.raises(BakeryError) as err:
            stage_image(image(source("a.tgz", kind, install)), [archive], tmp_path / "out")
        assert children() == []    # while the traceback (holding the frames) is still alive
        assert err.value.message
    assert sorted(os.listdir(tmp_path)) == ["a.tgz"]


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


def test_iter_members_reports_modes_and_links(tmp_path):
    archive = write_tar(tmp_path / "a.tar.zst", "tar.zst",
                        [D("./"), D("./pkg"), F("./pkg/su", b"s", 0o4755), L("./pkg/l", "su"),
                         H("./pkg/h", "pkg/su")])
    got = [(m, s.read() if s else None) for m, s in iter_members(archive, "tar.zst", ORIGIN)]
    assert got == [
        (Member("pkg", "dir", 0o755), None),
        (Member("pkg/su", "file", 0o4755, 1), b"s"),
        (Member("pkg/l", "symlink", 0o777, linkname="su"), None),
        (Member("pkg/h", "hardlink", 0o755, linkname="pkg/su"), None),
    ]


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


def test_restaging_from_the_cache_keeps_the_cache_intact(tmp_path):
    archive = by_hash(write_tar(tmp_path / "docker.tgz", "tar.gz", DOCKER))
    unpacked, dest = tmp_path / ".unpacked", tmp_path / "out"
    img = image(source("docker.tgz", "tar.gz", Install("docker/*", "/usr/bin/")))
    for _ in range(3):
        stage_image(img, [archive], dest, unpacked=unpacked)
        assert listing(dest) == EXPECTED_DOCKER
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
