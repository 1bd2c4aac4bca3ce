"""Downloads into a content-addressed cache: `cache/<sha256>`, verified while streaming.

Sources are https upstream URLs, optionally rewritten to a mirror (`BAKERY_MIRROR`): an
http(s) URL prefix or a local directory holding `HOST/PATH`. Transient HTTP failures are
retried by urllib3; a body that breaks mid-way is resumed with a Range request.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import unquote, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from rich.filesize import decimal
from urllib3.util.retry import Retry

from sysext_bakery.errors import BakeryError

if TYPE_CHECKING:
    from rich.progress import Progress

CHUNK = 1 << 20
TIMEOUT = (10, 60)                 # (connect, read) seconds
RETRY_STATUSES = (429, 500, 502, 503, 504)
MAX_RESUMES = 5                    # body breaks tolerated per download
MAX_TEXT = 1 << 20                 # checksum files are tiny; refuse anything bigger
HEX64 = re.compile(r"[0-9a-f]{64}")
# `<hex>` alone, or sha256sum's `<hex>  <name>` / `<hex> *<name>` (binary mode)
SUM_LINE = re.compile(r"([0-9a-fA-F]{64})(?:\s+\*?(.+))?")

LOCK_HINT = "check the version and URL pinned in release/lock.toml"
MIRROR_HINT = "check the version and URL pinned in release/lock.toml, or the mirror contents"


@dataclass(frozen=True)
class Fetched:
    path: Path        # == cache / sha256
    sha256: str
    first_use: bool   # no sha256 was known (neither pinned nor from a checksum file)


class _BodyBroken(Exception):
    """The response body ended early; the download may be resumed."""


def mirror_url(url: str, mirror: str | None) -> str:
    """Where to fetch `url` from: `url` itself, `<mirror>/HOST/PATH` for an http(s) mirror,
    or the absolute file path `<dir>/HOST/PATH` for a directory mirror (path unquoted)."""
    if not mirror:
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BakeryError(f"{url}: not an http(s) URL, cannot map it to mirror {_redact(mirror)}",
                          LOCK_HINT)
    host = parts.netloc.rsplit("@", 1)[-1]
    if not re.fullmatch(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(:\d+)?", host):
        raise BakeryError(f"{url}: host {host!r} cannot be mapped into mirror {_redact(mirror)}",
                          LOCK_HINT)
    query = f"?{parts.query}" if parts.query else ""
    if mirror.startswith(("http://", "https://")):
        return f"{mirror.rstrip('/')}/{host}{parts.path}{query}"
    root = unquote(urlsplit(mirror).path) if mirror.startswith("file://") else mirror
    if not os.path.isabs(root):
        raise BakeryError(f"mirror {mirror!r}: neither an http(s) URL nor an absolute directory",
                          "set BAKERY_MIRROR to https://HOST/PREFIX, /abs/dir or file:///abs/dir")
    rel = unquote(parts.path) + unquote(query)
    if ".." in rel.split("/"):
        raise BakeryError(f"{url}: '..' in the path would escape mirror directory {root}",
                          LOCK_HINT)
    return f"{root.rstrip('/')}/{host}{rel}"


def fetch(url: str, sha256: str | None, cache: Path, *, checksum_url: str | None = None,
          mirror: str | None = None) -> Fetched:
    """Download `url` into `cache/<sha256>` and verify it; a cached entry costs no network.

    A pinned `sha256` wins over `checksum_url`; with neither, the file is trusted on first use.
    """
    expected = _pinned(url, sha256)
    if expected and (cache / expected).is_file():
        return Fetched(cache / expected, expected, first_use=False)
    source = _source(url, mirror)
    if expected is None and checksum_url:
        expected = parse_checksum(fetch_text(checksum_url, mirror=mirror), url, checksum_url)
        if (cache / expected).is_file():
            return Fetched(cache / expected, expected, first_use=False)
    actual, size = _fetch_into_cache(url, source, expected, cache)
    print(f"fetched {_basename(url)} {decimal(size)} sha256 {actual[:12]}…", file=sys.stderr)
    return Fetched(cache / actual, actual, first_use=expected is None)


def fetch_text(url: str, *, mirror: str | None = None) -> str:
    """A small text file (checksum file), with the same mirror and retry rules as fetch()."""
    source = _source(url, mirror)
    if not _is_url(source):
        try:
            with open(source, "rb") as f:
                return _text(url, f.read(MAX_TEXT + 1))
        except OSError as e:
            raise BakeryError(f"{url}: cannot read {source} from the mirror: {e.strerror}",
                              MIRROR_HINT) from e
    with _session() as session:
        resp = _get(session, url, source, {})
        with resp:
            _check_status(resp, url, source)
            try:
                body = resp.raw.read(MAX_TEXT + 1, decode_content=True)
            except urllib3.exceptions.HTTPError as e:
                raise BakeryError(f"{url}: download broke (from {_redact(source)}): {e}",
                                  "retry later; the server or network is unreliable") from e
    return _text(url, body)


def parse_checksum(text: str, url: str, checksum_url: str) -> str:
    """The sha256 for `url` in a checksum file: a bare digest or sha256sum lines, where the
    line naming the URL's file wins; a single line naming another file is an error (it
    would only surface later as a misleading "mismatch")."""
    name = _basename(url)
    entries = [m.groups() for line in text.splitlines()
               if (m := SUM_LINE.fullmatch(line.strip()))]
    named = {digest.lower() for digest, file in entries
             if file and file.strip().rsplit("/", 1)[-1] == name}
    if len(named) == 1:
        return named.pop()
    if not named and len(entries) == 1 and not entries[0][1]:
        return entries[0][0].lower()
    what = "conflicting sha256 entries" if named else "no sha256 entry"
    raise BakeryError(f"{checksum_url}: {what} for {name} (checksum file of {url})",
                      "fix checksum-url in the recipe, or pin the sha256 in release/lock.toml")


def _pinned(url: str, sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    digest = sha256.strip().lower()
    if not HEX64.fullmatch(digest):
        raise BakeryError(f"{url}: pinned sha256 {sha256!r} is not 64 hex digits",
                          "fix the sha256 in release/lock.toml (or remove it to re-pin)")
    return digest


def _source(url: str, mirror: str | None) -> str:
    if not mirror and not url.startswith("https://"):
        raise BakeryError(f"{url}: only https:// upstream URLs are fetched",
                          "use the https:// URL in the recipe, or set BAKERY_MIRROR to a "
                          "mirror that serves this file")
    return mirror_url(url, mirror)


def _fetch_into_cache(url: str, source: str, expected: str | None,
                      cache: Path) -> tuple[str, int]:
    """Write to a temp file under cache/.tmp and rename it to its hash once verified;
    on any failure nothing is left behind."""
    tmpdir = cache / ".tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=tmpdir, prefix=f"{_basename(url)}.")
    tmp = Path(tmp_name)
    try:
        with open(fd, "wb") as out, _Meter(_basename(url)) as meter:
            if _is_url(source):
                actual, size = _download(url, source, out, meter)
            else:
                actual, size = _copy(url, source, out, meter)
        if expected and actual != expected:
            raise BakeryError(
                f"{url}: sha256 mismatch: expected {expected}, got {actual}",
                "if upstream re-published the file on purpose, update the sha256 in "
                "release/lock.toml; otherwise treat the download as compromised")
        tmp.chmod(0o644)  # mkstemp's 0600 would hide the cache from other users
        os.replace(tmp, cache / actual)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return actual, size


def _copy(url: str, path: str, out: BinaryIO, meter: _Meter) -> tuple[str, int]:
    hasher = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            meter.restart(os.fstat(f.fileno()).st_size)
            while chunk := f.read(CHUNK):
                _write(out, hasher, meter, chunk)
    except FileNotFoundError as e:
        raise BakeryError(f"{url}: not found in the mirror directory ({path})", MIRROR_HINT) from e
    except OSError as e:
        raise BakeryError(f"{url}: cannot read {path} from the mirror directory: {e.strerror}",
                          MIRROR_HINT) from e
    return hasher.hexdigest(), out.tell()


def _download(url: str, source: str, out: BinaryIO, meter: _Meter) -> tuple[str, int]:
    """Stream `source` into `out`; when the body breaks, ask for the rest with Range
    (If-Range guards against splicing two versions of a re-published file)."""
    hasher = hashlib.sha256()
    validator = None
    with _session() as session:
        for _ in range(MAX_RESUMES + 1):
            received = out.tell()
            headers = {"Range": f"bytes={received}-"} if received else {}
            if received and validator:
                headers["If-Range"] = validator
            with _get(session, url, source, headers) as resp:
                _check_status(resp, url, source)
                if received and _range_start(resp) != received:
                    out.seek(0)
                    out.truncate()
                    hasher = hashlib.sha256()
                    if resp.status_code != 200:
                        continue  # a part we did not ask for: fetch the whole file again
                validator = validator or _validator(resp)
                total = _expected_total(resp, out.tell())
                meter.restart(total, out.tell())
                try:
                    for chunk in resp.raw.stream(CHUNK, decode_content=False):
                        _write(out, hasher, meter, chunk)
                    if total is not None and out.tell() < total:
                        raise _BodyBroken()
                except (urllib3.exceptions.HTTPError, _BodyBroken):
                    continue
            return hasher.hexdigest(), out.tell()
    raise BakeryError(f"{url}: download broke off {MAX_RESUMES + 1} times "
                      f"(from {_redact(source)}), {out.tell()} bytes received",
                      "retry later; the server or network is unreliable")


def _write(out: BinaryIO, hasher: "hashlib._Hash", meter: _Meter, chunk: bytes) -> None:
    out.write(chunk)
    hasher.update(chunk)
    meter.advance(len(chunk))


def _session() -> requests.Session:
    try:
        backoff = float(os.environ.get("BAKERY_FETCH_BACKOFF", "1.0"))
    except ValueError:
        raise BakeryError(f"BAKERY_FETCH_BACKOFF={os.environ['BAKERY_FETCH_BACKOFF']!r} "
                          "is not a number", "set it to seconds, e.g. 1.0, or unset it") from None
    retry = Retry(total=5, connect=5, read=5, status=5, backoff_factor=backoff,
                  status_forcelist=RETRY_STATUSES, allowed_methods={"GET"},
                  respect_retry_after_header=True, raise_on_status=False)
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    # identity: a server that labels a .tgz "Content-Encoding: gzip" must not get it unpacked
    session.headers.update({"User-Agent": "sysext-bakery", "Accept-Encoding": "identity"})
    return session


def _get(session: requests.Session, url: str, source: str,
         headers: dict[str, str]) -> requests.Response:
    try:
        return session.get(source, headers=headers, stream=True, timeout=TIMEOUT)
    except requests.ConnectionError as e:
        raise BakeryError(f"{url}: cannot connect (from {_redact(source)}): {_reason(e)}",
                          "check the network or proxy; for offline builds set BAKERY_MIRROR "
                          "to a mirror URL or directory (README: Offline and mirrored builds)") from e
    except requests.RequestException as e:
        raise BakeryError(f"{url}: request failed (from {_redact(source)}): "
                          f"{type(e).__name__}", MIRROR_HINT) from e


def _reason(error: requests.ConnectionError) -> str:
    """urllib3's reason, e.g. "Failed to resolve 'github.com' (…)", without the URL (which
    may carry mirror credentials) that requests repeats in its own message."""
    reason = getattr(error.args[0], "reason", None) if error.args else None
    text = str(reason or error)
    return text.split(">: ", 1)[-1]   # drop urllib3's "<…Connection object at 0x…>: " prefix


def _check_status(resp: requests.Response, url: str, source: str) -> None:
    if resp.status_code >= 400:
        raise BakeryError(f"{url}: HTTP {resp.status_code} {_phrase(resp)} "
                          f"(from {_redact(source)})", MIRROR_HINT)


def _phrase(resp: requests.Response) -> str:
    """The standard reason phrase: servers spell it as they like, HTTP/2 has none."""
    try:
        return HTTPStatus(resp.status_code).phrase
    except ValueError:
        return resp.reason or ""


def _range_start(resp: requests.Response) -> int | None:
    if resp.status_code != 206:
        return None
    m = re.fullmatch(r"bytes (\d+)-\d+/(?:\d+|\*)", resp.headers.get("Content-Range", ""))
    return int(m.group(1)) if m else None


def _expected_total(resp: requests.Response, received: int) -> int | None:
    length = resp.headers.get("Content-Length", "")
    return received + int(length) if length.isdigit() else None


def _validator(resp: requests.Response) -> str | None:
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/"):  # If-Range needs a strong validator
        return etag
    return resp.headers.get("Last-Modified")


def _text(url: str, body: bytes) -> str:
    if len(body) > MAX_TEXT:
        raise BakeryError(f"{url}: larger than {MAX_TEXT} bytes, not a checksum file",
                          "fix checksum-url in the recipe")
    return body.decode("utf-8", errors="replace")


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _basename(url: str) -> str:
    return unquote(urlsplit(url).path).rstrip("/").rsplit("/", 1)[-1]


def _redact(url: str) -> str:
    """Credentials in a mirror URL (https://user:token@host/) never reach a message."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[-1]).geturl()


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
