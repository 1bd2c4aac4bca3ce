"""Writing files so that no reader ever sees half of one, nor a stop leaves their temp names."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import tempfile
import threading
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
        forget(tmp)
    except BaseException:
        discard(tmp)
        raise
    return True


def stage_file(path: Path, data: bytes) -> str:
    """`data` in a synced temp file (mode 0644) next to `path`, ready to be renamed over it;
    for callers that must rename several files back to back. The name is kept for the stop
    (`make_temp_file`): the caller forgets it once renamed, or discards it."""
    with disk_errors(path, "writing"):
        fd, tmp = make_temp_file(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)   # mkstemp's 0600 would hide published files from a web server
        except BaseException:
            discard(tmp)
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


# --- temporary names a stop must not leave behind ---------------------------------------------
# Under `doit -P thread` a stop (Ctrl-C, SIGTERM) unwinds the main thread only: the interpreter
# then exits with the worker threads mid-task, none of their `finally` runs, so the names they
# made would stay. They are kept here instead, from their making until renamed into place or
# removed, and the exiting main thread removes what is left (`remove_temporaries`). One lock
# orders every making, forgetting, renaming into place (`rename_kept`) and claim to remove: a
# name is removed by its maker or by the stop, never both (a maker's late unlink could hit
# another process's new file of that name), and nothing new is made once the stop has begun.
# A maker's own removal runs outside the lock (a big tree must not stall other threads): a
# stop meanwhile may leave part of it, for the next run's clean-up (under build/) or /tmp's. Directories (stage's work trees) are kept the same
# way (`make_temp_dir`) and removed with all they hold.
_temporaries: dict[str, None] = {}      # an ordered set of paths
_temporaries_lock = threading.Lock()
_stopping = False
STOP_WAIT = 5.0                         # seconds the stop waits for a maker inside its syscall
_RMTREE_PASSES = 5                      # rmtree passes over a tree a dropped worker still fills


def make_temp_file(**mkstemp: str | Path) -> tuple[int, str]:
    """`tempfile.mkstemp(**mkstemp)`, kept for the stop until `forget` or `discard`."""
    with _temporaries_lock:
        _refuse_when_stopping()
        fd, name = tempfile.mkstemp(**mkstemp)  # type: ignore[arg-type]
        _temporaries[name] = None
    return fd, name


def make_temp_dir(**mkdtemp: str | Path) -> str:
    """`tempfile.mkdtemp(**mkdtemp)`, kept for the stop until `forget` or `discard`; the stop
    and `discard` remove it with all it holds."""
    with _temporaries_lock:
        _refuse_when_stopping()
        name = tempfile.mkdtemp(**mkdtemp)  # type: ignore[call-overload]
        _temporaries[name] = None
    return name


@contextlib.contextmanager
def temp_dir(**mkdtemp: str | Path) -> Iterator[str]:
    """`tempfile.TemporaryDirectory(**mkdtemp)` whose name a stop removes too (`make_temp_dir`)."""
    name = make_temp_dir(**mkdtemp)
    try:
        yield name
    finally:
        discard(name)


def keep_for_stop(path: Path | str) -> None:
    """Have the stop remove `path`, a name this thread made and holds (a download's lock)."""
    with _temporaries_lock:
        _refuse_when_stopping()
        _temporaries[str(path)] = None


def rename_kept(path: Path | str, dest: Path | str) -> None:
    """Rename the kept temporary `path` to `dest` and forget it, as one step for the stop:
    were the stop's removal to reach a tree between the two, it would empty `dest`."""
    with _temporaries_lock:
        os.rename(path, dest)
        _temporaries.pop(str(path), None)


def forget(path: Path | str) -> None:
    """Call once the temporary `path` is no longer this thread's to remove (renamed into
    place, or taken by another process's clean-up): the stop leaves that name alone."""
    with _temporaries_lock:
        _temporaries.pop(str(path), None)


def discard(path: Path | str) -> None:
    """Remove the temporary file or directory tree `path` and forget it; nothing when the
    stop removed it already, or when it is not kept (renamed into place and forgotten)."""
    with _temporaries_lock:
        mine = str(path) in _temporaries
        _temporaries.pop(str(path), None)
    if mine:
        # outside the lock: a stage tree's rmtree must not stall other threads' temp names
        # (a stop meanwhile leaves what is not removed yet to the next run's clean-up)
        _remove(str(path))


def remove_temporaries() -> list[str]:
    """Remove every temporary name still kept, and refuse new ones: for the main thread as
    the process exits (atexit), when only threads it no longer waits for can hold any."""
    global _stopping
    # a maker holds the lock across one mkstemp or mkdtemp: bounded all the same, as every wait
    got = _temporaries_lock.acquire(timeout=STOP_WAIT)
    try:
        _stopping = True
        left = list(_temporaries)
        _temporaries.clear()
    finally:
        if got:
            _temporaries_lock.release()
    for name in left:
        _remove(name)
    return left


def _refuse_when_stopping() -> None:
    if _stopping:
        raise SystemExit(1)    # a worker thread the exiting interpreter is about to drop


def _remove(name: str) -> None:
    try:
        info = os.lstat(name)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        return
    # at the stop, a dropped worker may still be writing into the tree (stage's work
    # directory): what it adds behind rmtree's back is taken on the next pass, and once the
    # top is gone its writes fail
    for _ in range(_RMTREE_PASSES):
        shutil.rmtree(name, ignore_errors=True)
        if not os.path.lexists(name):
            return


def _forget_in_child() -> None:
    # a forked child (doit -n) owns none of its parent's names, and must not inherit the lock
    # held by a parent thread at the fork
    global _temporaries_lock, _stopping
    _temporaries.clear()
    _temporaries_lock = threading.Lock()
    _stopping = False


os.register_at_fork(after_in_child=_forget_in_child)
