"""Real `systemd-sysext merge` of test images, inside a private mount namespace.

The host is left alone: the merge happens in `unshare -m` with a tmpfs on /run (where
systemd-sysext keeps its mounts) against a fake root that has only usr/lib/os-release and
the images in etc/extensions/. Everything mounted disappears with the namespace.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SETUP_FAILED = "run_merged: mount namespace setup failed"
MERGE_FAILED = "run_merged: systemd-sysext merge failed"
UNMERGE_FAILED = "run_merged: systemd-sysext unmerge failed"
NOT_MERGED = "run_merged: systemd-sysext did not merge"

# $BAKERY_SCRIPT runs while merged; systemd-sysext's own chatter goes to stderr so that
# stdout is only the script's. systemd-sysext skips an incompatible image with a message and
# still exits 0, so a merged image is recognised by its extension-release showing up in
# $ROOT/usr.
_WRAPPER = f"""
mount --make-rshared / && mount -t tmpfs tmpfs /run && mount --make-shared /run \
  || {{ echo "{SETUP_FAILED}" >&2; exit 1; }}
systemd-sysext merge --root="$ROOT" >&2 || {{ echo "{MERGE_FAILED}" >&2; exit 1; }}
for name in $BAKERY_MUST_MERGE; do
  [ -e "$ROOT/usr/lib/extension-release.d/extension-release.$name" ] \
    || {{ echo "{NOT_MERGED} $name" >&2; systemd-sysext unmerge --root="$ROOT" >&2; exit 1; }}
done
sh -c "$BAKERY_SCRIPT"
rc=$?
systemd-sysext unmerge --root="$ROOT" >&2 || {{ echo "{UNMERGE_FAILED}" >&2; exit 1; }}
exit $rc
"""


def _why_no_sysext() -> str | None:
    if os.geteuid() != 0:
        return "needs root: a real systemd-sysext merge mounts loop devices and overlayfs"
    if not Path("/dev/loop-control").exists():
        return "no /dev/loop-control: loop devices are needed to mount the images"
    for tool in ("unshare", "systemd-sysext"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a mount namespace: {probe.stderr.strip()}"
    return None


_REASON = _why_no_sysext()
requires_sysext = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def make_root(tmp: Path, os_release: str = "ID=debian\nVERSION_ID=12\n") -> Path:
    """A fake host root for `systemd-sysext --root`: usr/lib/os-release and etc/extensions/."""
    root = tmp / "root"
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text(os_release)
    (root / "etc/extensions").mkdir(parents=True)
    return root


def run_merged(root: Path, images: dict[str, Path], script: str, *,
               must_merge: bool = True) -> subprocess.CompletedProcess:
    """Install exactly `images` as ROOT/etc/extensions/<name>.raw, merge them in a private mount
    namespace, run `script` (sh, with $ROOT set) while merged, then unmerge.

    Returns the completed process of the whole run: its return code is the script's, its
    stdout the script's output (systemd-sysext's messages are in stderr). A failing merge
    or unmerge raises AssertionError, and so does an image systemd-sysext refused unless
    `must_merge` is False (to test that an image is refused: the script then runs with
    whatever was merged)."""
    extensions = root / "etc/extensions"
    for old in extensions.iterdir():  # only this call's images take part
        old.unlink()
    for name, image in images.items():
        shutil.copyfile(image, extensions / f"{name}.raw")
    env = {**os.environ, "ROOT": str(root), "BAKERY_SCRIPT": script,
           "BAKERY_MUST_MERGE": " ".join(images) if must_merge else ""}
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", _WRAPPER],
                          env=env, capture_output=True, text=True, timeout=120)
    if any(marker in done.stderr for marker in (SETUP_FAILED, MERGE_FAILED, NOT_MERGED, UNMERGE_FAILED)):
        raise AssertionError(f"systemd-sysext failed for {sorted(images)} in {root}:\n{done.stderr}")
    return done
