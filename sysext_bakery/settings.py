"""What a build reads from the environment (read once, at the edge) and where its files live."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NamedTuple

from sysext_bakery.errors import BakeryError
from sysext_bakery.model.arch import ARCHES
from sysext_bakery.model.image import COMPRESSIONS

LOCK = "release/lock.toml"   # relative to the project root; also how messages name it

# The environment variables holding credentials or key material. The bakery reads them itself
# (the token into an Authorization header, the key and passphrase into gpg's stdin); run.py
# strips them from every program it starts, so no tool, agent or hook of a tool ever sees one.
# GH_TOKEN is gh's: the release workflow's update job sets it for `gh pr create`, so doit
# runs with it; the bakery never reads it, and no child of it gets it
SECRETS = ("GITHUB_TOKEN", "BAKERY_SIGNING_KEY", "BAKERY_SIGNING_PASSPHRASE", "GH_TOKEN")


@dataclass(frozen=True)
class Settings:
    """Everything a build reads from the environment, read once at the edge."""
    root: Path
    mirror: str | None = None
    cache: Path | None = None
    arches: tuple[str, ...] | None = None      # BAKERY_ARCH: restrict builds to these arches
    fmt: str | None = None                     # BAKERY_FORMAT overrides recipes' format
    compression: str | None = None             # BAKERY_COMPRESSION overrides recipes' compression
    locked: bool = False                       # BAKERY_LOCKED=1: no download without a pinned sha256

    @property
    def build(self) -> Path:
        return self.root / "build"

    @property
    def images(self) -> Path:
        return self.build / "images"

    @property
    def download_cache(self) -> Path:
        return self.cache or self.build / "cache"

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK


class ImagePaths(NamedTuple):
    """Where one image's files live (plain strings: building thousands of Paths per graph
    load costs more than the rest of a no-op run)."""
    fetch_record: str     # build/state/fetch/<img>.json: what was downloaded
    stage_record: str     # build/state/stage/<img>.json: digest of what shaped the tree
    tree: str             # build/stage/<img>/
    image: str            # build/images/<img>.raw
    provenance: str       # build/state/images/<img>.json

    @classmethod
    def of(cls, settings: Settings, image_id: str) -> "ImagePaths":
        build = str(settings.build)
        return cls(f"{build}/state/fetch/{image_id}.json", f"{build}/state/stage/{image_id}.json",
                   f"{build}/stage/{image_id}", f"{build}/images/{image_id}.raw",
                   f"{build}/state/images/{image_id}.json")


def settings_from_env(root: Path, env: Mapping[str, str] = os.environ) -> Settings:
    arches = tuple(a.strip() for a in env.get("BAKERY_ARCH", "").split(",") if a.strip()) or None
    for a in arches or ():
        if a not in ARCHES:
            raise BakeryError(f"BAKERY_ARCH: unknown arch {a!r}", f"use one of {', '.join(ARCHES)}")
    fmt = env.get("BAKERY_FORMAT") or None
    if fmt not in (None, "squashfs", "erofs"):
        raise BakeryError(f"BAKERY_FORMAT: unknown format {fmt!r}", "use squashfs or erofs")
    compression = env.get("BAKERY_COMPRESSION") or None
    allowed = COMPRESSIONS[fmt or "squashfs"]
    if compression is not None and compression not in allowed:
        raise BakeryError(f"BAKERY_COMPRESSION: {compression!r} is not available for {fmt or 'squashfs'}",
                          f"use one of {', '.join(allowed)}")
    locked = env.get("BAKERY_LOCKED", "").strip().lower()
    if locked not in ("", "0", "1", "no", "yes", "false", "true"):
        raise BakeryError(f"BAKERY_LOCKED: {env['BAKERY_LOCKED']!r} is not 1 or 0",
                          "set BAKERY_LOCKED=1 for locked builds (no trust on first use), or unset it")
    cache = usable_dir("BAKERY_CACHE", Path(env["BAKERY_CACHE"])) if env.get("BAKERY_CACHE") else None
    return Settings(root=root, mirror=env.get("BAKERY_MIRROR") or None, cache=cache,
                    arches=arches, fmt=fmt, compression=compression,
                    locked=locked in ("1", "yes", "true"))


def usable_dir(variable: str, path: Path) -> Path:
    """`path`, created if missing, once a file can be made in it: a directory the build cannot
    write to (/proc/nope, a read-only mount, a file) is reported here, once, naming the
    variable, instead of as an OSError in whichever task first writes there."""
    if path.exists() and not path.is_dir():
        raise BakeryError(f"{variable}={path}: is not a directory",
                          f"point {variable} at a writable directory, or unset it")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".bakery-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise BakeryError(f"{variable}={path}: not a directory the bakery can write to: "
                          f"{e.strerror or e}",
                          f"point {variable} at a writable directory, or unset it") from None
    return path
