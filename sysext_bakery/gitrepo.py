"""The bakery's own git checkout, through the git CLI and run.py.

Not GitPython: it starts git itself (already when imported) with the whole process
environment, GITHUB_TOKEN and the signing key included; run.py strips those from every child.
"""
from __future__ import annotations

import os
from pathlib import Path

from sysext_bakery import run
from sysext_bakery.errors import BakeryError

GIT_TIMEOUT = 60.0   # seconds; local operations only, never a fetch or push


def git(root: Path, *args: str, what: str, input: bytes | None = None,
        env: dict[str, str] | None = None, check: bool = True) -> run.Done:
    return run.run(["git", "-C", str(root), *args], what=what, input=input, env=env,
                   check=check, timeout=GIT_TIMEOUT)


def is_toplevel(root: Path) -> bool:
    """Whether `root` is the top of a git work tree (a directory inside one is not: the
    bakery tags and commits its own checkout, never an enclosing one). False without git."""
    try:
        done = git(root, "rev-parse", "--show-toplevel", what=f"finding the git checkout at {root}",
                   check=False)
    except BakeryError:      # no git installed: no checkout to work on
        return False
    return done.returncode == 0 and os.path.samefile(done.text.strip(), root)


def resolves(root: Path, rev: str) -> bool:
    """Whether `rev` (a sha, HEAD, refs/tags/x, refs/heads/y) names a commit in `root`."""
    return git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}",
               what=f"resolving {rev} in {root}", check=False).returncode == 0


def reason(done: run.Done) -> str:
    """git's own last line, which says why it failed."""
    lines = run.last_words(done).splitlines()
    return lines[-1].removeprefix("fatal: ").strip() if lines else f"exit status {done.returncode}"
