"""Checks that a staged tree is a sysext a host can merge safely.

Every rule runs and every problem is reported at once, each naming its path relative to the
tree, so one build shows the whole list of what to fix.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

from sysext_bakery.build import hostdirs, hostsetup
from sysext_bakery.build.tree import resolve_in_tree
from sysext_bakery.model import extension_release
from sysext_bakery.model.arch import ARCHES
from sysext_bakery.errors import BakeryError

UNIT_DIR = "usr/lib/systemd/system"
RELEASE_DIR = extension_release.RELEASE_DIR
DEPENDENCY_KEYS = ("Upholds", "Wants", "Requires")
EXEC_KEYS = ("ExecCondition", "ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload",
             "ExecStop", "ExecStopPost")
EXEC_PREFIXES = "@-:+!|"   # systemd.service(5): special executable prefixes

# e_machine names for messages: the arches we build plus the usual wrong guesses.
_MACHINE_NAMES = {a.elf_machine: a.name for a in ARCHES.values()} | {
    3: "x86 (i386)", 40: "arm (32-bit)", 8: "mips", 21: "ppc64", 22: "s390x", 243: "riscv64"}


def iter_tree(root: Path) -> Iterator[tuple[str, os.DirEntry]]:
    """Every entry below `root` as (posix path relative to root, entry), sorted, parents
    before children, never following symlinks."""
    yield from _walk(root, "")


def _walk(root: Path, rel: str) -> Iterator[tuple[str, os.DirEntry]]:
    with os.scandir(root / rel if rel else root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        path = f"{rel}/{entry.name}" if rel else entry.name
        yield path, entry
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(root, path)


def elf_header(path: Path | str) -> tuple[int, int] | None:
    """(ELF class, e_machine) of an ELF file, reading only its first 20 bytes; None otherwise."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or not head.startswith(b"\x7fELF"):
        return None
    order = ">" if head[5] == 2 else "<"    # EI_DATA: 1 little-endian, 2 big-endian
    return head[4], struct.unpack_from(order + "H", head, 18)[0]


def validate_tree(tree: Path, name: str, arch: str) -> None:
    """Raises one BakeryError listing every problem of the staged tree of image `name`."""
    problems = _check_top(tree) + _check_host_paths(tree) + _check_elf(tree, arch) \
        + _check_release(tree, name, arch) + _check_dropins(tree) + _check_setup(tree, name) \
        + _check_exec(tree)
    if problems:
        raise BakeryError(
            f"{name} ({arch}): the staged tree is not a valid sysext:\n"
            + "\n".join(f"  {p}" for p in problems),
            hint="the image may hold only usr/ and opt/, nothing in usr/sbin, no file or link "
                 "where a host has a directory, binaries for "
                 f"{arch}, every unit its drop-ins name, units starting the programs it ships "
                 "where it ships them, and the setup unit of its sysusers.d/tmpfiles.d files: fix what put these files there "
                 "(a recipe's install map, files/ or [units]; a torcx image's contents or --arch)")


def _check_top(tree: Path) -> list[str]:
    problems = []
    for entry in sorted(os.scandir(tree), key=lambda e: e.name):
        if entry.name == "etc":
            problems.append("etc: a sysext cannot ship /etc (host configuration); "
                            "put defaults under usr/")
        elif entry.name not in ("usr", "opt"):
            problems.append(f"{entry.name}: only usr/ and opt/ may be at the top of a sysext")
        elif not entry.is_dir(follow_symlinks=False):
            problems.append(f"{entry.name}: must be a directory")
    return problems


def _check_host_paths(tree: Path) -> list[str]:
    problems = []
    if os.path.lexists(tree / "usr/lib/os-release"):
        problems.append("usr/lib/os-release: a sysext must not replace the host's os-release")
    base_dirs = hostdirs.base_tree_dirs()
    for rel, entry in iter_tree(tree):
        # usr/sbin has its own rule below (nothing may be there at all)
        if not entry.is_dir(follow_symlinks=False) and rel != "usr/sbin" \
                and hostdirs.shadows_host_dir(rel, base_dirs):
            problems.append(f"{rel}: must be a directory (a file or link here would hide the "
                            f"host's whole /{rel} once merged)")
    sbin = tree / "usr/sbin"
    if os.path.lexists(sbin):
        inside = [f"usr/sbin/{rel}" for rel, _ in iter_tree(sbin)] if sbin.is_dir() and \
            not sbin.is_symlink() else []
        problems.append("usr/sbin: must not exist (on Flatcar it is a symlink to bin and the "
                        "image would replace it); install into usr/bin instead"
                        + (f"; found {', '.join(inside)}" if inside else ""))
    return problems


def _check_elf(tree: Path, arch: str) -> list[str]:
    if arch not in ARCHES:
        return [f"image arch {arch!r} is unknown (known: {', '.join(ARCHES)})"]
    want = ARCHES[arch]
    problems = []
    for rel, entry in iter_tree(tree):
        if not entry.is_file(follow_symlinks=False):
            continue
        header = elf_header(entry.path)
        if header is None:
            continue
        elf_class, machine = header
        if machine != want.elf_machine:
            problems.append(f"{rel}: ELF machine {_MACHINE_NAMES.get(machine, f'e_machine {machine}')}"
                            f", image arch {arch}")
        elif elf_class != want.elf_class:
            problems.append(f"{rel}: {32 if elf_class == 1 else 64}-bit ELF, image arch {arch} is "
                            f"{32 if want.elf_class == 1 else 64}-bit")
    return problems


def _check_release(tree: Path, name: str, arch: str) -> list[str]:
    rel = extension_release.path(name)
    problems = []
    release_dir = tree / RELEASE_DIR
    if release_dir.is_dir() and not release_dir.is_symlink():
        for entry in sorted(os.scandir(release_dir), key=lambda e: e.name):
            if entry.name != extension_release.file_name(name):
                problems.append(f"{RELEASE_DIR}/{entry.name}: named for another image "
                                f"(systemd-sysext reads only extension-release.{name})")
    path = tree / rel
    if not path.is_file() or path.is_symlink():
        return problems + [f"{rel}: missing or not a regular file (systemd-sysext refuses the image "
                           "without it)"]
    fields = extension_release.parse(path.read_text(errors="replace"))
    if "ID" not in fields:
        problems.append(f"{rel}: no ID= (use ID=_any for any OS)")
    if fields.get("ARCHITECTURE") != arch:
        problems.append(f"{rel}: ARCHITECTURE={fields.get('ARCHITECTURE', '')}, image arch {arch}")
    return problems


def _check_dropins(tree: Path) -> list[str]:
    unit_dir = tree / UNIT_DIR
    if not unit_dir.is_dir() or unit_dir.is_symlink():
        return []
    problems = []
    for rel, entry in iter_tree(unit_dir):
        parent, _, filename = rel.rpartition("/")
        if not (parent.endswith(".d") and "/" not in parent and filename.endswith(".conf")
                and entry.is_file(follow_symlinks=False)):
            continue
        text = Path(entry.path).read_text(errors="replace")
        for key, unit in _dependencies(text):
            if not _unit_exists(unit_dir, unit):
                problems.append(f"{UNIT_DIR}/{rel}: {key}={unit}, but {UNIT_DIR}/{unit} is not "
                                "in the image")
    return problems


def _check_exec(tree: Path) -> list[str]:
    """The programs units start, where the image is what decides: a program the image ships
    must be executable, and one it does not ship must not be a program it ships elsewhere
    (upstream's unit says /usr/sbin/tailscaled, the image has /usr/bin/tailscaled: the unit
    would fail on every host). Programs of the host (/bin/kill, /usr/bin/env) are not ours
    to check."""
    unit_dir = tree / UNIT_DIR
    if not unit_dir.is_dir() or unit_dir.is_symlink():
        return []
    shipped: dict[str, list[str]] = {}          # file name -> executables the image ships
    for rel, entry in iter_tree(tree):
        if not entry.is_dir(follow_symlinks=False):
            shipped.setdefault(rel.rpartition("/")[2], []).append(rel)
    problems = []
    for rel, entry in iter_tree(unit_dir):
        if not entry.is_file(follow_symlinks=False) or \
                not rel.endswith((".service", ".socket", ".mount", ".swap", ".conf")):
            continue
        for key, program in _exec_programs(Path(entry.path).read_text(errors="replace")):
            where = f"{UNIT_DIR}/{rel}: {key}={program}"
            inside = program.lstrip("/")
            if os.path.lexists(tree / inside):
                resolved = resolve_in_tree(tree, inside)
                if resolved is None or not (tree / resolved).is_file() or \
                        not os.stat(tree / resolved).st_mode & 0o111:
                    problems.append(f"{where}: the image ships it, but not as an executable file")
            elif others := [o for o in shipped.get(inside.rpartition("/")[2], ())
                            if o.startswith(("usr/", "opt/"))]:
                problems.append(f"{where}, but the image ships {', '.join(others)}, not {inside}: "
                                "fix the path in the unit (`replace` in the install map for a "
                                "unit taken from an archive)")
    return problems


def _exec_programs(text: str) -> Iterator[tuple[str, str]]:
    """(key, absolute program path) of each Exec*= line."""
    for key, value in _assignments(text):
        if key not in EXEC_KEYS:
            continue
        words = value.strip().lstrip(EXEC_PREFIXES).split()
        if words and words[0].startswith("/") and "$" not in words[0]:
            yield key, words[0]


def _check_setup(tree: Path, name: str) -> list[str]:
    """sysusers.d/tmpfiles.d files need the setup unit (see build/hostsetup.py): without it
    a host whose /etc is already set up never creates the image's users and groups."""
    want = hostsetup.plan_setup(tree, name)
    if want is None:
        return []
    rel = f"{UNIT_DIR}/{want.unit}"
    path = tree / rel
    if not path.is_file() or path.is_symlink():
        return [f"{rel}: missing: the image ships {', '.join(want.sysusers + want.tmpfiles)}, "
                "which systemd-sysusers.service (ConditionNeedsUpdate=/etc) does not apply on a "
                "host that is already set up"]
    text = path.read_text(errors="replace")
    execs = {value.strip() for key, value in _assignments(text) if key == "ExecStart"}
    problems = [f"{rel}: no ExecStart={line}" for line in hostsetup.exec_lines(want)
                if line not in execs]
    for unit in want.units:
        dropins = tree / UNIT_DIR / f"{unit}.d"
        wanted = dropins.is_dir() and any(
            (key in ("Wants", "Requires") and want.unit in value.split())
            for conf in sorted(dropins.glob("*.conf"))
            for key, value in _assignments(conf.read_text(errors="replace")))
        if not wanted:
            problems.append(f"{UNIT_DIR}/{unit}: starts without {want.unit} (no drop-in in "
                            f"{unit}.d wants it)")
    return problems


def _assignments(text: str) -> Iterator[tuple[str, str]]:
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith(("#", ";")):
            yield key.strip(), value


def _dependencies(text: str) -> Iterator[tuple[str, str]]:
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.strip() in DEPENDENCY_KEYS:
            for unit in value.split():
                yield key.strip(), unit


def _unit_exists(unit_dir: Path, unit: str) -> bool:
    # Targets are the host's synchronisation points (network-online.target, …): a drop-in
    # may pull them in without shipping them.
    if "/" in unit:
        return False
    if unit.endswith(".target"):
        return True
    if os.path.lexists(unit_dir / unit):
        return True
    prefix, at, rest = unit.partition("@")    # foo@bar.service is an instance of foo@.service
    return bool(at) and os.path.lexists(unit_dir / f"{prefix}@.{rest.rpartition('.')[2]}")
