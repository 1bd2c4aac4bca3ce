"""Facts about how an image was built that go into its provenance record."""
from __future__ import annotations

import functools
from pathlib import Path

from sysext_bakery import run
from sysext_bakery.errors import BakeryError


@functools.cache
def git_revision(root: Path) -> str | None:
    """The commit checked out at `root`, None outside git. Every pack records it, so this is
    one `git rev-parse` per process rather than importing GitPython (0.1 s) on that path."""
    try:
        done = run.run(["git", "-C", str(root), "rev-parse", "--verify", "--quiet", "HEAD"],
                       what="reading the bakery's git revision", check=False, timeout=30)
    except BakeryError:      # no git: the revision is simply unknown
        return None
    return done.text.strip() or None if done.returncode == 0 else None
