"""Upstream-shaped downloads for any recipe, derived from the recipe itself.

For one recipe, a set of versions and its arches, `synthesize` works out what upstream would
publish: every source that applies to the version (`since`/`until`, `arches`), its URL with
the source's or the recipe's arch spelling, and an artifact of the kind the URL names (a raw
ELF binary, a single gzip/xz/bz2/zst file, a tar in any compression, a zip) holding one member
for each install-map pattern, plus the members that symlinks and upheld units point at. ELF
members are built for the image's arch, unit members are valid units containing the text the
install entry's `replace` rewrites. Next to them: the checksum file in the declared algorithm
and upstream's shape (bare, `hash  file`, `hash *file`, or a list naming other files too), its
detached gpg signature when `signature-url` is declared, and the GitHub release JSON with each
asset's `digest` for `checksum = "github-digest"`.

Everything is read from the TOML, not from the loader, so a recipe the loader refuses still
gets artifacts and the build reports the loader's own error.
"""
from __future__ import annotations

import bz2
import fnmatch
import gzip
import hashlib
import io
import json
import lzma
import os
import posixpath
import re
import subprocess
import tomllib
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import zstandard

from elf import make_elf
from sysext_bakery.model.arch import ARCHES
from sysext_bakery.model.image import archive_kind
from sysext_bakery.model.version import compare_versions, version_vars
from upstream import Upstream, tar_bytes

UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path", ".mount", ".target")
SINGLE_FILE_SUFFIXES = {".gz": "gz", ".xz": "xz", ".bz2": "bz2", ".zst": "zst"}
UNIT_DIR = "/usr/lib/systemd/system/"

# How upstream writes a checksum file that names one download (lists are always
# `hash  file` lines, or `hash *file` where upstream marks binary mode).
CHECKSUM_SHAPES = {
    "kubernetes": "bare",          # dl.k8s.io: <binary>.sha256 holds the digest only
    "tailscale": "bare",
    "docker_compose": "star",      # docker-compose-linux-x86_64.sha256: `hash *name`
    "docker_buildx": "star",
    "coder": "star",
}
DECOY = "decoy-other-asset.tar.gz"
ElfMaker = Callable[[str, str, str], bytes]      # (download URL, member or file name, arch)


@dataclass(frozen=True)
class Artifact:
    recipe: str
    version: str
    arch: str
    url: str
    kind: str
    members: tuple[str, ...]


@dataclass
class Synthesized:
    artifacts: list[Artifact] = field(default_factory=list)
    signed: list[str] = field(default_factory=list)          # signature URLs written
    digests: list[str] = field(default_factory=list)         # GitHub API URLs written


@dataclass(frozen=True)
class Signer:
    """Makes detached signatures with a test key (GNUPGHOME)."""
    gnupghome: Path
    armored_public: str

    def sign(self, data: bytes, armor: bool) -> bytes:
        args = ["gpg", "--batch", "--quiet", "--detach-sign", "--output", "-"]
        if armor:
            args.append("--armor")
        return subprocess.run(args, input=data, capture_output=True, check=True,
                              env={**os.environ, "GNUPGHOME": str(self.gnupghome)}).stdout


def load_toml(recipes: Path, name: str) -> dict:
    with (recipes / f"{name}.toml").open("rb") as f:
        return tomllib.load(f)


def applies(source: dict, version: str) -> bool:
    """since <= version < until, in systemd's version order."""
    since, until = source.get("since"), source.get("until")
    return ((since is None or compare_versions(version, since) >= 0)
            and (until is None or compare_versions(version, until) < 0))


def sources_for(data: dict, version: str, arch: str) -> list[dict]:
    return [s for s in data.get("sources", [])
            if arch in s.get("arches", data["arches"]) and applies(s, version)]


def render(template: str, name: str, data: dict, source: dict, version: str, arch: str,
           url: str = "") -> str:
    names = source.get("arch-names", data.get("arch-names", {}))
    values = {"name": name, "arch": names.get(arch, ARCHES[arch].uname), "sysext_arch": arch,
              "url": url, **version_vars(source.get("version") or version)}
    return template.format(**values)


def kind_of(source: dict, filename: str) -> str:
    if "type" in source:
        return source["type"]
    kind = archive_kind(filename)
    if kind:
        return kind
    suffix = posixpath.splitext(filename)[1]
    return f"{SINGLE_FILE_SUFFIXES[suffix]}-file" if suffix in SINGLE_FILE_SUFFIXES else "file"


# --- which members an archive needs -------------------------------------------------------

def install_target(entry: object) -> tuple[str, dict]:
    return (entry, {}) if isinstance(entry, str) else (entry["to"], entry)


def concrete(pattern: str, index: int) -> str:
    """One member path the glob matches: `*` in a directory part is `x` (so patterns share
    their top directory as upstream's do), in the file name `g<index>`; `**` is `d/g<index>`."""
    parts = pattern.split("/")
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(f"d/g{index}" if last else "d")
        else:
            out.append(part.replace("*", f"g{index}" if last else "x").replace("?", "q"))
    return "/".join(out)


def _member_for_image_path(install: dict, path: str) -> str | None:
    """The archive member an install map turns into image `path`, if one entry can."""
    for pattern, entry in install.items():
        dest, _ = install_target(entry)
        if not dest.endswith("/"):
            if dest == path:
                return concrete(pattern, 0)
            continue
        if pattern.endswith("/**") and path.startswith(dest):
            return concrete(pattern[:-3], 0) + "/" + path[len(dest):]
        head, _, last = pattern.rpartition("/")
        if posixpath.dirname(path) + "/" == dest and fnmatch.fnmatchcase(posixpath.basename(path), last):
            return (concrete(head, 0) + "/" if head else "") + posixpath.basename(path)
    return None


def required_paths(data: dict, files_dir: Path) -> list[str]:
    """Image paths something points at: symlink targets and upheld units (unless files/ has them)."""
    wanted = []
    for link, target in data.get("symlinks", {}).items():
        wanted.append(target if target.startswith("/") else
                      posixpath.normpath(posixpath.join(posixpath.dirname(link), target)))
    for units in data.get("units", {}).get("upholds", {}).values():
        wanted.extend(UNIT_DIR + u for u in units)
    return [p for p in wanted if not (files_dir / p.lstrip("/")).exists()]


def members_of(source: dict, wanted: list[str]) -> list[str]:
    install = source["install"]
    members = [concrete(p, i) for i, p in enumerate(install)]
    for path in wanted:
        member = _member_for_image_path(install, path)
        if member and member not in members:
            members.append(member)
    return members


def unit_text(name: str, replace: dict[str, str]) -> bytes:
    """A unit systemd accepts, mentioning every string `replace` rewrites."""
    commands = list(replace) or ["/usr/bin/true"]
    lines = ["[Unit]", f"Description=synthetic {name}", "", "[Service]",
             f"ExecStart={commands[0]} --synthetic"]
    lines += [f"ExecStopPost={c} --cleanup" for c in commands[1:]]
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines).encode()


def small_elf(url: str, member: str, arch: str) -> bytes:
    """The default ELF payload: a valid header and a few bytes naming the member and its
    download, whose URL holds the (companion's own) version: every version's bytes differ, so
    a sha256 pinned for the wrong version (or arch) shows."""
    return make_elf(arch, f"{member} {url}\n".encode() * 8)


def member_content(member: str, source: dict, arch: str, url: str = "",
                   elf: ElfMaker = small_elf) -> bytes:
    for pattern, entry in source["install"].items():
        _, opts = install_target(entry)
        if member.endswith(UNIT_SUFFIXES) and (fnmatch.fnmatchcase(member, pattern.replace("**", "*"))
                                               or member == concrete(pattern, 0)):
            return unit_text(posixpath.basename(member), opts.get("replace", {}))
    if member.endswith(UNIT_SUFFIXES):
        return unit_text(posixpath.basename(member), {})
    return elf(url, member, arch)


# --- artifacts ----------------------------------------------------------------------------

def pack(kind: str, filename: str, members: dict[str, bytes], arch: str, url: str = "",
         elf: ElfMaker = small_elf) -> bytes:
    if kind == "file":
        return elf(url, filename, arch)
    if kind.endswith("-file"):
        raw = elf(url, filename, arch)
        return {"gz-file": lambda b: gzip.compress(b, mtime=0), "xz-file": lzma.compress,
                "bz2-file": bz2.compress,
                "zst-file": zstandard.ZstdCompressor().compress}[kind](raw)
    if kind == "zip":
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for name, content in members.items():
                info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
                info.external_attr = (0o100755 << 16)
                z.writestr(info, content)
        return out.getvalue()
    tar = tar_bytes([(n, c, 0o644 if n.endswith(UNIT_SUFFIXES) else 0o755)
                     for n, c in members.items()], compress="none")
    compress = kind.removeprefix("tar").lstrip(".")
    return {"": lambda b: b, "gz": lambda b: gzip.compress(b, mtime=0), "xz": lzma.compress,
            "bz2": bz2.compress, "zst": zstandard.ZstdCompressor().compress}[compress](tar)


def _github_release(url: str) -> tuple[str, str, str, str] | None:
    m = re.fullmatch(r"https://github\.com/([^/]+)/([^/]+)/releases/download/([^/]+)/([^/]+)", url)
    return (m[1], m[2], m[3], m[4]) if m else None


def synthesize(recipes: Path, name: str, versions: list[str], up: Upstream,
               signer: Signer | None = None, arches: list[str] | None = None,
               elf: ElfMaker = small_elf) -> Synthesized:
    """`elf(url, member, arch)` makes each ELF file (a raw download or an archive member):
    tiny by default; the benchmarks give them real binaries' sizes."""
    data = load_toml(recipes, name)
    files_dir = recipes / name / "files"
    result = Synthesized()
    sums: dict[str, list[tuple[str, str]]] = defaultdict(list)     # checksum URL -> (hex, file)
    algorithm: dict[str, str] = {}
    signatures: dict[str, str] = {}                                # checksum URL -> signature URL
    releases: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    wanted = required_paths(data, files_dir)
    for version in versions:
        for arch in arches or data["arches"]:
            for source in sources_for(data, version, arch):
                url = render(source["url"], name, data, source, version, arch)
                filename = url.rsplit("/", 1)[1]
                kind = kind_of(source, filename)
                members = members_of(source, wanted) if kind not in ("file",) and not kind.endswith("-file") else []
                if url in up.sha256:       # shared by several versions: made once
                    content = (up.root / url.removeprefix("https://")).read_bytes()
                else:
                    content = pack(kind, filename, {m: member_content(m, source, arch, url, elf)
                                                    for m in members}, arch, url, elf)
                    up.add(url, content)
                result.artifacts.append(Artifact(name, version, arch, url, kind, tuple(members)))
                check = source.get("checksum", "sha256")
                if check == "github-digest":
                    gh = _github_release(url)
                    assert gh, f"{name}: github-digest on a non-GitHub URL {url}"
                    releases[gh[:3]].append({
                        "name": gh[3], "size": len(content), "browser_download_url": url,
                        "digest": "sha256:" + hashlib.sha256(content).hexdigest()})
                elif "checksum-url" in source:
                    curl = render(source["checksum-url"], name, data, source, version, arch, url)
                    sums[curl].append((hashlib.new(check, content).hexdigest(), filename))
                    algorithm[curl] = check
                    if "signature-url" in source:
                        signatures[curl] = render(source["signature-url"], name, data, source,
                                                  version, arch, url)
    for curl, entries in sums.items():
        text = checksum_text(entries, CHECKSUM_SHAPES.get(name, "gnu"), algorithm[curl],
                             shared=not _names_one(curl, entries))
        up.add(curl, text.encode())
        if curl in signatures:
            sig_url = signatures[curl]
            if signer is None:
                raise AssertionError(f"{name}: {sig_url} needs a Signer")
            up.add(sig_url, signer.sign(text.encode(), armor=sig_url.endswith(".asc")))
            result.signed.append(sig_url)
    for (owner, repo, tag), assets in releases.items():
        api = f"https://api.github.com/repos/{owner}/{repo}/releases/tags/{tag}"
        assets = list({a["name"]: a for a in assets}.values())
        assets.append({"name": DECOY, "size": 1, "browser_download_url": "https://example.invalid/x",
                       "digest": "sha256:" + "0" * 64})
        up.add(api, json.dumps({"tag_name": tag, "draft": False, "prerelease": False,
                                "assets": assets}).encode())
        result.digests.append(api)
    return result


def _names_one(checksum_url: str, entries: list[tuple[str, str]]) -> bool:
    """A per-download checksum file (`<file>.sha256`), as opposed to a release-wide list."""
    files = {f for _, f in entries}
    return len(files) == 1 and next(iter(files)) in checksum_url.rsplit("/", 1)[1]


def checksum_text(entries: list[tuple[str, str]], shape: str, algorithm: str, shared: bool) -> str:
    """The file upstream would publish: one line per download, and for a release-wide list a
    line for another asset first, so that picking the right line is what is tested."""
    unique = list(dict.fromkeys(entries))
    if not shared and len(unique) == 1 and shape == "bare":
        return unique[0][0] + "\n"
    mark = "*" if shape == "star" else " "
    lines = []
    if shared:
        lines.append(f"{'0' * len(unique[0][0])} {mark}{DECOY}")
    lines += [f"{digest} {mark}{file}" for digest, file in unique]
    return "\n".join(lines) + "\n"
