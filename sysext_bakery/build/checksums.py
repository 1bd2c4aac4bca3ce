"""What a download must hash to, from upstream's own word: a checksum file (optionally
gpg-signed), or the `digest` GitHub's REST API gives a release asset.

Checksum files come in the shapes `sha256sum`/`sha512sum` write: a bare digest, `<hex>  <name>`,
`<hex> *<name>` (binary mode), the BSD/`--tag` form `SHA256 (<name>) = <hex>`, and lists of
many files, where the line naming the download's file is the one that counts.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import quote, unquote

from sysext_bakery import gpg, run
from sysext_bakery.errors import BakeryError
from sysext_bakery.model import github as github_api
from sysext_bakery.model.reply import json_field
from sysext_bakery.model.url import url_filename

if TYPE_CHECKING:
    from sysext_bakery.http import Http

ALGORITHMS = {"sha256": 64, "sha512": 128}    # algorithm -> hex digits
MAX_TEXT = 1 << 20                 # checksum files and signatures are tiny; refuse anything bigger
GITHUB_DOWNLOAD = re.compile(r"https://github\.com/([^/]+)/([^/]+)/releases/download/([^/]+)/([^/]+)")
RECIPE_HINT = "fix the source's checksum keys in the recipe, or pin the sha256 in release/lock.toml"
MIRROR_HINT = "check the version and URL pinned in release/lock.toml, or the mirror contents"


@dataclass(frozen=True)
class Expected:
    """The digest a download must have: `algorithm` is how upstream states it."""
    algorithm: str      # "sha256" | "sha512"
    digest: str         # lower-case hex
    origin: str         # the URL that said so, for messages


def _line_re(algorithm: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    n = ALGORITHMS[algorithm]
    # a leading backslash marks a name sha*sum escaped (it held a backslash or newline)
    gnu = re.compile(rf"\\?([0-9a-fA-F]{{{n}}})(?:\s+\*?(.+))?")
    bsd = re.compile(rf"\\?{algorithm.upper()}\s*\((.+)\)\s*=\s*([0-9a-fA-F]{{{n}}})")
    return gnu, bsd


def parse_checksum(text: str, url: str, checksum_url: str, algorithm: str = "sha256") -> str:
    """The `algorithm` digest for `url` in a checksum file. The line naming the URL's file
    wins; a lone bare digest is taken as is; a file without the name (or with two different
    digests for it) is an error now rather than a misleading "mismatch" later."""
    name = url_filename(url)
    gnu, bsd = _line_re(algorithm)
    entries: list[tuple[str, str | None]] = []
    for line in text.splitlines():
        line = line.strip()
        if m := gnu.fullmatch(line):
            entries.append((m.group(1).lower(), m.group(2)))
        elif m := bsd.fullmatch(line):
            entries.append((m.group(2).lower(), m.group(1)))
    named = {digest for digest, file in entries
             if file and file.strip().rsplit("/", 1)[-1] == name}
    if len(named) == 1:
        return named.pop()
    if not named and len(entries) == 1 and not entries[0][1]:
        return entries[0][0]
    if named:
        what = f"conflicting {algorithm} entries for {name}"
    elif entries:
        listed = ", ".join(sorted({f.strip() for _, f in entries if f}))[:300]
        what = f"no {algorithm} entry for {name} (the file lists {listed or 'bare digests only'})"
    else:
        what = f"no {algorithm} entry for {name} (not one {algorithm} line in the file)"
    raise BakeryError(f"{checksum_url}: {what}; checksum file of {url}",
                      "fix checksum-url (or checksum = \"sha256\"/\"sha512\") in the recipe, "
                      "or pin the sha256 in release/lock.toml")


def from_checksum_file(http: Http, url: str, checksum_url: str, algorithm: str,
                       signature_url: str | None = None,
                       signature_key: Path | None = None) -> Expected:
    """Read `checksum_url` and pick `url`'s digest. With `signature_url`, the file is trusted
    only if that detached signature verifies against exactly `signature_key`."""
    body = http.get_bytes(checksum_url, max_bytes=MAX_TEXT, hint=MIRROR_HINT)
    if signature_url:
        if signature_key is None:
            raise BakeryError(f"{url}: signature-url {signature_url} without signature-key",
                              RECIPE_HINT)
        check_signature(body, http.get_bytes(signature_url, max_bytes=MAX_TEXT, hint=MIRROR_HINT), signature_key, checksum_url,
                        signature_url)
    return Expected(algorithm, parse_checksum(body.decode("utf-8", errors="replace"), url,
                                              checksum_url, algorithm), checksum_url)


def check_signature(data: bytes, signature: bytes, key_file: Path, checksum_url: str,
                    signature_url: str) -> None:
    try:
        key = key_file.read_bytes()
    except OSError as e:
        raise BakeryError(f"{key_file}: cannot read the signature key: {e.strerror}",
                          "put upstream's armored public key there (see docs/recipes.md)") from None
    if not gpg.key_fingerprints(key):
        raise BakeryError(f"{key_file}: holds no OpenPGP public key",
                          "save upstream's armored public key (gpg --armor --export) there")
    if not gpg.verify_detached(data, signature, key):
        raise BakeryError(
            f"{checksum_url}: the signature {signature_url} does not verify against {key_file}",
            "the checksum file or its signature was altered, or upstream signs with another "
            "key now; do not build from it until you know which (check upstream's "
            "announcements before replacing the key)")


# --- GitHub release asset digests ---------------------------------------------------------

def github_asset(url: str) -> tuple[str, str, str, str]:
    """(owner, repo, tag, asset name) of a github.com release download URL."""
    m = GITHUB_DOWNLOAD.fullmatch(url.split("?", 1)[0])
    if not m:
        raise BakeryError(f"{url}: checksum = \"github-digest\" needs a URL of the form "
                          "https://github.com/<owner>/<repo>/releases/download/<tag>/<asset>",
                          RECIPE_HINT)
    owner, repo, tag, asset = (unquote(g) for g in m.groups())
    return owner, repo, tag, asset


def release_api_url(owner: str, repo: str, tag: str) -> str:
    return f"{github_api.API}/repos/{owner}/{repo}/releases/tags/{quote(tag, safe='')}"


def digest_in_release(release: Any, asset: str, api_url: str, url: str) -> str:
    """The sha256 GitHub records for `asset` in a release JSON (`assets[].digest`)."""
    assets = json_field(release, "assets", list, api_url, "not a GitHub release? " + MIRROR_HINT,
                        "the release")
    found = [a for a in assets if isinstance(a, dict) and a.get("name") == asset]
    if not found:
        names = ", ".join(str(a.get("name")) for a in assets if isinstance(a, dict))[:300]
        raise BakeryError(f"{api_url}: the release has no asset {asset!r} (it has: {names or 'none'}); "
                          f"needed for {url}", "check the recipe's url and the pinned version")
    digest = found[0].get("digest")
    m = re.fullmatch(r"sha256:([0-9a-fA-F]{64})", digest) if isinstance(digest, str) else None
    if not m:
        said = ("no digest field" if "digest" not in found[0]
                else f"digest: {json.dumps(digest)[:100]}")
        raise BakeryError(
            f"{api_url}: asset {asset!r} has no sha256 digest ({said}); GitHub has recorded "
            "digests for assets uploaded since June 2025 only",
            "use upstream's checksum file (checksum-url) instead, or pin the sha256 in "
            "release/lock.toml after checking it another way")
    return m.group(1).lower()


def from_github(http: Http, url: str, env: Mapping[str, str] | None = None) -> Expected:
    """Ask GitHub's REST API (`GET /repos/{owner}/{repo}/releases/tags/{tag}`) for the
    digest of the asset `url` downloads. `env` (default: the process environment) supplies
    GITHUB_TOKEN."""
    owner, repo, tag, asset = github_asset(url)
    api_url = release_api_url(owner, repo, tag)
    # as discovery does: the token to api.github.com, or the mirror the user put before it
    headers = github_api.rest_headers((run.environment() if env is None else env).get("GITHUB_TOKEN"))
    release = http.get_json(api_url, headers=headers, hint=MIRROR_HINT)
    return Expected("sha256", digest_in_release(release, asset, api_url, url), api_url)


