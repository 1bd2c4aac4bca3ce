"""inspect: the `bakery inspect` / `doit inspect` report of a real image."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sysext_bakery.build import inspect
from sysext_bakery.build.pack import pack
from test_readback import image, tree  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parent.parent


def test_format_image_shows_release_and_listing(image: Path, tree: Path) -> None:
    text = inspect.format_image(image)
    lines = text.splitlines()

    assert lines[0].startswith(f"{image}: squashfs (zstd), ")
    assert "  usr/lib/extension-release.d/extension-release.tool:" in lines
    for field in ("ID=_any", "ARCHITECTURE=x86-64", "SYSEXT_VERSION_ID=2.0", "EXTENSION_RELOAD_MANAGER=1"):
        assert f"    {field}" in lines
    tool_size = 64 + 100
    assert any(line.startswith("-rwxr-xr-x    0/0 ") and line.endswith(f" {tool_size}  usr/bin/tool")
               for line in lines)
    assert any(line.startswith("lrwxrwxrwx") and line.endswith("usr/bin/link -> tool") for line in lines)
    assert any(line.startswith("drwxr-xr-x") and line.endswith("  usr/bin/") for line in lines)
    total = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    assert lines[-1] == f"11 entries: 4 files, 6 directories, 1 symlinks; files total {total} bytes " \
                        f"({total / 1024:.1f} KiB)"


def test_format_image_warns_without_extension_release(tmp_path: Path) -> None:
    (tmp_path / "t/usr/bin").mkdir(parents=True)
    (tmp_path / "t/usr/bin/x").write_text("x")
    pack(tmp_path / "t", tmp_path / "x.raw", "erofs", "lz4")
    text = inspect.format_image(tmp_path / "x.raw")
    assert text.splitlines()[0].startswith(f"{tmp_path / 'x.raw'}: erofs, ")
    assert "no usr/lib/extension-release.d/extension-release.* file" in text


def test_cli_prints_the_report_and_fails_cleanly(image: Path, tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "sysext_bakery.cli", "inspect", str(image)],
                        capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert "SYSEXT_VERSION_ID=2.0" in ok.stdout and "usr/bin/link -> tool" in ok.stdout

    missing = tmp_path / "missing.raw"
    bad = subprocess.run([sys.executable, "-m", "sysext_bakery.cli", "inspect", str(missing)],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert bad.stderr.startswith(f"bakery: error: {missing}: cannot read image")
