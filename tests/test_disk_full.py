"""Guarantee 6 of issue 13 (docs/security.md): a full disk gives a clear error naming the path,
a non-zero exit and no traceback, and leaves no partial artefact.

Each case mounts a small tmpfs, filled to the last byte, inside a private mount namespace
(`unshare -m`, so the host never sees it) where the bakery writes, and runs the real doit CLI
there; what is left on the tmpfs is listed from inside the namespace before it goes away."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# mount the tmpfs on $1, fill it, run the rest, then list what is left on it (but the filler)
SCRIPT = """
mnt=$1; shift
mount -t tmpfs -o size=256k,mode=0755 tmpfs "$mnt" || exit 90
head -c 1M /dev/zero > "$mnt/filler" 2>/dev/null
"$@"; rc=$?
echo "--- left on $mnt:"
find "$mnt" -mindepth 1 ! -name filler -type f
exit $rc
"""


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if not shutil.which("unshare"):
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"no private mount namespace here: {probe.stderr.strip()}"
    return None


pytestmark = pytest.mark.skipif(bool(_why_not()), reason=_why_not() or "")


def doit_on_full_disk(project, mountpoint: Path, *args: str,
                      env: dict[str, str] | None = None) -> tuple[int, str, list[str]]:
    """(exit status, stdout + stderr, files left on the full tmpfs) of `doit ARGS`."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "BAKERY_MIRROR": project.mirror.url, "BAKERY_ARCH": "x86-64",
                **(env or {})}
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", SCRIPT, "sh",
                           str(mountpoint), sys.executable, "-m", "doit", *args],
                          cwd=project.root, env=full_env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 90, done.stderr
    output, _, left = (done.stdout + done.stderr).partition(f"--- left on {mountpoint}:")
    # the listing goes to stdout after doit's stderr: split stdout, keep all of stderr
    out, _, listing = done.stdout.partition(f"--- left on {mountpoint}:")
    return done.returncode, out + done.stderr, listing.split()


def assert_clear_failure(rc: int, output: str, path: Path) -> None:
    assert rc != 0, output
    assert "Traceback" not in output, output
    assert "No space left on device" in output, output
    assert str(path) in output, output
    assert "hint:" in output, output


@pytest.mark.parametrize("where", ["cache", "stage", "images"])
def test_a_full_disk_under_the_build_fails_clearly_and_keeps_nothing(project, tmp_path, where):
    build = project.root / "build"
    mountpoint = tmp_path / "cache" if where == "cache" else build / where
    env = {"BAKERY_CACHE": str(mountpoint)} if where == "cache" else {}
    if where != "cache":
        project.doit("fetch:wasmtime-29.0.1-x86-64")   # the download lands before the disk fills
    rc, output, left = doit_on_full_disk(project, mountpoint, "pack:wasmtime-29.0.1-x86-64", env=env)
    assert_clear_failure(rc, output, mountpoint)
    assert left == [], f"partial files on the full disk: {left}"
    assert not list(project.images.glob("*.raw"))


def test_a_full_publish_directory_fails_clearly_and_publishes_nothing(project, tmp_path):
    project.doit("build:wasmtime", env={"BAKERY_ARCH": "x86-64"})
    dest = tmp_path / "pub"
    rc, output, left = doit_on_full_disk(project, dest, "release", "--dest", str(dest))
    assert_clear_failure(rc, output, dest)
    # the lock file is made before anything fills; nothing else may be there
    assert [Path(p).name for p in left] == [".publish.lock"], left
