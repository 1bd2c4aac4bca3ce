"""`bakery inspect IMAGE` / `doit inspect`: a packed image's format, extension-release and
every entry, as text."""
from __future__ import annotations

import stat
from pathlib import Path

from sysext_bakery.model import extension_release as release
from sysext_bakery.build.readback import image_format, read_file, read_image, release_files


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


_TYPE_BITS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "other": 0}


def format_image(path: Path) -> str:
    """A report for `bakery inspect IMAGE`: format, extension-release, then every entry."""
    fmt, compression = image_format(path)
    entries = read_image(path)
    lines = [f"{path}: {fmt}{f' ({compression})' if compression else ''}, "
             f"{_human(path.stat().st_size)}"]
    releases = release_files(entries)
    if not releases:
        lines.append(f"  no {release.RELEASE_PREFIX}* file: systemd-sysext will refuse this image")
    for inner in releases:
        lines.append(f"  {inner}:")
        fields = release.parse(read_file(path, inner).decode(errors="replace"))
        lines += [f"    {key}={value}" for key, value in fields.items()]
    lines.append("")
    for e in entries:
        size = str(e.size) if e.kind == "file" else "-"
        name = e.path + ("/" if e.kind == "dir" else f" -> {e.target}" if e.kind == "symlink" else "")
        lines.append(f"{stat.filemode(_TYPE_BITS[e.kind] | e.mode)} {e.uid:>4}/{e.gid:<4} {size:>12}  {name}")
    files = [e for e in entries if e.kind == "file"]
    total = sum(e.size for e in files)
    counts = {k: sum(e.kind == k for e in entries) for k in ("file", "dir", "symlink", "other")}
    lines.append("")
    lines.append(f"{len(entries)} entries: {counts['file']} files, {counts['dir']} directories, "
                 f"{counts['symlink']} symlinks" + (f", {counts['other']} other" if counts["other"] else "")
                 + f"; files total {total} bytes ({_human(total)})")
    return "\n".join(lines)

