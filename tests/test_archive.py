"""archive: safe streaming reading of every archive kind, hostile members refused, the
decompressor child."""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import re
import shutil
import stat
import tarfile

import zstandard

import pytest

from sysext_bakery.errors import BakeryError
from sysext_bakery.model.image import Install
from sysext_bakery.model.image import archive_kind
from sysext_bakery.build.archive import Member, iter_members
from sysext_bakery.build.stage import stage_image
from elf import make_elf
from archives import (ORIGIN, RELEASE, Entry, F, D, L, H, write_tar, write_zip, source, image,
                      listing, DOCKER, EXPECTED_DOCKER, stage_fails, children, by_hash,
                      write_zip_without_modes)


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


@pytest.mark.parametrize("filename, kind", [
    ("docker-24.0.9.tgz", "tar.gz"), ("x.tar.gz", "tar.gz"), ("x.tar.xz", "tar.xz"),
    ("x.txz", "tar.xz"), ("x.tar.zst", "tar.zst"), ("x.tar.bz2", "tar.bz2"), ("x.tbz2", "tar.bz2"),
    ("x.zip", "zip"), ("x.tar", "tar"), ("X.TGZ", "tar.gz"), ("wasmtime", None),
    ("tailscale_1.2_amd64", None), ("x.gz", "gz-file"), ("restic_0.17.3_linux_amd64.bz2", "bz2-file"),
    ("gitea-1.22.6-linux-amd64.xz", "xz-file"), ("tool.ZST", "zst-file"), (".gz", None),
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
    assert "HTML error page" in err.value.hint and "fetched again" in err.value.hint
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


COMPRESS = {"gz-file": lambda b: gzip.compress(b, mtime=0), "xz-file": lzma.compress,
            "bz2-file": bz2.compress, "zst-file": lambda b: zstandard.ZstdCompressor().compress(b)}
SUFFIX = {"gz-file": ".gz", "xz-file": ".xz", "bz2-file": ".bz2", "zst-file": ".zst"}


@pytest.mark.parametrize("kind", sorted(COMPRESS))
def test_single_compressed_file_is_shipped_decompressed(tmp_path, kind, decompressor):
    # restic's layout: restic_0.17.3_linux_amd64.bz2 holds the binary itself
    binary = make_elf("x86-64", os.urandom(200_000))
    name = f"restic_0.17.3_linux_amd64{SUFFIX[kind]}"
    download = by_hash_copy(tmp_path, name, COMPRESS[kind](binary))
    assert archive_kind(name) == kind
    dest = tmp_path / "stage" / "restic"
    src = source(name, kind, Install("restic_*_linux_amd64", "/usr/bin/restic"))
    stage_image(image(src), [download], dest)
    shipped = dest / "usr/bin/restic"
    assert shipped.read_bytes() == binary
    assert stat.S_IMODE(shipped.stat().st_mode) == 0o755
    assert children() == []


@pytest.mark.parametrize("kind", sorted(COMPRESS))
def test_single_compressed_text_file_is_0644(tmp_path, kind):
    download = tmp_path / "completion.gz"
    download.write_bytes(COMPRESS[kind](b"complete -F _tool tool\n"))
    members = [(m, c.read()) for m, c in iter_members(download, kind, ORIGIN, f"tool.bash{SUFFIX[kind]}")]
    assert members == [(Member("tool.bash", "file", 0o644), b"complete -F _tool tool\n")]


def test_corrupt_single_xz_file(tmp_path, decompressor):
    good = lzma.compress(make_elf("x86-64", os.urandom(100_000)))
    download = tmp_path / "gitea.xz"
    download.write_bytes(good[:40] + bytes(b ^ 0xFF for b in good[40:200]) + good[200:])
    with pytest.raises(BakeryError) as err:
        stage_image(image(source("gitea-1.22.6-linux-amd64.xz", "xz-file",
                                 Install("gitea-*", "/usr/bin/gitea"))), [download], tmp_path / "out")
    assert err.value.message.startswith(
        f"{ORIGIN}: gitea-1.22.6-linux-amd64.xz: cannot be read as xz-file: ")
    assert "HTML error page" in err.value.hint and "fetched again" in err.value.hint
    assert sorted(os.listdir(tmp_path)) == ["gitea.xz"]
    assert children() == []


def test_empty_single_compressed_file(tmp_path):
    download = tmp_path / "x.gz"
    download.write_bytes(gzip.compress(b""))
    with pytest.raises(BakeryError, match="decompresses to an empty file"):
        stage_image(image(source("tool.gz", "gz-file", Install("tool", "/usr/bin/tool"))), [download],
                    tmp_path / "out")


def test_zip_members_without_unix_modes_are_judged_by_content(tmp_path):
    # A zip made on Windows (create_system 0) stores no unix mode: an ELF is a program.
    binary = make_elf("x86-64", b"consul")
    archive = write_zip_without_modes(tmp_path / "consul.zip", {
        "consul": binary, "LICENSE.txt": b"license", "run.sh": b"#!/bin/sh\n"})
    dest = tmp_path / "out"
    stage_image(image(source("consul.zip", "zip", Install("*", "/usr/bin/"))), [archive], dest)
    assert listing(dest)["usr/bin/consul"] == ("file 0755", binary.decode("latin-1"))
    assert listing(dest)["usr/bin/LICENSE.txt"] == ("file 0644", "license")
    assert listing(dest)["usr/bin/run.sh"] == ("file 0755", "#!/bin/sh\n")


def test_zip_member_with_unix_mode_keeps_it(tmp_path):
    archive = write_zip(tmp_path / "t.zip", [F("tool", make_elf("x86-64"), 0o644)])
    dest = tmp_path / "out"
    stage_image(image(source("t.zip", "zip", Install("tool", "/usr/bin/tool"))), [archive], dest)
    assert stat.S_IMODE((dest / "usr/bin/tool").stat().st_mode) == 0o644   # upstream said so


def by_hash_copy(tmp_path, name: str, data: bytes):
    """`data` stored as the download cache stores it: named by its sha256, not `name`."""
    path = tmp_path / name
    path.write_bytes(data)
    return by_hash(path)
