"""One doit run per tree at a time, and the clean-up of what a killed run left behind.

Every write in the bakery goes to a temporary name and is renamed into place, so a run killed
with SIGKILL leaves no partial target, cache entry or published file; it can leave those
temporary names. A doit run that changes the tree holds `build/.lock` (an flock) for its
whole life, so whatever temporary name it finds under build/ when it starts belongs to a run
that is gone, and is removed.

The download cache may be shared by several trees (BAKERY_CACHE), so the tree lock says
nothing about it: each download holds an flock on its own temporary file, and only a file
nobody holds is removed (`clean_cache`).

A download shared by several images (a companion such as runc or the CNI plugins, an
arch-independent file) must be fetched once even when `doit -n N`, `-P thread` or two runs
sharing BAKERY_CACHE want it at the same time: each download of a URL holds an flock on
`cache/.locks/<sha256 of the URL>` (`download_lock`), and whoever gets it second finds the
file in the cache. The kernel drops an flock when its holder dies, so a killed download
never blocks the next one; a live holder that hangs is waited for only so long.
"""
from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import stat
import sys
import time
from pathlib import Path
from typing import Iterator

from sysext_bakery import run
from sysext_bakery.errors import BakeryError
from sysext_bakery.files import DISK_FULL, discard, keep_for_stop, remove_temporaries

TREE_LOCK = ".lock"                       # build/.lock
# doit commands that only read: they neither wait for nor block a build
READ_ONLY = frozenset({"list", "info", "help", "dumpdb", "tabcompletion"})

DOWNLOAD_LOCKS = ".locks"                 # cache/.locks/<sha256 of the URL>
_POLL_FIRST, _POLL_MAX = 0.02, 0.5        # seconds between tries for a held download lock

_held: dict[Path, int] = {}               # lock path -> fd, kept open until the process ends
_run: str | None = None                   # this run's id once it holds its tree's lock


def needs_tree_lock(argv: list[str]) -> bool:
    """Whether the doit command line `argv` (without the program) may write the tree."""
    return not (argv and argv[0] in READ_ONLY)


def lock_tree(build: Path) -> None:
    """Take build/.lock for the rest of this process, or refuse clearly when another doit
    run on this tree holds it. Children (doit -n N) share the lock with their parent."""
    path = build / TREE_LOCK
    if path in _held:
        return
    build.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise BakeryError(f"{path} is locked: another doit run (pid {owner}) is using this tree",
                          "runs on one tree take turns: wait for it to finish, then run again "
                          "(doit -n N builds in parallel within one run)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[path] = fd
    global _run
    _run = f"{os.getpid()}.{time.time_ns()}"


def run_id() -> str | None:
    """An id of the doit run holding its tree's lock, shared with its doit -n N children
    (forked after the lock was taken), unique per run; None in any other process."""
    return _run


STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """Around code that starts threads which only wait (multiprocessing's queue feeders, the
    discovery pool): they are born with the stop signals blocked, so those signals go to the
    main thread. The kernel gives a signal sent to a process to any thread not blocking it,
    Python runs the handler in the main thread only, and a main thread waiting in a socket
    read is not woken by a signal another thread took: the run went on until the read timed
    out. Not for threads that start programs: a blocked mask is inherited across exec. A stop
    signal arriving meanwhile is handled when the block ends."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def exit_on_signals() -> None:
    """SIGTERM (CI cancelling a job, systemd stopping a unit) and Ctrl-C unwind as SystemExit
    with the shell's status (128 + signal): every `except BaseException` / `finally` removes
    its temporary file, as it would for KeyboardInterrupt, but doit ends quietly instead of
    printing KeyboardInterrupt's traceback. Children of doit -n N inherit the handler.

    A second stop signal, once the first is being handled: a `-n` child ignores it, since
    Ctrl-C reaches it from the terminal and doit, unwinding, terminates it too, which would
    cut its clean-up short; doit itself ends at once (a user's second Ctrl-C while it waits
    for its children), killing the programs it started but leaving any temporary names to
    the next run.

    Under -P thread the workers' `finally` never runs (the interpreter exits without them):
    their temporary names (`files.make_temp_file`, `make_temp_dir`) are removed as the process
    exits, after the programs they started (`run.kill_children`) are killed: a packer still
    running could otherwise write on."""
    doit = os.getpid()
    atexit.register(remove_temporaries)
    atexit.register(run.kill_children)     # first (atexit runs last in first): the writers go
    ending = False       # this process has begun to stop

    def again(signum: int) -> bool:
        """Whether this process had begun to stop already: then doit ends now."""
        nonlocal ending
        if not ending:
            ending = True
            return False
        if os.getpid() == doit:
            run.kill_children(wait=False)   # os._exit skips atexit: no packer may write on
            os._exit(128 + signum)
        return True

    def stop(signum: int, frame: object) -> None:
        if not again(signum):
            raise SystemExit(128 + signum)

    def interrupt(signum: int, frame: object) -> None:
        if again(signum):
            return
        if os.getpid() != doit:
            # doit's own path for Ctrl-C in a -n child ends it and tells doit
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, interrupt)


def stale_in_tree(build: Path) -> list[Path]:
    """Temporary names under build/ that only a run in progress writes: `.NAME.XXXX.tmp`
    files (pack's image, write_atomic's records and SHA256SUMS) and stage's `.IMG.XXXX`
    work directories (also in the unpacked cache). Only valid while holding build/.lock."""
    found: list[Path] = []
    for directory in (build / "images", build / "state" / "fetch", build / "state" / "stage",
                      build / "state" / "images"):
        found += _dot_entries(directory, lambda e: e.name.endswith(".tmp"))
    # the lock's trust-on-first-use rewrite (release/.lock.toml.XXXX.tmp)
    found += _dot_entries(build.parent / "release",
                          lambda e: e.name.startswith(".lock.toml.") and e.name.endswith(".tmp"))
    for directory in (build / "stage", build / "stage" / ".unpacked"):
        found += _dot_entries(directory, lambda e: e.name != ".unpacked")
    return found


def clean_tree(build: Path) -> list[Path]:
    """Remove `stale_in_tree` (call with build/.lock held); the paths removed."""
    stale = stale_in_tree(build)
    for path in stale:
        _remove(path)
    _announce(stale)
    return stale


def clean_cache(cache: Path) -> list[Path]:
    """Remove the temporary downloads in cache/.tmp that no live download holds."""
    removed = []
    for path in _dot_entries(cache / ".tmp", lambda e: True, dot=False):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue          # renamed into the cache meanwhile, or not a plain file
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)      # a download in progress
            continue
        try:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
        finally:
            os.close(fd)
    _announce(removed)
    return removed


@contextlib.contextmanager
def download_lock(cache: Path, url: str, wait: float) -> Iterator[None]:
    """Hold the download lock of `url` in `cache` (across processes and threads: each call
    opens its own file description). Waits at most `wait` seconds for another holder, then
    raises BakeryError naming the URL and the holder's pid. The lock file is removed on
    release; a waiter that locked a file removed meanwhile opens the new one."""
    directory = cache_dir(cache, DOWNLOAD_LOCKS)
    path = directory / hashlib.sha256(url.encode()).hexdigest()
    deadline, delay, told = time.monotonic() + wait, _POLL_FIRST, False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno in DISK_FULL:   # for the caller's files.disk_errors
                raise
            # a symlink (ELOOP) or a directory planted where the lock goes, or no permission
            raise BakeryError(f"{url}: cannot open its download lock {path}: {e.strerror}",
                              f"only bakery lock files belong in {directory}: remove {path} "
                              "(with no build running; the cache is safe to delete) and "
                              "build again") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if time.monotonic() >= deadline:
                raise BakeryError(
                    f"{url}: another download of it (pid {owner}, lock {path}) did not finish "
                    f"within {wait:.0f} s", "if that process hangs, stop it (its lock goes with "
                    "it) and build again; for a slow link raise BAKERY_DEADLINE") from None
            if not told:
                print(f"waiting for another download of {url} (pid {owner})", file=sys.stderr)
                told = True
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, _POLL_MAX)
            continue
        if os.fstat(fd).st_nlink == 0:
            os.close(fd)      # its holder removed it as we waited: lock the current one
            continue
        break
    try:
        keep_for_stop(path)   # a -P thread run stopped meanwhile removes it as it exits
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        discard(path)         # while still held, so nobody locks a file about to vanish
        os.close(fd)


def cache_dir(cache: Path, name: str) -> Path:
    """`cache/name` (.tmp, .locks) made if missing; refused unless it is a real directory: a
    symlink would move the temporary downloads or the locks somewhere else (another file
    system, where the rename into the cache fails), a file would fail every download."""
    path = cache / name
    with contextlib.suppress(FileExistsError):
        path.mkdir(parents=True)
    try:
        info = os.lstat(path)
    except OSError as e:
        info, why = None, e.strerror
    else:
        why = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a directory"
    if info is None or not stat.S_ISDIR(info.st_mode):
        raise BakeryError(f"{path}: the download cache's own directory is {why}",
                          f"remove {path} (with no build running; the cache is safe to "
                          "delete) and build again")
    return path


def claim(fd: int) -> bool:
    """Lock a freshly made temporary download `fd`; False when `clean_cache` removed it
    between its creation and the lock (the caller makes another)."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    return os.fstat(fd).st_nlink > 0


def _dot_entries(directory: Path, keep, dot: bool = True) -> list[Path]:
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [Path(e.path) for e in entries if (e.name.startswith(".") or not dot) and keep(e)]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _announce(removed: list[Path]) -> None:
    if removed:
        shown = ", ".join(str(p) for p in removed[:5]) + (" …" if len(removed) > 5 else "")
        print(f"bakery: removed {len(removed)} temporary file(s) a stopped run left behind: "
              f"{shown}", file=sys.stderr)
