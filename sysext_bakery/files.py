"""Writing files so that no reader ever sees half of one."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes | str) -> bool:
    """Replace `path` by `data` (mode 0644) through a temp file in the same directory;
    False, and nothing written, when `path` already holds exactly `data`."""
    if isinstance(data, str):
        data = data.encode()
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = stage_file(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return True


def stage_file(path: Path, data: bytes) -> str:
    """`data` in a synced temp file (mode 0644) next to `path`, ready to be renamed over it;
    for callers that must rename several files back to back."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)   # mkstemp's 0600 would hide published files from a web server
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def file_digest(path: Path, algorithm: str = "sha256", *, fsync: bool = False) -> str:
    """Hex digest of a file, streamed; with `fsync`, also flushed to disk in the same open."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, algorithm).hexdigest()
        if fsync:
            os.fsync(f.fileno())
    return digest
