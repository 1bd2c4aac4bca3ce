"""Decompression bombs stop at the archive limits before they fill the disk, a recipe's
[limits] raises them, tarfile's data filter backs the member checks, and a damaged
download cache entry is fetched again instead of being packed."""
from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from sysext_bakery.errors import BakeryError
from sysext_bakery.model.image import Install
from sysext_bakery.model.limits import MiB, ArchiveLimits, parse_size
from sysext_bakery.build import archive
from sysext_bakery.build.fetch import fetch
from sysext_bakery.build.stage import stage_image
from sysext_bakery.recipe.load import parse_recipe
from archives import F, H, by_hash, image, source, write_tar, write_zip
from conftest import Project, executed, lock_for
from test_build import IMAGES, digest
from upstream import Upstream, docker_url

ALL = Install("**", "/usr/lib/bomb/")


def staged(tmp_path: Path, archive_path: Path, kind: str, limits: ArchiveLimits | None = None,
           unpacked: bool = False) -> Path:
    src = source(archive_path.name, kind, ALL)
    if limits:
        src = replace(src, limits=limits)
    dest = tmp_path / "stage" / "bomb"
    download = by_hash(archive_path) if unpacked else archive_path
    stage_image(image(src), [download], dest,
                unpacked=tmp_path / "stage" / ".unpacked" if unpacked else None)
    return dest


def refused(tmp_path: Path, *args, **kw) -> str:
    with pytest.raises(BakeryError) as err:
        staged(tmp_path, *args, **kw)
    # nothing partial stays in the stage directory: the work dir (and unpacked entry) are gone
    left = [str(p.relative_to(tmp_path / "stage")) for p in (tmp_path / "stage").rglob("*")]
    assert left in ([], [".unpacked"]), left
    return str(err.value)


@pytest.mark.parametrize("unpacked", [False, True], ids=["direct", "via-unpacked-cache"])
def test_a_gzip_bomb_stops_at_the_ratio_limit(tmp_path: Path, unpacked: bool) -> None:
    # 96 MiB of zeros in a tar.gz of ~100 kB: ratio ~1000:1, past the 64 MiB floor
    bomb = tmp_path / "bomb.tar.gz"
    write_tar(bomb, "tar.gz", [F("zeros", bytes(96 * MiB))])
    assert bomb.stat().st_size < MiB
    message = refused(tmp_path, bomb, "tar.gz", unpacked=unpacked)
    assert message.startswith("recipes/docker.toml: sources[0]: bomb.tar.gz: ")
    assert "member 'zeros'" in message and "200 times" in message
    assert "[limits] ratio" in message and 'unpacked = "8G"' in message


def test_a_recipe_ratio_override_lets_the_same_archive_stage(tmp_path: Path) -> None:
    bomb = tmp_path / "big.tar.gz"
    write_tar(bomb, "tar.gz", [F("zeros", bytes(96 * MiB))])
    dest = staged(tmp_path, bomb, "tar.gz", ArchiveLimits(ratio=10_000))
    assert (dest / "usr/lib/bomb/zeros").stat().st_size == 96 * MiB


def test_small_very_compressible_files_are_fine(tmp_path: Path) -> None:
    # ~5000:1, but below the floor: a sparse config or a padded script fills no disk
    small = write_tar(tmp_path / "small.tar.zst", "tar.zst", [F("pad", bytes(8 * MiB))])
    assert small.stat().st_size * 1000 < 8 * MiB
    assert (staged(tmp_path, small, "tar.zst") / "usr/lib/bomb/pad").stat().st_size == 8 * MiB


@pytest.mark.parametrize("kind", ["tar.xz", "zip", "file"])
def test_per_member_limit_counts_written_bytes(tmp_path: Path, kind: str) -> None:
    name = {"zip": "big.zip", "file": "big.bin"}.get(kind, "big.tar.xz")
    data = os.urandom(MiB + MiB // 2)
    path = tmp_path / name
    if kind == "zip":
        write_zip(path, [F("big", data)])
    elif kind == "file":
        path.write_bytes(data)
    else:
        write_tar(path, kind, [F("big", data)])
    message = refused(tmp_path, path, kind, ArchiveLimits(member=MiB))
    member = "big.bin" if kind == "file" else "big"
    assert f"{name}: member '{member}' is larger than 1 MiB (the limit [limits] member)" in message


def test_total_limit_over_many_members(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "many.tar", "tar",
                     [F(f"f{i}", os.urandom(MiB)) for i in range(5)])
    message = refused(tmp_path, path, "tar", ArchiveLimits(unpacked=3 * MiB, member=3 * MiB))
    assert "unpacking stopped at member 'f3': more than 3 MiB written" in message
    assert "[limits] unpacked" in message


def test_hardlink_copies_count_against_the_limit(tmp_path: Path) -> None:
    """A hardlink costs a tar header but becomes a full copy in the tree."""
    path = write_tar(tmp_path / "links.tar.gz", "tar.gz",
                     [F("big", os.urandom(MiB))] + [H(f"copy{i}", "big") for i in range(6)])
    assert path.stat().st_size < 2 * MiB
    message = refused(tmp_path, path, "tar.gz", ArchiveLimits(unpacked=4 * MiB))
    assert "member 'copy3'" in message and "[limits] unpacked" in message


def test_recipe_limits_table(tmp_path: Path) -> None:
    base = {"description": "d", "homepage": "https://example.org", "arches": ["x86-64"],
            "sources": [{"url": "https://example.org/ollama-{version}.tgz",
                         "install": {"bin/*": "/usr/bin/"}}]}
    recipe = parse_recipe("ollama", tmp_path / "ollama.toml",
                          {**base, "limits": {"unpacked": "8G", "ratio": 400}}, None)
    assert recipe.limits == ArchiveLimits(unpacked=8 << 30, member=8 << 30, ratio=400)
    assert parse_recipe("ollama", tmp_path / "o.toml", base, None).limits == ArchiveLimits()
    with pytest.raises(BakeryError) as err:
        parse_recipe("ollama", tmp_path / "o.toml",
                     {**base, "limits": {"unpacked": "8 gallons", "ratio": True, "size": 1}}, None)
    text = str(err.value)
    assert "limits.unpacked: '8 gallons' is not a size" in text
    assert "limits.ratio: expected a integer, got bool True" in text
    assert "limits.size: unknown key" in text
    assert [parse_size(s) for s in ("512M", "2GiB", "4096", "1k")] == [512 * MiB, 2 << 30, 4096, 1024]


# --- tarfile.data_filter, the second line -------------------------------------------------

@pytest.mark.parametrize("info, refusal", [
    (tarfile.TarInfo("dev/null"), "SpecialFileError"),
    (tarfile.TarInfo("../up"), "OutsideDestinationError"),
    (tarfile.TarInfo("a/link"), "AbsoluteLinkError"),
])
def test_data_filter_refusals_become_bakery_errors(tmp_path: Path, info: tarfile.TarInfo,
                                                   refusal: str) -> None:
    if info.name == "dev/null":
        info.type = tarfile.CHRTYPE
    if info.name == "a/link":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(BakeryError, match="refused by tarfile's data filter") as err:
        archive._data_filter(info, str(tmp_path), "o: x.tar")
    assert f"member '{info.name}'" in str(err.value)
    assert isinstance(err.value.__cause__, getattr(tarfile, refusal))


def test_data_filter_runs_on_every_staged_tar_member(tmp_path: Path, monkeypatch) -> None:
    seen: list[str] = []
    real = tarfile.data_filter
    monkeypatch.setattr(tarfile, "data_filter", lambda m, d: seen.append(m.name) or real(m, d))
    path = write_tar(tmp_path / "ok.tar", "tar", [F("a", b"1"), F("b/c", b"2")])
    staged(tmp_path, path, "tar")
    assert seen == ["a", "b/c"]


# --- the download cache --------------------------------------------------------------------

def test_a_bit_rotted_cache_entry_is_fetched_again(httpserver, tmp_path: Path, capsys) -> None:
    body = os.urandom(100_000)
    sha = hashlib.sha256(body).hexdigest()
    httpserver.expect_request("/example.org/t.tgz").respond_with_data(body)
    cache = tmp_path / "cache"
    cache.mkdir()
    rotten = bytearray(body)
    rotten[5000] ^= 0x01
    (cache / sha).write_bytes(bytes(rotten))
    got = fetch("https://example.org/t.tgz", sha, cache, mirror=httpserver.url_for("/"))
    assert got.path.read_bytes() == body and len(httpserver.log) == 1
    assert f"{cache / sha}: the download cache entry for https://example.org/t.tgz holds a " \
           "file with sha256" in capsys.readouterr().err
    fetch("https://example.org/t.tgz", sha, cache, mirror=httpserver.url_for("/"))
    assert len(httpserver.log) == 1        # a sound entry is a hit, no network


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))


def test_build_with_a_poisoned_cache_entry_redownloads_and_packs_the_right_image(
        project: Project, upstream: Upstream, tmp_path: Path) -> None:
    """A second tree sharing the cache (BAKERY_CACHE) finds the entry damaged."""
    shared = {"BAKERY_CACHE": str(tmp_path / "shared-cache")}
    project.doit("build:docker-24", env=shared)
    good = {n: digest(project.images / n) for n in IMAGES}
    entry = tmp_path / "shared-cache" / upstream.sha256[docker_url("x86-64", "24.0.9")]
    flip_byte(entry)
    (tmp_path / "second").mkdir()
    second = Project(tmp_path / "second", project.mirror, lock_for(upstream))
    requests = len(project.mirror.requests)
    run = second.doit("build:docker-24", env=shared)
    assert f"{entry}: the download cache entry for {docker_url('x86-64', '24.0.9')} holds a " \
           "file with sha256" in run.stderr and "fetching again" in run.stderr
    assert len(project.mirror.requests) == requests + 1      # only the damaged one
    assert {n: digest(second.images / n) for n in IMAGES} == good
    assert digest(entry) == entry.name


def test_a_rotted_entry_is_caught_when_only_the_stage_reruns(
        project: Project, upstream: Upstream) -> None:
    """fetch is up to date (a no-op run does not hash), but the stage that reads the
    download hashes it first."""
    project.doit("build:docker-24")
    good = digest(project.images / IMAGES[0])
    entry = project.root / "build/cache" / upstream.sha256[docker_url("x86-64", "24.0.9")]
    flip_byte(entry)
    assert executed(project.doit("build:docker-24")) == []   # a no-op run stays a no-op
    unit = project.root / "recipes/docker/files/usr/lib/systemd/system/docker.service"
    original = unit.read_text()
    unit.write_text(original + "\n")
    run = project.doit("build:docker-24")
    assert "fetch:docker-24.0.9-x86-64" not in executed(run)
    assert "stage:docker-24.0.9-x86-64" in executed(run) and "fetching again" in run.stderr
    assert digest(entry) == entry.name
    unit.write_text(original)
    project.doit("build:docker-24")
    assert digest(project.images / IMAGES[0]) == good


def test_a_single_compressed_file_bomb_stops_at_the_ratio_limit(tmp_path: Path) -> None:
    bomb = tmp_path / "tool.gz"
    bomb.write_bytes(gzip.compress(bytes(96 * MiB), mtime=0))
    message = refused(tmp_path, bomb, "gz-file")
    assert "tool.gz: unpacking stopped at member 'tool'" in message and "[limits] ratio" in message
