"""The one exception type of the project; the CLI edges catch it and print message + hint."""
from __future__ import annotations


class BakeryError(Exception):
    """A user-facing failure: `message` says what is wrong (naming the file, key or URL),
    `hint` says what to do about it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message
