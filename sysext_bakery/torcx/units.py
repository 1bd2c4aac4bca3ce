"""Units made independent of torcx: torcx.target dependencies, the seal file and the
TORCX_* variables go, `*.wants/` links become `Upholds=` drop-ins, and files that still
mention torcx are reported."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from sysext_bakery.errors import BakeryError
from sysext_bakery.recipe.schema import UNIT_SUFFIXES
from sysext_bakery.build.validate import iter_tree
from sysext_bakery.torcx.relocate import RELOCATE, UNIT_DIR, relocate

# The values the torcx runtime variables take once the image is merged into /usr.
TORCX_VARS = {"TORCX_BINDIR": "/usr/bin", "TORCX_UNPACKDIR": "/", "TORCX_IMAGEDIR": ""}
_VAR_REF = re.compile(r"\$\{(TORCX_[A-Z_]+)\}|\$(TORCX_[A-Z_]+)")
_DEPENDENCY = re.compile(r"^\s*(Requires|Wants|After|Before|BindsTo|PartOf|Requisite)\s*=(.*)$")
_TORCX_ENV_FILE = re.compile(r"^\s*EnvironmentFile\s*=\s*-?/run/metadata/torcx\s*$")
_ENVIRONMENT = re.compile(r"^(\s*Environment\s*=)(.*)$")
_ENV_WORD = re.compile(r"\"[^\"]*\"|'[^']*'|\S+")      # systemd's quoting of Environment=
_TORCX_ASSIGNMENT = re.compile(r"[\"']?TORCX_[A-Z_]+=")
_LEFTOVER = re.compile(r"torcx", re.IGNORECASE)
_FREE_TEXT = re.compile(r"^\s*(?:[#;]|(?:Description|Documentation)\s*=)")  # may name torcx
_UNPACK = r"(?:\$\{TORCX_UNPACKDIR\}|\$TORCX_UNPACKDIR\b|/run/torcx/unpack)"
_IMAGEDIR = r"(?:\$\{TORCX_IMAGEDIR\}|\$TORCX_IMAGEDIR\b)"
# TORCX_UNPACKDIR not followed by TORCX_IMAGEDIR: another image's tree, or this image's
# under a path the conversion does not know.
_UNPACK_ELSEWHERE = re.compile(r"(?:\$\{TORCX_UNPACKDIR\}|\$TORCX_UNPACKDIR\b)(?!"
                               + _IMAGEDIR + r")[^\s\"']*")


def substitute(text: str, torcx_name: str, origin: str) -> str:
    """Replaces references to the torcx runtime variables by their values in a sysext:
    paths into the unpacked image become their /usr place, the rest take TORCX_VARS.
    `torcx_name` is the torcx image's own name, which its units use in unpack paths even
    when the sysext is given another name."""
    image_paths = re.compile(
        _UNPACK + r"(?:" + _IMAGEDIR + r"|/" + re.escape(torcx_name) + r")"
        r"/(" + "|".join(RELOCATE) + r")(?=[/\s\"']|$)")
    text = image_paths.sub(lambda m: "/" + relocate(m[1]), text)
    if m := _UNPACK_ELSEWHERE.search(text):
        raise BakeryError(f"{origin}: {m[0]} is not in the bin/, lib/, ... directories of the "
                          f"torcx image {torcx_name!r}, so it has no place in the sysext",
                          "fix the unit in the torcx archive to use the file's /usr path")
    text = text.replace("/run/torcx/bin", TORCX_VARS["TORCX_BINDIR"])

    def value(m: re.Match) -> str:
        var = m[1] or m[2]
        if var not in TORCX_VARS:
            raise BakeryError(f"{origin}: refers to ${{{var}}}, which has no meaning without torcx",
                              f"edit the unit to drop it; only {', '.join(TORCX_VARS)} are "
                              "converted")
        return TORCX_VARS[var]
    return _VAR_REF.sub(value, text)


def rewrite_unit(text: str, torcx_name: str, origin: str) -> str:
    """A torcx unit made independent of torcx: no torcx.target dependency, no seal file,
    no TORCX_* variables (references substituted, assignments dropped). A line that still
    refers to torcx afterwards would fail at boot, so it is an error naming the line."""
    lines = []
    leftover = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{origin}:{number}"
        if _TORCX_ENV_FILE.match(line):
            continue
        if m := _DEPENDENCY.match(line):
            units = [u for u in m[2].split() if u != "torcx.target"]
            if not units:
                continue
            line = f"{m[1]}={' '.join(units)}" if len(units) != len(m[2].split()) else line
        if m := _ENVIRONMENT.match(line):
            words = _ENV_WORD.findall(m[2])
            kept = [w for w in words if not _TORCX_ASSIGNMENT.match(w)]
            if not kept:
                continue
            line = m[1] + " ".join(kept) if len(kept) != len(words) else line
        line = substitute(line, torcx_name, where)
        if _LEFTOVER.search(line) and not _FREE_TEXT.match(line):
            leftover.append(f"{where}: {line.strip()}")
        lines.append(line)
    if leftover:
        raise BakeryError(f"torcx image {torcx_name!r}: a unit still refers to torcx after "
                          "conversion, and torcx is gone at boot:\n  " + "\n  ".join(leftover),
                          "only torcx.target, /run/metadata/torcx, the TORCX_* variables and "
                          "paths into this image are converted; fix the unit in the torcx "
                          "archive (unpack, edit, tar -czf it again)")
    return "\n".join(lines) + "\n"


def rewrite_units(root: Path, torcx_name: str) -> bool:
    """Rewrites every unit file and drop-in of the tree in place; True if there are units."""
    unit_dir = root / UNIT_DIR
    if not unit_dir.is_dir():
        return False
    found = False
    for path in sorted(unit_dir.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        is_dropin = path.parent.name.endswith(".d") and path.suffix == ".conf"
        if not (path.name.endswith(UNIT_SUFFIXES) or is_dropin):
            continue
        found = found or not is_dropin
        origin = f"{torcx_name}: /{path.relative_to(root)}"
        path.write_text(rewrite_unit(path.read_text(), torcx_name, origin))
    return found


def wants_to_upholds(root: Path, name: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Removes `<target>.wants/` and `.requires/` directories from the unit directory and
    returns what they enabled, for `Upholds=` drop-ins (no /etc symlinks needed)."""
    unit_dir = root / UNIT_DIR
    upholds: dict[str, list[str]] = {}
    if not unit_dir.is_dir():
        return ()
    for wants in sorted(unit_dir.iterdir()):
        if not wants.is_dir() or wants.is_symlink() or not wants.name.endswith((".wants", ".requires")):
            continue
        target = wants.name.rpartition(".")[0]
        for entry in sorted(wants.iterdir()):
            unit = entry.name
            template = re.sub(r"@[^.]*\.", "@.", unit)
            if not (os.path.lexists(unit_dir / unit) or os.path.lexists(unit_dir / template)):
                raise BakeryError(f"{name}: /{UNIT_DIR}/{wants.name}/{unit} enables a unit the "
                                  "image does not ship",
                                  "add the unit to the torcx image or remove the link")
            upholds.setdefault(target, []).append(unit)
        shutil.rmtree(wants)
    return tuple((t, tuple(sorted(set(u)))) for t, u in sorted(upholds.items()))


def leftover_references(root: Path) -> list[str]:
    """Files outside the unit directory that still mention torcx (scripts reading
    TORCX_BINDIR, configs pointing into /run/torcx): reported, since they are not rewritten.
    (Units are rewritten, and refused if torcx is left in them.)"""
    found = []
    for rel, entry in iter_tree(root):
        if not entry.is_file(follow_symlinks=False) or rel.startswith(UNIT_DIR + "/"):
            continue
        if entry.stat(follow_symlinks=False).st_size > (1 << 20):
            continue
        with open(entry.path, "rb") as f:
            data = f.read()
        if not data.startswith(b"\x7fELF") and _LEFTOVER.search(data.decode("utf-8", "replace")):
            found.append(f"/{rel} still mentions torcx; check it works from /usr")
    return found

