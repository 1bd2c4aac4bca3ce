"""Architectures in systemd's spelling, with the facts the pipeline needs about each."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    name: str          # systemd's spelling, used in image names and ARCHITECTURE=
    elf_machine: int   # ELF e_machine of binaries built for it
    elf_class: int     # 1 = 32-bit, 2 = 64-bit
    uname: str         # `uname -m` spelling, a common upstream spelling


ARCHES: dict[str, Arch] = {
    "x86-64": Arch("x86-64", elf_machine=62, elf_class=2, uname="x86_64"),
    "arm64": Arch("arm64", elf_machine=183, elf_class=2, uname="aarch64"),
}
