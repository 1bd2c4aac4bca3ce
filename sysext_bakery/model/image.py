"""One image to bake, fully resolved from a recipe, a pinned version and an arch.

These are plain frozen values: fetch, stage, validate and pack take them and never look
at recipes or the lock themselves.
"""
from __future__ import annotations

import re

from dataclasses import dataclass, field
from pathlib import Path

from sysext_bakery.model import naming
from sysext_bakery.model.limits import DEFAULT as DEFAULT_LIMITS, ArchiveLimits

# image format -> its compressors, the default first
COMPRESSIONS: dict[str, tuple[str, ...]] = {
    "squashfs": ("zstd", "gzip", "xz", "lz4"),
    "erofs": ("lz4hc", "lz4", "none"),
}

_ARCHIVE_SUFFIXES = (
    (".tar.gz", "tar.gz"), (".tgz", "tar.gz"),
    (".tar.xz", "tar.xz"), (".txz", "tar.xz"),
    (".tar.zst", "tar.zst"), (".tzst", "tar.zst"),
    (".tar.bz2", "tar.bz2"), (".tbz2", "tar.bz2"),
    (".zip", "zip"), (".tar", "tar"),
)
# One compressed file that is not a tar (restic's `restic_0.17.3_linux_amd64.bz2`, gitea's
# `.xz`): its only member is the file itself, named as the URL without the suffix. Checked
# after the tar suffixes, so `x.tar.gz` stays a tarball.
COMPRESSED_FILES: dict[str, str] = {
    "gz-file": ".gz", "xz-file": ".xz", "bz2-file": ".bz2", "zst-file": ".zst",
}
ARCHIVE_KINDS = tuple(dict.fromkeys(kind for _, kind in _ARCHIVE_SUFFIXES)) \
    + tuple(COMPRESSED_FILES) + ("file",)
# how a source's expected digest is stated: a checksum file's algorithm, or GitHub's API
CHECKSUMS = ("sha256", "sha512", "github-digest")
# a sha256 as the bakery writes and pins it: 64 lower-case hex digits
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def archive_kind(filename: str) -> str | None:
    """The archive kind told by a file name's suffix; None for anything else (a plain file)."""
    lower = filename.lower()
    for suffix, kind in _ARCHIVE_SUFFIXES:
        if lower.endswith(suffix):
            return kind
    for kind, suffix in COMPRESSED_FILES.items():
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return kind
    return None


def single_member_name(filename: str, kind: str) -> str:
    """The name install maps see for a one-file source: the download's file name, without
    the compression suffix for a compressed file (`tool_1.0_linux_amd64.bz2` ->
    `tool_1.0_linux_amd64`)."""
    suffix = COMPRESSED_FILES.get(kind, "")
    if suffix and filename.lower().endswith(suffix) and len(filename) > len(suffix):
        return filename[:-len(suffix)]
    return filename


@dataclass(frozen=True)
class Install:
    """One install-map entry: archive member(s) -> destination in the image."""
    pattern: str             # posix path or glob inside the source ("docker/*", "bin/wasmtime", "lib/**")
    dest: str                # absolute, under /usr or /opt; a trailing "/" means "into this directory"
    mode: int | None = None  # None: 0755 if the member is executable else 0644
    # literal text replacements (old, new), in order, for upstream unit files taken from an
    # archive; each must match in some file the entry installs
    replace: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Source:
    """One download of one image, with everything needed to fetch and unpack it."""
    url: str                       # real upstream URL (https); BAKERY_MIRROR rewrites it at fetch time
    sha256: str | None             # pinned in the lock; None = not fetched yet
    checksum_url: str | None       # where upstream publishes the sha256 of `url`, if it does
    kind: str                      # one of ARCHIVE_KINDS: "tar.gz", "zip", "xz-file", "file", ...
    install: tuple[Install, ...]
    allow_setuid: bool = False
    origin: str = ""               # for messages: "recipes/docker.toml: sources[0]"
    limits: ArchiveLimits = DEFAULT_LIMITS   # how much its archive may write into the tree
    checksum: str = "sha256"       # what checksum_url holds ("sha256" | "sha512"), or "github-digest"
    signature_url: str | None = None   # detached gpg signature over the checksum file
    signature_key: Path | None = None  # the armored public key it must verify against

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Symlink:
    """A link the recipe declares (`[symlinks]`), placed after every source and files/."""
    path: str      # absolute, under /usr or /opt (checked by the recipe schema)
    target: str    # as written into the link: relative to the link's directory, or absolute
    origin: str = ""   # for messages: 'recipes/k3s.toml: symlinks."/usr/bin/kubectl"'


@dataclass(frozen=True)
class Image:
    name: str
    version: str
    arch: str                                   # systemd spelling: "x86-64" | "arm64"
    sources: tuple[Source, ...]
    files_dir: Path | None = None               # recipes/<name>/files, copied into the tree
    symlinks: tuple[Symlink, ...] = ()          # the recipe's [symlinks]
    upholds: tuple[tuple[str, tuple[str, ...]], ...] = ()   # ((target, (unit, ...)), ...)
    reload_manager: bool | None = None          # EXTENSION_RELOAD_MANAGER=1; None: when units ship
    os_id: str = "_any"                         # extension-release ID=
    sysext_level: str | None = None             # SYSEXT_LEVEL= (set with an OS profile)
    fmt: str = "squashfs"                       # "squashfs" | "erofs"
    compression: str = "zstd"                   # squashfs: zstd|gzip|xz|lz4; erofs: lz4|lz4hc|none
    recipe_file: Path | None = field(default=None, compare=False)
    # Host facts, not image contents: carried into the provenance record and index.json
    replaces: tuple[str, ...] = ()              # OS built-in sysexts the release masks
    conflicts: tuple[str, ...] = ()             # recipes not to be merged beside this one

    @property
    def id(self) -> str:
        """`<name>-<version>-<arch>`: the image file stem and the per-image task name."""
        return naming.image_id(self.name, self.version, self.arch)

    @property
    def filename(self) -> str:
        return naming.image_filename(self.name, self.version, self.arch)
