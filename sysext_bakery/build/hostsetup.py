"""The setup unit: the users, groups and files an image declares, made on any host.

systemd applies `usr/lib/sysusers.d` and `usr/lib/tmpfiles.d` at boot through
systemd-sysusers.service and systemd-tmpfiles-setup.service. The first has
`ConditionNeedsUpdate=/etc`: on a host whose /etc is already set up (every boot but the
first, and every host that merges the image later) it does not run, so a `SocketGroup=docker`
fails for want of the group. An image that ships such files therefore also ships
`<name>-sysext-setup.service`, which applies exactly those files, and every unit of the image
wants it and is ordered after it; an image without units has it upheld by multi-user.target,
the way `[units] upholds` starts units without /etc symlinks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

UNIT_DIR = "usr/lib/systemd/system"
SYSUSERS_DIR = "usr/lib/sysusers.d"
TMPFILES_DIR = "usr/lib/tmpfiles.d"
SYSUSERS = "/usr/bin/systemd-sysusers"
TMPFILES = "/usr/bin/systemd-tmpfiles"
# what a setup unit orders itself before: the image's units that run or listen
ORDERED_SUFFIXES = (".service", ".socket", ".timer", ".path", ".mount")


class TreeLike(Protocol):
    """What of build.tree.Tree is used here (a torcx tree would do too)."""
    root: Path

    def add_text(self, rel: str, text: str, who: str) -> None: ...


@dataclass(frozen=True)
class Setup:
    """The setup unit of one image and what it applies."""
    unit: str                        # <name>-sysext-setup.service
    sysusers: tuple[str, ...]        # absolute paths on the host, /usr/lib/sysusers.d/x.conf
    tmpfiles: tuple[str, ...]
    units: tuple[str, ...]           # the image's units that want it and start after it


def setup_unit_name(name: str) -> str:
    return f"{name}-sysext-setup.service"


def _conf_files(root: Path, directory: str) -> tuple[str, ...]:
    path = root / directory
    if not path.is_dir() or path.is_symlink():
        return ()
    return tuple(f"/{directory}/{e.name}" for e in sorted(os.scandir(path), key=lambda e: e.name)
                 if e.name.endswith(".conf") and not e.is_dir(follow_symlinks=False))


def plan_setup(root: Path, name: str) -> Setup | None:
    """The setup unit the tree at `root` (image `name`) needs; None when it ships no
    sysusers.d or tmpfiles.d files."""
    sysusers, tmpfiles = _conf_files(root, SYSUSERS_DIR), _conf_files(root, TMPFILES_DIR)
    if not sysusers and not tmpfiles:
        return None
    unit = setup_unit_name(name)
    unit_dir = root / UNIT_DIR
    units = tuple(e.name for e in sorted(os.scandir(unit_dir), key=lambda e: e.name)
                  if e.name.endswith(ORDERED_SUFFIXES) and e.name != unit
                  and not e.is_dir(follow_symlinks=False)) \
        if unit_dir.is_dir() and not unit_dir.is_symlink() else ()
    return Setup(unit, sysusers, tmpfiles, units)


def exec_lines(setup: Setup) -> list[str]:
    """The ExecStart= command lines: one per file, so a failure names its file."""
    return ([f"{SYSUSERS} {path}" for path in setup.sysusers]
            + [f"{TMPFILES} --create {path}" for path in setup.tmpfiles])


def unit_text(setup: Setup, name: str) -> str:
    # DefaultDependencies=no: a service's default After=basic.target comes after
    # sockets.target, which the image's sockets are ordered before: that would be a cycle.
    before = " ".join(setup.units)
    return "".join([
        "[Unit]\n",
        f"Description=Users, groups and files of the {name} system extension\n",
        "DefaultDependencies=no\n",
        "After=local-fs.target systemd-sysusers.service systemd-tmpfiles-setup.service\n",
        f"Before={before + ' ' if before else ''}shutdown.target\n",
        "Conflicts=shutdown.target\n",
        "\n[Service]\n",
        "Type=oneshot\n",
        "RemainAfterExit=yes\n",
        *(f"ExecStart={line}\n" for line in exec_lines(setup)),
    ])


def dropin_text(setup: Setup) -> str:
    return f"[Unit]\nWants={setup.unit}\nAfter={setup.unit}\n"


def write_setup_unit(tree: TreeLike, name: str) -> Setup | None:
    """Add the setup unit of image `name` and its drop-ins to `tree`, if it needs one."""
    setup = plan_setup(tree.root, name)
    if setup is None:
        return None
    who = f"the setup unit of {name} (it ships sysusers.d/tmpfiles.d files)"
    tree.add_text(f"{UNIT_DIR}/{setup.unit}", unit_text(setup, name), who)
    stem = setup.unit.removesuffix(".service")
    for unit in setup.units:
        tree.add_text(f"{UNIT_DIR}/{unit}.d/10-{stem}.conf", dropin_text(setup), who)
    if not setup.units:
        tree.add_text(f"{UNIT_DIR}/multi-user.target.d/10-{stem}.conf",
                      f"[Unit]\nUpholds={setup.unit}\n", who)
    return setup
