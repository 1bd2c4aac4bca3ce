"""Packing a staged tree into a squashfs or erofs image, reproducibly and atomically.

Same tree -> bit-identical image: every owner is root, every timestamp (files and
superblock) is 0, xattrs are left out and the erofs UUID is fixed. Both tools sort
directory entries themselves, so creation order and mtimes of the tree do not matter.

zstd, the default, packs 1 MiB blocks at level 10 instead of mksquashfs' 128 KiB at level 15:
0.79x gzip's size in half gzip's time on the docker fixture (level 15: 0.90x in 2.6x), 0.93x
in a quarter of the time on real C binaries (level 15: 0.905x in 1.2x). Cold random reads of
small files cost more, since their tails share 1 MiB fragment blocks. docs/benchmarks.md,
"Compression", has the measurements. The other compressors keep mksquashfs' defaults, so
`gzip` stays the baseline that target 4 names.

A change here that alters the bytes packed from the same tree bumps PACK_FORMAT in
build/formats.py, so images already built are repacked.
"""
from __future__ import annotations

import os
from pathlib import Path

from sysext_bakery import run
from sysext_bakery.build import readback
from sysext_bakery.errors import BakeryError
from sysext_bakery.files import discard, disk_errors, file_digest, forget, make_temp_file
from sysext_bakery.model.image import COMPRESSIONS

PACK_TIMEOUT = 3600.0   # seconds: xz on a multi-GB tree (ollama, kata) takes minutes
EROFS_UUID = "5ab0e7e1-0000-4000-8000-000000000000"   # fixed so the superblock is reproducible
# Beyond -comp: see the module docstring for why zstd gets these.
SQUASHFS_TUNING: dict[str, tuple[str, ...]] = {"zstd": ("-b", "1M", "-Xcompression-level", "10")}


def pack_command(tree: Path, out: Path, fmt: str, compression: str) -> list[str]:
    """The packing command line for `fmt` and `compression` (both already checked)."""
    if fmt == "squashfs":
        return [run.require("mksquashfs"), str(tree), str(out), "-noappend", "-all-root",
                "-mkfs-time", "0", "-all-time", "0", "-root-mode", "755", "-no-xattrs",
                "-comp", compression, *SQUASHFS_TUNING.get(compression, ()), "-quiet", "-no-progress"]
    cmd = [run.require("mkfs.erofs"), "--quiet", "--all-root", "-T0", "-x-1", f"-U{EROFS_UUID}"]
    if compression != "none":
        cmd.append(f"-z{compression}")
    return cmd + [str(out), str(tree)]


def check_format(fmt: str, compression: str) -> None:
    if fmt not in COMPRESSIONS:
        raise BakeryError(f"unknown image format {fmt!r}; allowed: {', '.join(COMPRESSIONS)}",
                          'set format = "squashfs" (the default) or "erofs" in the recipe')
    if compression not in COMPRESSIONS[fmt]:
        allowed = ", ".join(COMPRESSIONS[fmt])
        raise BakeryError(f"unknown {fmt} compression {compression!r}; allowed: {allowed}",
                          f"pick one of {allowed} in the recipe")


def pack(tree: Path, out: Path, fmt: str = "squashfs", compression: str = "zstd") -> str:
    """Pack `tree` into `out`, check the image by reading it back and return its sha256.

    The image is written under a temporary name next to `out` and only renamed into place
    once it matched the tree, so `out` is either the previous file or the complete new one."""
    check_format(fmt, compression)
    if not tree.is_dir():
        raise BakeryError(f"{tree}: no staged tree to pack", "run the stage step first")
    if fmt == "erofs":
        tree.chmod(0o755)  # mkfs.erofs 1.5 has no -root-mode: the root's own mode goes into the image
    with disk_errors(out.parent, f"packing {out}"):
        return _pack(tree, out, fmt, compression)


def _pack(tree: Path, out: Path, fmt: str, compression: str) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    # kept for the stop: a -P thread worker's `except` never runs when the run is stopped (its
    # packer is killed first, run.kill_children, so nothing writes the name once it is removed)
    fd, tmp_name = make_temp_file(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        run.run(pack_command(tree, tmp, fmt, compression), what=f"packing {out}",
                hint="check free disk space and that the staged tree is readable",
                timeout=PACK_TIMEOUT, progress=True)
        diffs = readback.compare(readback.read_image(tmp), readback.tree_entries(tree))
        if diffs:
            shown = "\n  ".join(diffs[:50]) + (f"\n  … and {len(diffs) - 50} more" if len(diffs) > 50 else "")
            raise BakeryError(f"{out}: the packed image differs from {tree}:\n  {shown}",
                              "the tree changed while packing, or the packer dropped something; "
                              "rebuild, and report it if it persists")
        digest = file_digest(tmp, fsync=True)   # flushed before it gets its final name
        tmp.chmod(0o644)  # mkstemp made it 0600; images are published
        os.replace(tmp, out)
        forget(tmp)
    except BaseException:
        discard(tmp)
        raise
    return digest


