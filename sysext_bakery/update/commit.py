"""Committing an update (`doit update --commit`): one commit of release/lock.toml with git,
a message listing the bumps and the sha256 values trusted on first use, a configurable author,
optionally on a new branch for a pull request."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sysext_bakery import gitrepo, run
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
    return "\n".join([title[:200], "", *body]) + "\n"


def commit(root: Path, report: Report, author: str = "", branch: str = "") -> Committed | None:
    """Commit the lock (only the lock); None when the update changed nothing. Refuses when
    other changes are staged, so the commit holds exactly the update."""
    if not report.changed:
        return None
    if not gitrepo.is_toplevel(root):
        raise BakeryError(f"{root}: not a git repository, cannot --commit",
                          "run doit update without --commit, or in a git checkout")
    has_head = gitrepo.resolves(root, "HEAD")
    staged = gitrepo.git(root, "diff-index", "--cached", "--name-only", "-z", "HEAD",
                         what="listing staged changes").text.split("\0") if has_head else []
    others = [p for p in staged if p and p != LOCK]
    if others:
        raise BakeryError(f"--commit: other changes are staged ({', '.join(others[:5])})",
                          "commit or unstage them first: the update commit holds only the lock")
    if branch:
        if gitrepo.resolves(root, f"refs/heads/{branch}"):
            raise BakeryError(f"--branch {branch}: the branch exists already",
                              "name a new branch, or delete the old one")
        gitrepo.git(root, "checkout", "--quiet", "-b", branch, what=f"creating branch {branch}")
    name, mail = parse_author(author or DEFAULT_AUTHOR)
    text = message(report)
    gitrepo.git(root, "add", "--", LOCK, what=f"staging {LOCK}")
    # author and committer are the configured bot, whatever the user's git config says;
    # hooks and commit signing are the user's business, not the update's
    identity = run.environ(GIT_AUTHOR_NAME=name, GIT_AUTHOR_EMAIL=mail,
                           GIT_COMMITTER_NAME=name, GIT_COMMITTER_EMAIL=mail)
    gitrepo.git(root, "-c", "commit.gpgsign=false", "commit", "--quiet", "--no-verify",
                "--allow-empty", "--cleanup=verbatim", "--file=-", input=text.encode(),
                env=identity, what=f"committing {LOCK}")
    sha = gitrepo.git(root, "rev-parse", "HEAD", what="reading the new commit").text.strip()
    current = gitrepo.git(root, "symbolic-ref", "--quiet", "--short", "HEAD", check=False,
                          what="reading the current branch").text.strip() or "(detached)"
    return Committed(sha, current, text)
