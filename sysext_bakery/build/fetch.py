"""Downloads into a content-addressed cache: `cache/<sha256>`, verified while streaming.

Sources are https upstream URLs, optionally rewritten to a mirror (`BAKERY_MIRROR`, mapped by
`http.mirror_url`): an http(s) URL prefix or a local directory holding `HOST/PATH`. The
network rules (retries, timeouts, redirects, deadline, low-speed limit) are `http.Http`'s;
a body that breaks mid-way is resumed here with a Range request.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from rich.filesize import decimal

from sysext_bakery.build import checksums
from sysext_bakery.build.checksums import MAX_TEXT, parse_checksum
from sysext_bakery.build import tidy
from sysext_bakery.errors import BakeryError
from sysext_bakery.files import (DISK_FULL, Signature, discard, disk_errors, file_signature,
                                 make_temp_file, forget)
from sysext_bakery.http import CHUNK, BodyBroken, Deadline, Http, Limits, Stream
from sysext_bakery.model.image import CHECKSUMS, SHA256_HEX
from sysext_bakery.model.url import is_url, mirror_url, url_filename

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["Fetched", "fetch", "fetch_text", "mirror_url", "parse_checksum"]

MAX_RESUMES = 5                    # body breaks tolerated per download
# A download under its lock ends within its deadline (every attempt included); the slack
# covers hashing and renaming it. A waiter gives up after that.
LOCK_SLACK = 60.0

LOCK = "release/lock.toml"
LOCK_HINT = "check the version and URL pinned in release/lock.toml"
MIRROR_HINT = "check the version and URL pinned in release/lock.toml, or the mirror contents"


@dataclass(frozen=True)
class Fetched:
    path: Path        # == cache / sha256
    sha256: str
    first_use: bool   # no sha256 was known (neither pinned nor from a checksum file)
    # of the very file this call hashed (or wrote), from its open descriptor: looked up by
    # name afterwards it could be another file renamed over the entry meanwhile
    signature: Signature | None = field(default=None, compare=False)


def fetch(url: str, sha256: str | None, cache: Path, *, checksum_url: str | None = None,
          checksum: str = "sha256", signature_url: str | None = None,
          signature_key: Path | None = None, mirror: str | None = None,
          limits: Limits | None = None, locked: bool = False) -> Fetched:
    """Download `url` into `cache/<sha256>` and verify it; a cached entry costs no network.

    A pinned `sha256` wins over upstream's word; without one, `checksum` says where that is:
    "sha256"/"sha512" read `checksum_url` (trusted only if `signature_url` verifies against
    `signature_key`, when given), "github-digest" asks GitHub's API for the asset's digest.
    With none of them the file is trusted on first use. A sha512 is checked while the file
    streams in, beside the sha256 that names it in the cache.
    `limits` default to `Limits.from_env()` (BAKERY_DEADLINE, BAKERY_LOW_SPEED_TIME, …).
    `locked` (BAKERY_LOCKED=1) refuses any download without a pinned sha256, checksum file or not.
    A URL is downloaded by one caller at a time (`tidy.download_lock`, across processes and
    threads sharing `cache`); the others then find it cached. A file with no sha256 known
    beforehand (trusted on first use, or checked against a sha512 checksum file: the cache
    is named by sha256) has nothing to look up, so each of its waiters downloads it again.
    """
    if checksum not in CHECKSUMS:
        raise BakeryError(f"{url}: unknown checksum kind {checksum!r}",
                          f"use one of {', '.join(CHECKSUMS)}")
    pinned = _pinned(url, sha256)
    if locked and pinned is None:
        raise BakeryError(f"{url}: no sha256 pinned in release/lock.toml, and BAKERY_LOCKED=1 "
                          "refuses to download without one (no trust on first use)",
                          "pin it with `doit update:<recipe>` and commit release/lock.toml")
    if pinned and (sig := _verify_cached(cache, pinned, url)) is not False:
        return Fetched(cache / pinned, pinned, first_use=False, signature=sig)
    expected = checksums.Expected("sha256", pinned, LOCK) if pinned else None
    with Http(mirror, limits=limits) as http:
        source = http.locate(url)
        if expected is None and checksum == "github-digest":
            expected = checksums.from_github(http, url)
        elif expected is None and checksum_url:
            expected = checksums.from_checksum_file(http, url, checksum_url, checksum,
                                                    signature_url, signature_key)
        known = expected.digest if expected and expected.algorithm == "sha256" else None
        if known and (sig := _verify_cached(cache, known, url)) is not False:
            return Fetched(cache / known, known, first_use=False, signature=sig)
        # Another image of this run (doit -n N) or another run sharing the cache may be
        # downloading the same URL: wait for it, then take its file from the cache.
        with disk_errors(cache, "downloading " + url), \
                tidy.download_lock(cache, url, http.limits.deadline + LOCK_SLACK):
            if known and (sig := _verify_cached(cache, known, url)) is not False:
                return Fetched(cache / known, known, first_use=False, signature=sig)
            actual, size, sig = _fetch_into_cache(http, url, source, expected, cache)
    print(f"fetched {url_filename(url)} {decimal(size)} sha256 {actual[:12]}…", file=sys.stderr)
    return Fetched(cache / actual, actual, first_use=expected is None, signature=sig)


def _verify_cached(cache: Path, sha256: str, url: str) -> Signature | None | bool:
    """False when `cache/<sha256>` is missing or bad (and removed); else the signature of the
    file that hashed right, None if it changed while being hashed (nothing proves it since).
    Hashed again because the cache may be shared: an entry that bit-rotted or was tampered
    with is removed and fetched again instead of packed. An up-to-date build never gets here."""
    path = cache / sha256
    if not path.is_file():
        return False
    hasher = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            before = file_signature(os.fstat(f.fileno()))
            while chunk := f.read(CHUNK):
                hasher.update(chunk)
            after = file_signature(os.fstat(f.fileno()))
        if hasher.hexdigest() == sha256:
            return after if after == before else None
        what = f"holds a file with sha256 {hasher.hexdigest()}"
    except OSError as e:
        what = f"cannot be read ({e.strerror})"
    try:
        path.unlink()
    except FileNotFoundError:
        pass                      # a parallel fetch removed it first
    except OSError as e:
        raise BakeryError(f"{path}: the download cache entry for {url} {what} and cannot be "
                          f"removed: {e.strerror}",
                          f"delete {path} by hand; the cache is safe to delete") from e
    print(f"WARNING: {path}: the download cache entry for {url} {what}: removed it, "
          "fetching again", file=sys.stderr)
    return False


def fetch_text(url: str, *, mirror: str | None = None, limits: Limits | None = None) -> str:
    """A small text file (checksum file), with the same mirror and retry rules as fetch()."""
    with Http(mirror, limits=limits) as http:
        return http.get_text(url, max_bytes=MAX_TEXT, hint=MIRROR_HINT)


def _pinned(url: str, sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    digest = sha256.strip().lower()
    if not SHA256_HEX.fullmatch(digest):
        raise BakeryError(f"{url}: pinned sha256 {sha256!r} is not 64 hex digits",
                          "fix the sha256 in release/lock.toml (or remove it to re-pin)")
    return digest


def _fetch_into_cache(http: Http, url: str, source: str, expected: checksums.Expected | None,
                      cache: Path) -> tuple[str, int, Signature]:
    """Write to a temp file under cache/.tmp and rename it to its hash once verified;
    on any failure nothing is left behind."""
    tmpdir = tidy.cache_dir(cache, ".tmp")
    tidy.clean_cache(cache)   # what killed downloads left; live ones hold their file's flock
    while True:
        fd, tmp_name = make_temp_file(dir=tmpdir, prefix=f"{url_filename(url)}.")
        if tidy.claim(fd):
            break
        os.close(fd)          # a concurrent clean_cache took it for a stale one (and removed it)
        forget(tmp_name)
    tmp = Path(tmp_name)
    guard = os.dup(fd)   # holds the flock until the rename: closing `out` must not drop it
    try:
        algorithms = ("sha256",) if expected is None else tuple(dict.fromkeys(
            ("sha256", expected.algorithm)))
        with disk_errors(tmpdir, "downloading " + url), open(fd, "wb") as out, \
                _Meter(url_filename(url)) as meter:
            if is_url(source):
                digests, size = _download(http, url, out, meter, algorithms)
            else:
                digests, size = _copy(url, source, out, meter, algorithms)
        actual = digests["sha256"]
        if expected and digests[expected.algorithm] != expected.digest:
            said = "" if expected.origin == LOCK else f" (from {expected.origin})"
            raise BakeryError(
                f"{url}: {expected.algorithm} mismatch: expected {expected.digest}, "
                f"got {digests[expected.algorithm]}{said}",
                "if upstream re-published the file on purpose, update the sha256 in "
                "release/lock.toml; otherwise treat the download as compromised")
        tmp.chmod(0o644)  # mkstemp's 0600 would hide the cache from other users
        # whole and hashed by now (`out` closed): the entry is never half a file, even when
        # a stop removes the temporary name at this moment (then the rename fails)
        os.replace(tmp, cache / actual)
        forget(tmp)
        # the inode written and hashed (the rename moved its ctime), not whatever the name
        # holds by the time the caller looks
        sig = file_signature(os.fstat(guard))
    except BaseException:
        discard(tmp)
        raise
    finally:
        os.close(guard)
    return actual, size, sig


def _copy(url: str, path: str, out: BinaryIO, meter: _Meter,
          algorithms: tuple[str, ...]) -> tuple[dict[str, str], int]:
    hasher = _Hashers(algorithms)
    try:
        with open(path, "rb") as f:
            meter.restart(os.fstat(f.fileno()).st_size)
            while chunk := f.read(CHUNK):
                _write(out, hasher, meter, chunk)
    except FileNotFoundError as e:
        raise BakeryError(f"{url}: not found in the mirror directory ({path})", MIRROR_HINT) from e
    except OSError as e:
        if e.errno in DISK_FULL:   # writing the cache, not reading the mirror
            raise
        raise BakeryError(f"{url}: cannot read {path} from the mirror directory: {e.strerror}",
                          MIRROR_HINT) from e
    return hasher.hexdigests(), out.tell()


def _download(http: Http, url: str, out: BinaryIO, meter: _Meter,
              algorithms: tuple[str, ...]) -> tuple[dict[str, str], int]:
    """Stream `url` into `out`; when the body breaks, ask for the rest with Range
    (If-Range guards against splicing two versions of a re-published file). One deadline
    covers every attempt."""
    hasher = _Hashers(algorithms)
    validator = None
    deadline = Deadline(http.limits.deadline)
    source = http.locate(url)
    for _ in range(MAX_RESUMES + 1):
        received = out.tell()
        headers = {"Range": f"bytes={received}-"} if received else {}
        if received and validator:
            headers["If-Range"] = validator
        with http.open(url, headers, deadline) as resp:
            http.check(resp, url, MIRROR_HINT)
            if received and _range_start(resp) != received:
                out.seek(0)
                out.truncate()
                hasher = _Hashers(algorithms)
                if resp.status != 200:
                    continue  # a part we did not ask for: fetch the whole file again
            validator = validator or _validator(resp)
            total = _expected_total(resp, out.tell())
            meter.restart(total, out.tell())
            try:
                for chunk in resp.chunks():
                    _write(out, hasher, meter, chunk)
                if total is not None and out.tell() < total:
                    raise BodyBroken()
            except BodyBroken:
                continue
        return hasher.hexdigests(), out.tell()
    raise BakeryError(f"{url}: download broke off {MAX_RESUMES + 1} times "
                      f"(from {http.redact(source)}), {out.tell()} bytes received",
                      "retry later; the server or network is unreliable")


class _Hashers:
    """Several digests of one stream, updated together."""

    def __init__(self, algorithms: tuple[str, ...]):
        self._hashers = {a: hashlib.new(a) for a in algorithms}

    def update(self, chunk: bytes) -> None:
        for h in self._hashers.values():
            h.update(chunk)

    def hexdigests(self) -> dict[str, str]:
        return {a: h.hexdigest() for a, h in self._hashers.items()}


def _write(out: BinaryIO, hasher: _Hashers, meter: _Meter, chunk: bytes) -> None:
    out.write(chunk)
    hasher.update(chunk)
    meter.advance(len(chunk))


def _range_start(resp: Stream) -> int | None:
    if resp.status != 206:
        return None
    m = re.fullmatch(r"bytes (\d+)-\d+/(?:\d+|\*)", resp.headers.get("Content-Range", ""))
    return int(m.group(1)) if m else None


def _expected_total(resp: Stream, received: int) -> int | None:
    length = resp.headers.get("Content-Length", "")
    return received + int(length) if length.isdigit() else None


def _validator(resp: Stream) -> str | None:
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/"):  # If-Range needs a strong validator
        return etag
    return resp.headers.get("Last-Modified")




class _Meter:
    """A rich progress bar on a terminal; nothing otherwise (fetch prints one line)."""

    def __init__(self, name: str):
        self._name = name
        self._bar: Progress | None = None

    def __enter__(self) -> _Meter:
        if sys.stderr.isatty():
            # imported here: rich's console costs ~0.1 s per process, wasted without a terminal
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self._name, total=None)
        return self

    def restart(self, total: int | None, done: int = 0) -> None:
        if self._bar:
            self._bar.update(self._task, total=total, completed=done)

    def advance(self, n: int) -> None:
        if self._bar:
            self._bar.advance(self._task, n)

    def __exit__(self, *exc: object) -> None:
        if self._bar:
            self._bar.stop()
