"""Fuzzed tar and zip downloads through the real staging path: every input either stages
inside the stage directory or is refused with BakeryError, never another exception, and
nothing is ever created outside the stage directory."""
from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
import tempfile
import warnings
import zipfile
from pathlib import Path

import zstandard
from hypothesis import HealthCheck, given, settings, strategies as st

from sysext_bakery.errors import BakeryError
from sysext_bakery.model.image import Install
from sysext_bakery.build.stage import stage_image
from archives import by_hash, image, source

SEGMENTS = ["a", "b", "bin", "..", ".", "", "x" * 256, "nul\0byte", "é", "usr"]
names = st.builds(
    lambda lead, parts: lead + "/".join(parts),
    st.sampled_from(["", "", "", "/", "./", "../"]),
    st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4),
) | st.sampled_from(["..", "/", "/etc/passwd", "a" * 5000, "a/" * 2000])
TAR_TYPES = [tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
             tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE,
             tarfile.CONTTYPE, b"V"]
ZIP_TYPES = [stat.S_IFREG, stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR,
             stat.S_IFIFO, stat.S_IFBLK, 0]

members = st.lists(st.tuples(
    names,                                   # name
    st.sampled_from(range(len(TAR_TYPES))),  # type index (zip maps it onto ZIP_TYPES)
    names,                                   # link target
    st.integers(0, 0o7777),                  # mode, setuid and sticky included
    st.binary(max_size=64),
), min_size=1, max_size=6)
damage = st.one_of(st.none(), st.tuples(st.sampled_from(["truncate", "flip"]),
                                        st.floats(0, 1, exclude_max=True)))


def tar_bytes(entries) -> bytes | None:
    buf = io.BytesIO()
    try:
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, t, link, mode, data in entries:
                info = tarfile.TarInfo(name)
                info.type, info.mode, info.linkname = TAR_TYPES[t], mode, link
                if info.isreg():
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                else:
                    tar.addfile(info)
    except (ValueError, tarfile.TarError, UnicodeError):
        return None                          # tarfile cannot even write it
    return buf.getvalue()


def zip_bytes(entries) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as zf:
        warnings.simplefilter("ignore")      # duplicate names are part of the point
        for name, t, link, mode, data in entries:
            info = zipfile.ZipInfo(name or "empty")
            info.create_system = 3
            info.external_attr = (ZIP_TYPES[t % len(ZIP_TYPES)] | mode) << 16
            zf.writestr(info, link.encode("utf-8", "surrogateescape")
                        if ZIP_TYPES[t % len(ZIP_TYPES)] == stat.S_IFLNK else data)
    return buf.getvalue()


COMPRESS = {"tar": lambda b: b, "tar.gz": lambda b: __import__("gzip").compress(b, mtime=0),
            "tar.zst": lambda b: zstandard.ZstdCompressor().compress(b),
            "tar.xz": lambda b: __import__("lzma").compress(b)}


def damaged(raw: bytes, how) -> bytes:
    if how is None or not raw:
        return raw
    what, where = how
    at = int(where * len(raw))
    if what == "truncate":
        return raw[:at]
    return raw[:at] + bytes([raw[at] ^ 0x5A]) + raw[at + 1:]


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip.parent:
            dirnames[:] = [d for d in dirnames if d != skip.name]
        for name in dirnames + filenames:
            st_ = os.lstat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st_.st_mode, st_.st_size)
    return out


def assert_inside(tree: Path) -> None:
    """Every link in the staged tree resolves inside it: nothing can reach out at merge."""
    real = os.path.realpath(tree)
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            assert os.path.commonpath([os.path.realpath(path), real]) == real, path


@settings(max_examples=160, deadline=None, suppress_health_check=list(HealthCheck))
@given(entries=members, kind=st.sampled_from(["tar", "tar.gz", "tar.zst", "tar.xz", "zip"]),
       how=damage, via_unpacked=st.booleans(), allow_setuid=st.booleans())
def test_fuzzed_archives_stage_inside_or_raise_bakery_error(entries, kind, how, via_unpacked,
                                                            allow_setuid) -> None:
    raw = zip_bytes(entries) if kind == "zip" else tar_bytes(entries)
    if raw is None:
        return
    if kind != "zip":
        raw = COMPRESS[kind](raw)
    base = Path(tempfile.mkdtemp(prefix="bakery-fuzz."))
    try:
        (base / "outside").mkdir()
        (base / "outside" / "canary").write_text("untouched")
        archive = base / f"fuzz.{kind}"
        archive.write_bytes(damaged(raw, how))
        if via_unpacked:
            archive = by_hash(archive)
        stage = base / "stage"
        dest = stage / "fuzz"
        before = snapshot(base, stage)
        src = source(f"fuzz.{kind}", kind, Install("**", "/usr/lib/fuzz/"),
                     allow_setuid=allow_setuid)
        try:
            stage_image(image(src), [archive], dest,
                        unpacked=stage / ".unpacked" if via_unpacked else None)
        except BakeryError as e:
            assert str(e)
            assert not dest.exists()
            assert sorted(os.listdir(stage)) in ([], [".unpacked"])
        else:
            assert_inside(dest)
        assert snapshot(base, stage) == before
    finally:
        shutil.rmtree(base)
