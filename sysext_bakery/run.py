"""The one program runner: every external tool the bakery starts goes through here.

An argv list (never a shell), a bounded wait, stderr captured, and any failure turned into a
BakeryError that names the program, what it was doing and which package installs it. No child
inherits a secret (settings.SECRETS) unless its caller passes that one by name (`secrets=`).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Mapping

from sysext_bakery.errors import BakeryError
from sysext_bakery.settings import SECRETS

DEFAULT_TIMEOUT = 600.0     # seconds; packing a large image passes more
PROGRESS_EVERY = 10.0       # seconds between "still packing" lines (run(progress=True))
LAST_WORDS = 2000           # characters of a failing tool's output kept in the message

# program -> Debian package, for the "what to install" hint
PACKAGES = {
    "mksquashfs": "squashfs-tools", "unsquashfs": "squashfs-tools",
    "mkfs.erofs": "erofs-utils", "fsck.erofs": "erofs-utils", "dump.erofs": "erofs-utils",
    "gpg": "gnupg", "gpgconf": "gnupg", "git": "git",
    "gzip": "gzip", "pigz": "pigz", "xz": "xz-utils", "zstd": "zstd", "bzip2": "bzip2",
    "unzip": "unzip",
}


@dataclass(frozen=True)
class Done:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


def install_hint(program: str) -> str:
    package = PACKAGES.get(Path(program).name)
    if package:
        return f"scripts/setup installs it (apt-get install {package})"
    return f"install {Path(program).name}"


def which(program: str) -> str | None:
    return shutil.which(program)


def require(program: str) -> str:
    """The path of `program`, or a BakeryError saying how to install it."""
    found = shutil.which(program)
    if not found:
        raise BakeryError(f"{program}: command not found", install_hint(program))
    return found


def run(argv: list[str], *, what: str, hint: str | None = None, input: bytes | None = None,
        env: Mapping[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT,
        check: bool = True, stdout: IO[bytes] | None = None, progress: bool = False,
        secrets: tuple[str, ...] = ()) -> Done:
    """Run `argv` to completion. `what` says what it was for ("packing build/images/x.raw");
    with `check`, a non-zero exit is a BakeryError carrying the tool's last words.
    `stdout` sends the output to a file instead of memory (large outputs). With `progress`
    (long jobs such as packing), `what` is announced on stderr when it starts, then every
    PROGRESS_EVERY seconds with the time so far (and when a long job ends); the output is
    still captured for the error message. `env` (default: the process environment) reaches
    the child without the secrets, but for those named in `secrets`."""
    program = Path(argv[0]).name
    child = child_env(env, secrets)
    try:
        proc = _run(argv, input, child, timeout, stdout, what if progress else None)
    except FileNotFoundError:
        raise BakeryError(f"{what}: {program}: command not found", install_hint(program)) from None
    except subprocess.TimeoutExpired:
        raise BakeryError(f"{what}: {program} did not finish within {timeout:.0f} s",
                          hint or "the input may be too large; retry, or report it") from None
    except OSError as e:
        raise BakeryError(f"{what}: cannot start {program}: {e.strerror}",
                          install_hint(program)) from None
    done = Done(proc.returncode, proc.stdout or b"", proc.stderr or b"")
    if check and done.returncode != 0:
        raise BakeryError(f"{what}: {program} failed (exit {done.returncode}): {last_words(done)}",
                          hint or install_hint(program))
    return done


def _run(argv: list[str], input: bytes | None, env: dict[str, str], timeout: float,
         stdout: IO[bytes] | None, announce: str | None) -> subprocess.CompletedProcess:
    """subprocess.run, announcing `announce` (if given) while it waits."""
    with _started(lambda: subprocess.Popen(
            argv, stdin=subprocess.PIPE if input is not None else None,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE, env=env)) as proc:
        start = time.monotonic()
        if announce:
            _say(f"{announce} …")
        out = err = b""
        try:
            while True:
                left = timeout - (time.monotonic() - start)
                try:
                    out, err = proc.communicate(input, timeout=max(0.0, min(
                        left, PROGRESS_EVERY if announce else left)))
                    break
                except subprocess.TimeoutExpired:
                    input = None   # already handed over: communicate() keeps feeding it
                    if time.monotonic() - start >= timeout:
                        raise subprocess.TimeoutExpired(argv, timeout) from None
                    if announce:
                        _say(f"{announce}: {time.monotonic() - start:.0f} s")
        except BaseException:   # a timeout, Ctrl-C, SIGTERM: the child goes too
            proc.kill()
            proc.wait()
            raise
        if announce and time.monotonic() - start >= PROGRESS_EVERY:
            _say(f"{announce}: done in {time.monotonic() - start:.0f} s")
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def spawn(argv: list[str], *, what: str, stdin: IO[bytes] | int | None = None,
          stdout: IO[bytes] | int | None = subprocess.PIPE,
          stderr: IO[bytes] | int | None = subprocess.PIPE,
          text: bool = False, env: Mapping[str, str] | None = None,
          secrets: tuple[str, ...] = ()) -> subprocess.Popen:
    """Start `argv` for streaming (a decompressor feeding the tar reader, unsquashfs -pf).
    The caller reaps it; `kill` below is the safe way to stop it early. `env` and `secrets`
    as for `run`."""
    program = Path(argv[0]).name
    child = child_env(env, secrets)
    try:
        return _started(lambda: subprocess.Popen(
            argv, stdin=stdin, stdout=stdout, stderr=stderr, text=text,
            errors="surrogateescape" if text else None, env=child))
    except FileNotFoundError:
        raise BakeryError(f"{what}: {program}: command not found", install_hint(program)) from None
    except OSError as e:
        raise BakeryError(f"{what}: cannot start {program}: {e.strerror}",
                          install_hint(program)) from None


# --- children a stop must not leave running ---------------------------------------------------
# Under `doit -P thread` a stop unwinds the main thread only, and the interpreter exits with the
# worker threads mid-task: a worker waiting on mksquashfs or a decompressor never kills it, and
# it would run on (and write on) after doit ended. Every child started here is kept (weakly:
# a reaped and forgotten one goes by itself) for the exiting main thread to kill
# (`kill_children`, at exit); no child starts once that began.
_children: "weakref.WeakSet[subprocess.Popen]" = weakref.WeakSet()
_children_lock = threading.Lock()
_children_stopping = False
KILL_WAIT = 5.0     # seconds the stop waits, in all, for its killed children to go


def _started(start):
    """`start()` (a Popen), kept for `kill_children`; refused once the stop began."""
    with _children_lock:
        if _children_stopping:
            raise SystemExit(1)    # a worker thread the exiting interpreter is about to drop
        proc = start()
        _children.add(proc)
    return proc


def kill_children(wait: bool = True) -> list[int]:
    """Kill every child still running that `run` or `spawn` started, and refuse new ones: for
    the main thread as the process exits (atexit); the pids killed. Without `wait` (doit
    ending at once on a second signal) neither the lock nor the children are waited for."""
    global _children_stopping
    got = _children_lock.acquire(timeout=KILL_WAIT if wait else 0)
    try:
        _children_stopping = True
        live = [proc for proc in list(_children) if proc.returncode is None]
    finally:
        if got:
            _children_lock.release()
    killed = []
    for proc in live:
        try:
            proc.kill()            # a no-op for one reaped meanwhile
        except OSError:
            continue
        killed.append(proc.pid)
    deadline = time.monotonic() + (KILL_WAIT if wait else 0)
    for proc in live if wait else ():
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except (subprocess.TimeoutExpired, OSError):
            pass                   # unkillable (D state), or a worker reaped it: leave it
    return killed


def _forget_children_in_child() -> None:
    # a forked child (doit -n) owns none of its parent's children
    global _children, _children_lock, _children_stopping
    _children = weakref.WeakSet()
    _children_lock = threading.Lock()
    _children_stopping = False


os.register_at_fork(after_in_child=_forget_children_in_child)


def kill(proc: subprocess.Popen, timeout: float = 30.0) -> int | None:
    """Stop a spawned child (a no-op once it exited) and reap it; its exit status."""
    proc.kill()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:   # unkillable (D state): leave it to init
        return None


def last_words(done: Done) -> str:
    output = done.stderr.decode(errors="replace").strip() or done.text.strip()
    return output[-LAST_WORDS:]


def environ(**overrides: str) -> dict[str, str]:
    """The process environment with `overrides`, for tools that need one more variable (the
    secrets in it are still stripped when the child starts)."""
    return {**environment(), **overrides}


def child_env(env: Mapping[str, str] | None = None, secrets: tuple[str, ...] = ()) -> dict[str, str]:
    """`env` (default: the process environment) without the secrets (settings.SECRETS), but
    those named in `secrets`: the explicit opt-in for a child that truly needs one."""
    unknown = [name for name in secrets if name not in SECRETS]
    if unknown:   # a typo here would silently pass nothing, or read as if anything may pass
        raise ValueError(f"not a secret the bakery knows: {', '.join(unknown)} "
                         f"(settings.SECRETS: {', '.join(SECRETS)})")
    base = environment() if env is None else env
    return {key: value for key, value in base.items() if key not in SECRETS or key in secrets}


# secrets_withheld's state, shared by every thread (doit -P thread): os.environ is one per
# process, so the first section in takes the secrets out and only the last one out puts them
# back; until then they wait here, where environment() still finds them.
_withheld_lock = threading.Lock()
_withheld_depth = 0
_withheld: dict[str, str] = {}


def environment() -> dict[str, str]:
    """The process environment as the bakery was given it: os.environ, with the secrets a
    `secrets_withheld` section (in any thread) has taken out of it for now. What reads a
    secret (a token, the signing key) reads it here, never from os.environ directly."""
    with _withheld_lock:
        return {**_withheld, **os.environ}


@contextmanager
def secrets_withheld() -> Iterator[None]:
    """For a library that starts programs itself, bypassing `run` (GitPython runs git, already
    when first imported, with the whole process environment): the secrets leave os.environ
    while it works and come back after. Nested and concurrent sections are safe: the secrets
    stay out until the last one ends."""
    global _withheld_depth
    with _withheld_lock:
        # also on a nested entry: a secret set since the first one entered must not reach git
        _withheld.update({name: os.environ.pop(name) for name in SECRETS if name in os.environ})
        _withheld_depth += 1
    try:
        yield
    finally:
        with _withheld_lock:
            _withheld_depth -= 1
            if _withheld_depth == 0:
                for name, value in _withheld.items():
                    os.environ.setdefault(name, value)   # one set meanwhile is newer: keep it
                _withheld.clear()
