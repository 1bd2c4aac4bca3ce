"""Counting the bytes one source writes into the tree, as they are written, so that a
decompression bomb fails after at most one copy buffer past its limit instead of after it
has filled the disk. Declared member sizes are checked first (a cheap early refusal), but
only the counted bytes are trusted: tar headers and zip directories can lie."""
from __future__ import annotations

import io
from typing import BinaryIO

from sysext_bakery.errors import BakeryError
from sysext_bakery.model.limits import RATIO_FLOOR, ArchiveLimits, show

HINT = ("if the tool really is this large, raise the limit in the recipe's [limits] table "
        "(e.g. unpacked = \"8G\", ratio = 400); otherwise the download is hostile or broken: "
        "check the source URL")


class Budget:
    """The bytes written so far from one download of `compressed` bytes. `where` names the
    source and its file in messages."""

    def __init__(self, limits: ArchiveLimits, compressed: int, where: str):
        self.limits, self.where, self.total = limits, where, 0
        self._ratio_cap = max(RATIO_FLOOR, limits.ratio * compressed)
        self._compressed = compressed

    def admit(self, member: str, declared: int) -> None:
        """Refuses a member whose declared size alone is over a limit."""
        self._check(member, declared, self.total + declared)

    def reader(self, content: BinaryIO, member: str) -> BinaryIO:
        """`content`, counted against the budget as it is read for writing."""
        return _Counted(self, content, member)

    def _add(self, member: str, written: int, n: int) -> None:
        self.total += n
        self._check(member, written, self.total)

    def _check(self, member: str, written: int, total: int) -> None:
        lim = self.limits
        if written > lim.member:
            self._fail(f"member '{member}' is larger than {show(lim.member)}", "member")
        if total > lim.unpacked:
            self._fail(f"unpacking stopped at member '{member}': more than "
                       f"{show(lim.unpacked)} written", "unpacked")
        if total > self._ratio_cap:
            self._fail(f"unpacking stopped at member '{member}': more than {lim.ratio} times "
                       f"the download's {self._compressed} bytes written", "ratio")

    def _fail(self, what: str, key: str) -> None:
        raise BakeryError(f"{self.where}: {what} (the limit [limits] {key})", HINT)


class _Counted(io.RawIOBase):
    def __init__(self, budget: Budget, raw: BinaryIO, member: str):
        super().__init__()
        self._budget, self._raw, self._member, self._written = budget, raw, member, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._written += len(data)
        self._budget._add(self._member, self._written, len(data))
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)
