"""pack: real mksquashfs / mkfs.erofs, read back, reproducibility, and a real merge."""
from __future__ import annotations

import hashlib
import os
import random
import struct
from pathlib import Path

import pytest

from sysext_bakery import files
from sysext_bakery.build import readback
from sysext_bakery.errors import BakeryError
from sysext_bakery.build.pack import COMPRESSIONS, pack
from elf import EM_X86_64, make_elf
from sysext import make_root, requires_sysext, run_merged

ALL_FORMATS = [(fmt, comp) for fmt, comps in COMPRESSIONS.items() for comp in comps]
UNIT = "[Unit]\nDescription=Tool\n\n[Service]\nExecStart=/usr/bin/tool\n"
RELEASE = "ID=_any\nARCHITECTURE=x86-64\nSYSEXT_VERSION_ID=1.2.3\n"

# path -> (content, mode); a trailing "/" is a directory, a "->" value a symlink target
TREE: dict[str, tuple[bytes | str, int]] = {
    "usr/bin/tool": (make_elf("x86-64", b"tool"), 0o755),
    "usr/bin/tool-suid": (make_elf("x86-64", b"suid"), 0o4755),
    "usr/bin/hello": ("#!/bin/sh\necho hello from the extension\n", 0o755),
    "usr/bin/alias": ("-> tool", 0o777),
    "usr/lib/systemd/system/tool.service": (UNIT, 0o644),
    "usr/lib/extension-release.d/extension-release.tool": (RELEASE, 0o644),
    "usr/share/tool/README": ("not executable\n", 0o644),
    "usr/share/tool/private/": ("", 0o750),
    "usr/share/tool/empty/": ("", 0o755),
}


def build_tree(root: Path, paths: list[str], mtime: int | None = None) -> Path:
    """Create TREE's `paths` in that order (parents as 0755 dirs), optionally all with `mtime`."""
    for path in paths:
        content, mode = TREE[path]
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if path.endswith("/"):
            target.mkdir(exist_ok=True)
            target.chmod(mode)
        elif isinstance(content, str) and content.startswith("-> "):
            target.symlink_to(content[3:])
        else:
            target.write_bytes(content.encode() if isinstance(content, str) else content)
            target.chmod(mode)
    if mtime is not None:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                os.utime(os.path.join(dirpath, name), (mtime, mtime), follow_symlinks=False)
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = build_tree(tmp_path / "tree", list(TREE))
    if os.geteuid() == 0:  # packing must make every owner root, whatever the tree says
        os.chown(root / "usr/share/tool/README", 1000, 1000)
    return root


def test_pack_reads_back_entries_modes_and_owners(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "images/tool-1.2.3-x86-64.raw"
    digest = pack(tree, out)

    entries = {e.path: e for e in readback.read_image(out)}
    expected = {p.rstrip("/") for p in TREE} | {"usr", "usr/bin", "usr/lib", "usr/lib/systemd",
                                                "usr/lib/systemd/system", "usr/lib/extension-release.d",
                                                "usr/share", "usr/share/tool"}
    assert set(entries) == expected
    assert {(e.uid, e.gid) for e in entries.values()} == {(0, 0)}
    assert entries["usr/bin/tool"].mode == 0o755 and entries["usr/bin/tool"].kind == "file"
    assert entries["usr/bin/tool-suid"].mode == 0o4755
    assert entries["usr/share/tool/README"].mode == 0o644
    assert entries["usr/share/tool/private"].kind == "dir" and entries["usr/share/tool/private"].mode == 0o750
    assert entries["usr/bin/alias"].kind == "symlink" and entries["usr/bin/alias"].target == "tool"
    assert entries["usr/lib/systemd/system/tool.service"].size == len(UNIT)
    elf = readback.read_file(out, "usr/bin/tool")
    assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == EM_X86_64
    assert readback.read_file(out, "usr/lib/systemd/system/tool.service").decode() == UNIT
    assert digest == hashlib.sha256(out.read_bytes()).hexdigest()
    assert oct(out.stat().st_mode & 0o777) == oct(0o644)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temp left behind


@pytest.mark.parametrize("fmt,compression", ALL_FORMATS)
def test_each_format_and_compression_round_trips(tree: Path, tmp_path: Path, fmt: str,
                                                 compression: str) -> None:
    out = tmp_path / f"tool-{fmt}-{compression}.raw"
    pack(tree, out, fmt, compression)

    detected = readback.image_format(out)
    assert detected == ((fmt, compression) if fmt == "squashfs" else ("erofs", None))
    assert readback.compare(readback.read_image(out), readback.tree_entries(tree)) == []
    assert readback.extension_release(out)["SYSEXT_VERSION_ID"] == "1.2.3"
    assert next(e for e in readback.read_image(out) if e.path == "usr/bin/tool-suid").mode == 0o4755


@pytest.mark.parametrize("fmt,compression", [("squashfs", "zstd"), ("erofs", "lz4hc")])
def test_same_tree_packs_bit_identical(tree: Path, tmp_path: Path, fmt: str, compression: str) -> None:
    first = pack(tree, tmp_path / "a.raw", fmt, compression)
    second = pack(tree, tmp_path / "b.raw", fmt, compression)
    assert first == second
    assert (tmp_path / "a.raw").read_bytes() == (tmp_path / "b.raw").read_bytes()


@pytest.mark.parametrize("fmt,compression", [("squashfs", "zstd"), ("erofs", "lz4hc")])
def test_creation_order_mtimes_and_root_mode_do_not_matter(tmp_path: Path, fmt: str,
                                                           compression: str) -> None:
    forward = build_tree(tmp_path / "forward", list(TREE), mtime=1_000_000)
    backward = build_tree(tmp_path / "backward", list(reversed(TREE)), mtime=1_700_000_000)
    backward.chmod(0o700)  # what a mkdtemp staging directory looks like
    assert pack(forward, tmp_path / "f.raw", fmt, compression) == \
        pack(backward, tmp_path / "b.raw", fmt, compression)


def test_default_zstd_packs_1_mib_blocks_at_level_10(tree: Path, tmp_path: Path) -> None:
    # 2.5 MiB of compressible bytes: three zstd-compressed 1 MiB blocks, the last one partial
    big = bytes(random.Random(7).choices(range(16), k=5 << 19))
    (tree / "usr/lib/tool").mkdir()
    (tree / "usr/lib/tool/big.bin").write_bytes(big)
    out = tmp_path / "tool.raw"
    pack(tree, out)

    head = out.read_bytes()[:104]
    block_size, _, compression_id, block_log, flags = struct.unpack_from("<IIHHH", head, 12)
    assert (block_size, block_log, compression_id) == (1 << 20, 20, 6)   # 6: zstd
    assert flags & 0x400   # compressor options follow the superblock: a non-default level
    length, level = struct.unpack_from("<HI", head, 96)
    assert (length, level) == (0x8000 | 4, 10)   # one uncompressed 4-byte metadata block
    assert out.stat().st_size < len(big) * 0.6   # the blocks were compressed, not stored
    assert readback.read_file(out, "usr/lib/tool/big.bin") == big


def test_different_content_gives_a_different_image(tree: Path, tmp_path: Path) -> None:
    before = pack(tree, tmp_path / "a.raw")
    (tree / "usr/share/tool/README").write_text("changed\n")
    assert pack(tree, tmp_path / "b.raw") != before


def test_repacking_replaces_the_image(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "tool.raw"
    pack(tree, out)
    (tree / "usr/share/tool/NEWS").write_text("new\n")
    pack(tree, out)
    assert readback.read_file(out, "usr/share/tool/NEWS") == b"new\n"
    assert files._temporaries == {}   # renamed into place and forgotten: a stop leaves it be


def test_failed_read_back_leaves_the_old_image_and_no_temp(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "images/tool.raw"
    pack(tree, out)
    old = out.read_bytes()
    # mksquashfs packs a name that is not UTF-8, but the read-back cannot check it
    (tree / "usr/share/tool").joinpath(os.fsdecode(b"bad-\xff-name")).write_text("x")

    with pytest.raises(BakeryError, match="not valid UTF-8"):
        pack(tree, out)
    assert out.read_bytes() == old
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
    assert files._temporaries == {}


def test_compare_lists_every_difference_a_bad_image_would_have(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "tool.raw"
    pack(tree, out)
    image = readback.read_image(out)
    dropped = [e for e in image if e.path != "usr/bin/hello"]
    diffs = readback.compare(dropped, readback.tree_entries(tree))
    assert diffs == ["usr/bin/hello: missing from the image"]


@pytest.mark.parametrize("fmt,compression,message", [
    ("squashfs", "brotli", "unknown squashfs compression 'brotli'; allowed: zstd, gzip, xz, lz4"),
    ("erofs", "zstd", "unknown erofs compression 'zstd'; allowed: lz4hc, lz4, none"),
    ("ext4", "zstd", "unknown image format 'ext4'; allowed: squashfs, erofs"),
])
def test_bad_format_or_compression_is_named(tree: Path, tmp_path: Path, fmt: str,
                                            compression: str, message: str) -> None:
    with pytest.raises(BakeryError) as info:
        pack(tree, tmp_path / "tool.raw", fmt, compression)
    assert info.value.message == message
    assert info.value.hint
    assert not (tmp_path / "tool.raw").exists()


def test_missing_tree_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BakeryError, match="no staged tree"):
        pack(tmp_path / "nope", tmp_path / "tool.raw")


@pytest.mark.parametrize("fmt,tool", [("squashfs", "mksquashfs"), ("erofs", "mkfs.erofs")])
def test_missing_tool_says_how_to_install_it(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             fmt: str, tool: str) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    with pytest.raises(BakeryError) as info:
        pack(tree, tmp_path / "tool.raw", fmt, COMPRESSIONS[fmt][0])
    assert tool in info.value.message
    assert "scripts/setup" in (info.value.hint or "")
    assert [p.name for p in tmp_path.iterdir() if p.suffix in (".raw", ".tmp")] == []


@pytest.mark.root
@requires_sysext
@pytest.mark.parametrize("fmt,compression", [("squashfs", "zstd"), ("erofs", "lz4hc")])
def test_packed_image_merges_and_unmerges(tree: Path, tmp_path: Path, fmt: str, compression: str) -> None:
    image = tmp_path / "tool.raw"
    pack(tree, image, fmt, compression)
    root = make_root(tmp_path)

    done = run_merged(root, {"tool": image}, """
        "$ROOT/usr/bin/hello"
        stat -c '%a %U %n' "$ROOT/usr/bin/tool-suid" "$ROOT/usr/share/tool/README"
        readlink "$ROOT/usr/bin/alias"
        systemd-sysext unmerge --root="$ROOT" >&2
        [ -e "$ROOT/usr/bin/hello" ] && echo still-there || echo gone
    """)

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "hello from the extension",
        f"4755 root {root}/usr/bin/tool-suid",
        f"644 root {root}/usr/share/tool/README",
        "tool",
        "gone",
    ]
    assert not (root / "usr/bin").exists()  # the host side was never touched


@pytest.mark.root
@requires_sysext
def test_arm64_image_is_refused_on_this_host(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "tree", ["usr/bin/hello"])
    release = tree / "usr/lib/extension-release.d/extension-release.tool"
    release.parent.mkdir(parents=True)
    release.write_text("ID=_any\nARCHITECTURE=arm64\n")
    image = tmp_path / "tool.raw"
    pack(tree, image)
    root = make_root(tmp_path)

    with pytest.raises(AssertionError, match="did not merge tool"):
        run_merged(root, {"tool": image}, "true")
    done = run_merged(root, {"tool": image}, '[ -e "$ROOT/usr/bin/hello" ] || echo absent',
                      must_merge=False)
    assert done.stdout == "absent\n"
    assert "incompatible" in done.stderr
