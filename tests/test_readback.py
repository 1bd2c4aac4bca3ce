"""readback: reading real images back, comparing entry lists, the extension-release."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from elf import make_elf
from sysext_bakery.build import readback
from sysext_bakery.errors import BakeryError
from sysext_bakery.build.readback import Entry
from sysext_bakery.build.pack import pack

REPO = Path(__file__).resolve().parent.parent
RELEASE = 'ID=_any\nARCHITECTURE=x86-64\nSYSEXT_VERSION_ID=2.0\n# comment\nEXTENSION_RELOAD_MANAGER="1"\n'


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(make_elf("x86-64", b"x" * 100))
    (root / "usr/bin/tool").chmod(0o755)
    (root / "usr/bin/link").symlink_to("tool")
    (root / "usr/lib/extension-release.d").mkdir(parents=True)
    (root / "usr/lib/extension-release.d/extension-release.tool").write_text(RELEASE)
    (root / "usr/share/odd names").mkdir(parents=True)
    (root / "usr/share/odd names/it's a \"file\" \\ here").write_text("odd\n")
    (root / "usr/share/big.txt").write_text("".join(f"line {i}\n" for i in range(20000)))
    return root


@pytest.fixture
def image(tree: Path, tmp_path: Path) -> Path:
    out = tmp_path / "tool-2.0-x86-64.raw"
    pack(tree, out)
    return out


BASE = [
    Entry("usr", "dir", 0o755, 0, 0, 0),
    Entry("usr/bin", "dir", 0o755, 0, 0, 0),
    Entry("usr/bin/tool", "file", 0o755, 0, 0, 10),
    Entry("usr/bin/link", "symlink", 0o777, 0, 0, 4, "tool"),
]


def test_compare_equal_lists_have_no_differences() -> None:
    assert readback.compare(BASE, list(reversed(BASE))) == []


@pytest.mark.parametrize("changed,expected", [
    (BASE[:2] + BASE[3:], "usr/bin/tool: missing from the image"),
    (BASE + [Entry("usr/extra", "file", 0o644, 0, 0, 1)], "usr/extra: in the image but not in the tree"),
    (BASE[:2] + [Entry("usr/bin/tool", "dir", 0o755, 0, 0, 0)] + BASE[3:],
     "usr/bin/tool: dir in the image, file in the tree"),
    (BASE[:2] + [Entry("usr/bin/tool", "file", 0o4755, 0, 0, 10)] + BASE[3:],
     "usr/bin/tool: mode 4755 in the image, 0755 in the tree"),
    (BASE[:2] + [Entry("usr/bin/tool", "file", 0o755, 1000, 0, 10)] + BASE[3:],
     "usr/bin/tool: uid 1000 in the image, 0 in the tree"),
    (BASE[:2] + [Entry("usr/bin/tool", "file", 0o755, 0, 5, 10)] + BASE[3:],
     "usr/bin/tool: gid 5 in the image, 0 in the tree"),
    (BASE[:2] + [Entry("usr/bin/tool", "file", 0o755, 0, 0, 9)] + BASE[3:],
     "usr/bin/tool: size 9 in the image, 10 in the tree"),
    (BASE[:3] + [Entry("usr/bin/link", "symlink", 0o777, 0, 0, 4, "tolo")],
     "usr/bin/link: target 'tolo' in the image, 'tool' in the tree"),
])
def test_compare_reports_each_kind_of_difference(changed: list[Entry], expected: str) -> None:
    assert readback.compare(changed, BASE) == [expected]


def test_compare_reports_several_differences_in_path_order() -> None:
    image = [BASE[0], Entry("usr/bin", "dir", 0o700, 0, 0, 0), Entry("usr/bin/tool", "file", 0o644, 0, 0, 11)]
    assert readback.compare(image, BASE) == [
        "usr/bin: mode 0700 in the image, 0755 in the tree",
        "usr/bin/link: missing from the image",
        "usr/bin/tool: mode 0644 in the image, 0755 in the tree",
        "usr/bin/tool: size 11 in the image, 10 in the tree",
    ]


def test_tree_entries_are_root_owned_and_sorted(tree: Path) -> None:
    if os.geteuid() == 0:
        os.chown(tree / "usr/bin/tool", 1000, 1000)
    entries = readback.tree_entries(tree)
    assert [e.path for e in entries] == sorted(e.path for e in entries)
    assert {(e.uid, e.gid) for e in entries} == {(0, 0)}
    link = next(e for e in entries if e.path == "usr/bin/link")
    assert (link.kind, link.target, link.size, link.mode) == ("symlink", "tool", 4, 0o777)


@pytest.mark.parametrize("fmt,compression", [("squashfs", "zstd"), ("squashfs", "lz4"),
                                             ("erofs", "lz4hc"), ("erofs", "none")])
def test_every_reader_sees_the_tree_and_reads_files(tree: Path, tmp_path: Path, fmt: str,
                                                    compression: str) -> None:
    out = tmp_path / "img.raw"
    pack(tree, out, fmt, compression)
    assert readback.compare(readback.read_image(out), readback.tree_entries(tree)) == []
    assert readback.read_file(out, "usr/share/odd names/it's a \"file\" \\ here") == b"odd\n"
    # big enough for erofs to store it compressed: read through fsck.erofs
    assert readback.read_file(out, "/usr/share/big.txt") == (tree / "usr/share/big.txt").read_bytes()
    assert readback.extension_release(out) == {"ID": "_any", "ARCHITECTURE": "x86-64",
                                              "SYSEXT_VERSION_ID": "2.0", "EXTENSION_RELOAD_MANAGER": "1"}


@pytest.mark.parametrize("fmt,compression", [("squashfs", "zstd"), ("squashfs", "lz4"), ("erofs", "lz4")])
def test_read_file_names_a_missing_file(image: Path, tree: Path, tmp_path: Path, fmt: str,
                                        compression: str) -> None:
    out = tmp_path / "img.raw"
    pack(tree, out, fmt, compression)
    with pytest.raises(BakeryError, match="usr/bin/nope"):
        readback.read_file(out, "usr/bin/nope")


def test_extension_release_must_be_exactly_one(tree: Path, tmp_path: Path) -> None:
    (tree / "usr/lib/extension-release.d/extension-release.other").write_text("ID=_any\n")
    pack(tree, tmp_path / "two.raw")
    with pytest.raises(BakeryError, match=r"2 \(.*extension-release.other, .*extension-release.tool\)"):
        readback.extension_release(tmp_path / "two.raw")

    for f in (tree / "usr/lib/extension-release.d").iterdir():
        f.unlink()
    pack(tree, tmp_path / "none.raw")
    with pytest.raises(BakeryError, match="no usr/lib/extension-release.d/extension-release"):
        readback.extension_release(tmp_path / "none.raw")


def test_not_an_image_and_truncated_images_are_refused(image: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.raw"
    junk.write_bytes(b"\0" * 4096)
    with pytest.raises(BakeryError, match="not a squashfs or erofs image"):
        readback.read_image(junk)

    truncated = tmp_path / "truncated.raw"
    truncated.write_bytes(image.read_bytes()[:2048])
    with pytest.raises(BakeryError, match="truncated.raw: cannot read the squashfs image") as info:
        readback.read_image(truncated)
    assert "rebuild" in (info.value.hint or "")
