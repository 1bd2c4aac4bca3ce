"""Tiny ELF files of a chosen machine type, so arch validation sees real ELF headers."""
from __future__ import annotations

import struct

EM_X86_64 = 62
EM_AARCH64 = 183
MACHINE = {"x86-64": EM_X86_64, "arm64": EM_AARCH64}


def make_elf(arch: str, payload: bytes = b"") -> bytes:
    """A 64-bit little-endian ELF executable header (ET_EXEC) for `arch`, then `payload`."""
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH",
        2,                 # e_type ET_EXEC
        MACHINE[arch],     # e_machine
        1,                 # e_version
        0x400000,          # e_entry
        0, 0,              # e_phoff, e_shoff
        0,                 # e_flags
        64, 0, 0, 0, 0, 0  # e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
    )
    return header + payload
