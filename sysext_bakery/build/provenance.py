"""Provenance records: what each packed image is, where its bytes came from and which bakery
revision built it (`build/state/images/<img>.json`). `doit sums` and publishing read them."""
from __future__ import annotations

import functools
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sysext_bakery import run
from sysext_bakery.errors import BakeryError
from sysext_bakery.files import write_atomic
from sysext_bakery.model.image import Image


# What `git rev-parse --verify HEAD` prints: a full commit id, 40 hex digits (SHA-1) or 64
# (a SHA-256 repository), lower case, nothing added.
_REVISION = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")


def revision_problem(value: str) -> str | None:
    """What makes `value` unusable as a recorded bakery revision, or None. Read back from
    provenance and index.json, it becomes the commit a release tag points at
    (`target_commitish`, GitPython's `repo.commit`): nothing but a commit id may get there,
    no `--option` nor a branch name."""
    if _REVISION.fullmatch(value):
        return None
    return (f"revision {value[:80]!r} is not a full git commit id (40 or 64 lower-case hex "
            "digits, as git rev-parse HEAD prints)")


@functools.cache
def git_revision(root: Path) -> str | None:
    """The commit checked out at `root`, None outside git. Every pack records it, so this is
    one `git rev-parse` per process rather than importing GitPython (0.1 s) on that path."""
    try:
        done = run.run(["git", "-C", str(root), "rev-parse", "--verify", "--quiet", "HEAD"],
                       what="reading the bakery's git revision", check=False, timeout=30)
    except BakeryError:      # no git: the revision is simply unknown
        return None
    revision = done.text.strip() if done.returncode == 0 else ""
    # anything else would be refused where it is read back
    return revision if revision and not revision_problem(revision) else None


def record(image: Image, packed: Path, sha256: str, sources: list[dict[str, str]],
           stream: str | None, revision: str | None) -> dict[str, Any]:
    """The provenance record of `image`, packed into `packed` with digest `sha256`. Size and
    mtime let `doit sums` trust the digest without hashing the image again."""
    st = packed.stat()
    return {
        "name": image.name, "version": image.version, "arch": image.arch, "stream": stream,
        "file": packed.name, "sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
        "format": image.fmt, "compression": image.compression, "sources": sources,
        "replaces": list(image.replaces), "conflicts": list(image.conflicts),
        "revision": revision, "built": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write(path: Path, value: dict[str, Any]) -> None:
    """Place a provenance record atomically: a reader sees the old record or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


def read(path: Path) -> dict[str, Any] | None:
    """The provenance record at `path`; None when it is missing or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
