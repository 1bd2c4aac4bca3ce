"""The install map: which members of a source's download go where in the tree, with which
modes. Patterns match archive paths segment by segment ('*' stays within one directory,
'**' spans any depth)."""
from __future__ import annotations

import fnmatch
import io
from functools import partial
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sysext_bakery.errors import BakeryError
from sysext_bakery.model.image import Install, Source
from sysext_bakery.build.archive import Member, iter_members
from sysext_bakery.build.budget import Budget
from sysext_bakery.build.tree import SPECIAL_BITS, Tree

# Replacements are for text (unit files, configs): anything larger is not what they are for.
MAX_REPLACE_SIZE = 4 << 20

@dataclass(frozen=True)
class _Rule:
    install: Install
    segments: tuple[str, ...]   # the pattern, split on "/"
    keep_from: int              # into a directory, members keep their path from this segment on
    dest: str                   # relative to the tree, no trailing "/"
    into_dir: bool              # dest ended with "/"


def _rule(install: Install, origin: str) -> _Rule:
    segments = tuple(p for p in install.pattern.split("/") if p not in ("", "."))
    dest = install.dest.strip("/")
    if not segments or ".." in segments or not dest:
        raise BakeryError(f"{origin}: install: '{install.pattern}' = '{install.dest}' is not a "
                          "pattern inside the archive and a path under /usr or /opt",
                          hint='write e.g. "docker/*" = "/usr/bin/"')
    # Into a directory a file lands under its own name ("*/wasmtime" -> wasmtime); with "**"
    # the part of its path matched from the "**" on is kept ("lib/**" copies the tree).
    keep_from = segments.index("**") if "**" in segments else len(segments) - 1
    return _Rule(install, segments, keep_from, dest, install.dest.endswith("/"))


def _matches(segments: Sequence[str], parts: Sequence[str]) -> bool:
    """fnmatch per path segment, so "*" never crosses "/"; a "**" segment spans any depth."""
    if not segments:
        return not parts
    if segments[0] == "**":
        return any(_matches(segments[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], segments[0]) and \
        _matches(segments[1:], parts[1:])


def _target(rule: _Rule, parts: list[str]) -> str:
    if not rule.into_dir:
        return rule.dest
    return "/".join([rule.dest, *parts[rule.keep_from:]])


def file_mode(member_mode: int, install_mode: int | None) -> int:
    """The mode an installed file gets: the recipe's, else 0755 for executables and 0644
    for the rest; setuid/setgid carried over from the member (refused by the caller unless
    the source allows it)."""
    base = install_mode if install_mode is not None else (0o755 if member_mode & 0o111 else 0o644)
    return base | (member_mode & SPECIAL_BITS)


def install_source(tree: Tree, source: Source, download: Path) -> None:
    """Places the members of one download that its install map selects."""
    rules = [_rule(i, source.origin) for i in source.install]
    matched: list[list[str]] = [[] for _ in rules]
    replaced: list[set[str]] = [set() for _ in rules]         # per rule: the `old`s that matched
    installed: dict[str, str] = {}                           # member name -> first tree path
    pending: dict[str, list[tuple[str, int, str]]] = {}      # hardlink target -> (rel, mode, who)
    first_names: list[str] = []
    budget = Budget(source.limits, download.stat().st_size, f"{source.origin}: {source.filename}")
    with _members(source, download) as members:
        for member, content in members:
            if len(first_names) < 8:
                first_names.append(member.name)
            parts = member.name.split("/")
            hits_here = [i for i, rule in enumerate(rules) if _matches(rule.segments, parts)]
            # A file some rule rewrites is read once: each rule gets the original text.
            original = _read_for_replace(member, content, source) \
                if any(rules[i].install.replace for i in hits_here) else None
            for i in hits_here:
                rule, hits = rules[i], matched[i]
                if hits and not rule.into_dir and member.type != "dir":
                    raise BakeryError(
                        f"{source.origin}: install: pattern '{rule.install.pattern}' matches "
                        f"several members ('{hits[-1]}', '{member.name}') but "
                        f"'{rule.install.dest}' is one file",
                        hint="end the destination with '/' to install them into that directory")
                hits.append(member.name)
                rel = _target(rule, parts)
                who = who_prefix(source) + f"'{member.name}'"
                if member.type == "dir":
                    tree.add_dir(rel, who)
                elif member.type == "symlink":
                    tree.add_symlink(rel, member.linkname, who)
                elif original is not None:
                    text = _apply(rule.install.replace, original, replaced[i])
                    tree.add_file(rel, io.BytesIO(text), _checked_mode(member, rule.install, source), who)
                else:
                    mode = _checked_mode(member, rule.install, source)
                    # A member selected twice, or a hardlink to one already placed: copy that file.
                    origin_name = member.name if member.type == "file" else member.linkname
                    if origin_name in installed:
                        tree.copy_file(rel, installed[origin_name], mode, who,
                                       partial(budget.reader, member=member.name))
                    elif member.type == "file":
                        budget.admit(member.name, member.size)
                        tree.add_file(rel, budget.reader(content, member.name), mode, who)
                        installed[member.name] = rel
                    else:
                        pending.setdefault(member.linkname, []).append((rel, mode, who))
    for rule, hits in zip(rules, matched):
        if not hits:
            raise BakeryError(
                f"{source.origin}: install: pattern '{rule.install.pattern}' matched nothing in "
                f"{source.filename}",
                hint="patterns match archive paths segment by segment ('*' stays within one "
                     "directory, '**' spans any depth); the archive starts with: "
                     + ", ".join(first_names))
    for rule, hits, seen in zip(rules, matched, replaced):
        for old, _new in rule.install.replace:
            if old not in seen:
                raise BakeryError(
                    f"{source.origin}: install.\"{rule.install.pattern}\".replace.\"{old}\": "
                    f"matched nothing in {', '.join(hits)} ({source.filename})",
                    hint="upstream's file changed: check what it says now and update or drop "
                         "the replacement")
    if pending:
        _install_hardlink_targets(tree, source, download, pending, budget)


def _read_for_replace(member: Member, content: BinaryIO | None, source: Source) -> bytes | None:
    """The text of a file member that an entry with `replace` selects; refuses what is not
    text. None for directories (created as usual)."""
    where = f"{source.origin}: {source.filename}: member '{member.name}'"
    if member.type == "dir":
        return None
    if member.type != "file" or content is None:
        raise BakeryError(f"{where} is a {member.type}; replace only rewrites regular files",
                          hint="select the file the link points to, or drop `replace`")
    data = content.read(MAX_REPLACE_SIZE + 1)
    if data.startswith(b"\x7fELF"):
        raise BakeryError(f"{where} is an ELF binary; replace only rewrites text files",
                          hint="narrow the pattern to the unit or config file, or drop `replace`")
    if len(data) > MAX_REPLACE_SIZE or b"\0" in data:
        raise BakeryError(f"{where} is not a text file (binary or over "
                          f"{MAX_REPLACE_SIZE >> 20} MiB); replace only rewrites text files",
                          hint="narrow the pattern to the unit or config file, or drop `replace`")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BakeryError(f"{where} is not UTF-8 text ({e.reason} at byte {e.start}); "
                          "replace only rewrites text files",
                          hint="narrow the pattern to the unit or config file, or drop `replace`") from None
    return data


def _apply(replace: Sequence[tuple[str, str]], original: bytes, seen: set[str]) -> bytes:
    """`original` with each literal replacement applied in order; notes in `seen` which
    ones found something."""
    text = original.decode("utf-8")
    for old, new in replace:
        if old in text:
            seen.add(old)
            text = text.replace(old, new)
    return text.encode("utf-8")


def _install_hardlink_targets(tree: Tree, source: Source, download: Path,
                              pending: dict[str, list[tuple[str, int, str]]],
                              budget: Budget) -> None:
    """Hardlinks whose target no pattern selected: a second pass reads those targets."""
    with _members(source, download) as members:
        for member, content in members:
            for i, (rel, mode, who) in enumerate(pending.get(member.name, ())):
                if i == 0:
                    budget.admit(member.name, member.size)
                    tree.add_file(rel, budget.reader(content, member.name), mode, who)
                    first = rel
                else:
                    tree.copy_file(rel, first, mode, who,
                                   partial(budget.reader, member=member.name))


def _members(source: Source, download: Path) -> closing[Iterator[tuple[Member, BinaryIO | None]]]:
    # closing(): when a member is refused, the archive (and its decompressor child) is
    # closed right away, not whenever the traceback lets go of the generator.
    return closing(iter_members(download, source.kind, source.origin, source.filename))


def who_prefix(source: Source) -> str:
    """How messages name a source's members, up to the member's quoted name."""
    return f"{source.origin}: {source.filename}: "


def _checked_mode(member: Member, install: Install, source: Source) -> int:
    mode = file_mode(member.mode, install.mode)
    if mode & SPECIAL_BITS and not source.allow_setuid:
        raise BakeryError(
            f"{source.origin}: {source.filename}: member '{member.name}' is setuid/setgid "
            f"(mode {mode:04o})",
            hint="set allow-setuid = true on this source if the tool really needs it")
    return mode
