"""Committing an update (`doit update --commit`): one commit of release/lock.toml with GitPython,
a message listing the bumps, the sha256 values trusted on first use and discovery's page-bound
warnings, a configurable author,
optionally on a new branch for a pull request."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sysext_bakery import run
from sysext_bakery.errors import BakeryError
from sysext_bakery.settings import LOCK
from sysext_bakery.update.run import Report, summary

AUTHOR_RE = re.compile(r"\s*([^<>]+?)\s*<([^<>\s]+)>\s*")
DEFAULT_AUTHOR = "sysext-bakery <sysext-bakery@users.noreply.github.com>"


@dataclass(frozen=True)
class Committed:
    sha: str
    branch: str
    message: str


def parse_author(text: str) -> tuple[str, str]:
    m = AUTHOR_RE.fullmatch(text)
    if not m:
        raise BakeryError(f"--author {text!r}: expected \"Name <mail>\"",
                          "e.g. --author \"Bakery Bot <bot@example.org>\"")
    return m.group(1), m.group(2)


def message(report: Report) -> str:
    lines = summary(report)
    title = "release: " + ("; ".join(lines) if len(lines) == 1 else f"update {len(lines)} recipes")
    body = [f"- {line}" for line in lines]
    if report.tofu:
        body += ["", "sha256 computed by downloading at update time (no upstream checksum; "
                 "trust on first use, review):"]
        body += [f"- {url} {digest}" for url, digest in report.tofu]
    if report.failed:
        body += ["", "not updated (upstream failed): " + ", ".join(r.name for r in report.failed)]
    # a version discovery did not see may be missing from the lock: the reviewer must know
    warned = [f"- {r.name}: {w}" for r in report.recipes for w in r.warnings]
    if warned:
        body += ["", "discovery read only part of upstream (page bound):", *warned]
    return "\n".join([title[:200], "", *body]) + "\n"


def preflight(root: Path, author: str = "", branch: str = "") -> None:
    """What would refuse the commit, checked before the update writes the lock: a refusal
    after it would leave the new lock uncommitted, and the next run, finding nothing new,
    would say `nothing to commit`."""
    parse_author(author or DEFAULT_AUTHOR)
    with run.secrets_withheld():
        _check(_repo(root), branch)


def _repo(root: Path):
    import git
    try:
        return git.Repo(root)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise BakeryError(f"{root}: not a git repository, cannot --commit",
                          "run doit update without --commit, or in a git checkout") from None


def _check(repo, branch: str) -> None:
    staged = [d.a_path for d in repo.index.diff("HEAD")] if repo.head.is_valid() else []
    others = [p for p in staged if p != LOCK]
    if others:
        raise BakeryError(f"--commit: other changes are staged ({', '.join(others[:5])})",
                          "commit or unstage them first: the update commit holds only the lock")
    if branch and branch in repo.heads:
        raise BakeryError(f"--branch {branch}: the branch exists already",
                          "name a new branch, or delete the old one")


def commit(root: Path, report: Report, author: str = "", branch: str = "") -> Committed | None:
    """Commit the lock (only the lock); None when the update changed nothing. Refuses when
    other changes are staged, so the commit holds exactly the update."""
    if not report.changed:
        return None
    with run.secrets_withheld():   # git must not see GITHUB_TOKEN or the signing key
        return _commit(root, report, author, branch)


def _commit(root: Path, report: Report, author: str, branch: str) -> Committed:
    import git
    repo = _repo(root)
    _check(repo, branch)
    if branch:
        repo.create_head(branch).checkout()
    name, mail = parse_author(author or DEFAULT_AUTHOR)
    actor = git.Actor(name, mail)
    text = message(report)
    repo.index.add([LOCK])
    made = repo.index.commit(text, author=actor, committer=actor)
    current = repo.active_branch.name if not repo.head.is_detached else "(detached)"
    return Committed(made.hexsha, current, text)
