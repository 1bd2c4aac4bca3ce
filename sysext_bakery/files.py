"""Writing files so that no reader ever sees half of one."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from sysext_bakery.errors import BakeryError

# write failures that say "this file system", not "this program": a full disk, a quota, a
# read-only mount. They become a BakeryError naming the path (disk_errors), never a traceback.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def disk_error(e: OSError, path: Path | str, what: str) -> BakeryError:
    """The BakeryError for a DISK_FULL `e` met while `what` (e.g. "packing X") under `path`."""
    where = e.filename or path
    if e.errno == errno.EROFS:
        hint = f"{path} is on a read-only file system: point the build there elsewhere"
    else:
        hint = (f"free space on the file system holding {path} (df -h {path}), then run "
                "again; nothing partial was kept")
    return BakeryError(f"{where}: {what}: {e.strerror or os.strerror(e.errno or 0)}", hint)


@contextlib.contextmanager
def disk_errors(path: Path | str, what: str) -> Iterator[None]:
    """Turn a full disk (DISK_FULL) met inside the block into `disk_error`; other errors pass."""
    try:
        yield
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        raise disk_error(e, path, what) from None


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
    with disk_errors(path, "writing"):
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


Signature = tuple[int, int, int, int]   # inode, size, mtime_ns, ctime_ns


def file_signature(st: os.stat_result) -> Signature:
    """What changes when a file is rewritten, replaced or touched (ctime cannot be set):
    how fetch and stage tell that a download nobody touched since it was hashed."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
