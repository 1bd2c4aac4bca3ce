"""Pinning one version of a recipe: per arch, each source's URL (from the recipe) and sha256
(from upstream's checksum file when the recipe declares `checksum-url`; downloaded and verified
as a build does for signed sums, sha512 and GitHub digests; else by downloading and hashing:
trust on first use, at update time, reviewed in the commit). And noticing when
a pin no longer matches its recipe (a companion `version` or URL template was edited)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sysext_bakery.model.image import Source
from sysext_bakery.recipe.drift import drift
from sysext_bakery.recipe.lock import Pin
from sysext_bakery.recipe.load import Recipe, resolve_image

Sources = list[dict[str, str]]


@dataclass
class Hasher:
    """The network side of pinning: checksum files (each read once per run, runc's serves
    both arches) and downloads into the build cache, so a later build fetches nothing."""
    cache: Path
    mirror: str | None
    tofu: list[tuple[str, str]] = field(default_factory=list)     # (url, sha256) hashed here
    _sums: dict[str, str] = field(default_factory=dict)

    def sha256(self, source: Source) -> str:
        from sysext_bakery.build.fetch import fetch, fetch_text, parse_checksum
        url, checksum_url = source.url, source.checksum_url
        if checksum_url and source.checksum == "sha256" and not source.signature_url:
            if checksum_url not in self._sums:
                self._sums[checksum_url] = fetch_text(checksum_url, mirror=self.mirror)
            return parse_checksum(self._sums[checksum_url], url, checksum_url)
        # a signed sums file, a sha512 or GitHub's digest: verified the way a build verifies
        # (a sha512 only tells the sha256 once the file is here)
        self.cache.mkdir(parents=True, exist_ok=True)
        got = fetch(url, None, self.cache, checksum_url=checksum_url, checksum=source.checksum,
                    signature_url=source.signature_url, signature_key=source.signature_key,
                    mirror=self.mirror)
        if got.first_use:
            self.tofu.append((url, got.sha256))
        return got.sha256


def pin_version(recipe: Recipe, version: str, sha256: Callable[[Source], str]
                ) -> dict[str, Sources]:
    """arch -> sources with url and sha256, for every arch of the recipe."""
    return {arch: [{"url": s.url, "sha256": sha256(s)}
                   for s in resolve_image(recipe, version, arch, None).sources]
            for arch in recipe.arches}


def why_repin(recipe: Recipe, pin: Pin) -> str | None:
    """Why a pinned version must be pinned again, or None when it matches the recipe: an
    arch without an entry, a URL or a sha256 (pinned by hand), or a URL the recipe no longer
    renders (recipe/drift.py: the rule a build warns or, locked, refuses by)."""
    for arch in recipe.arches:
        pinned = pin.arches.get(arch)
        if pinned is None:
            return f"{arch} has no sha256 pinned yet"
        if found := drift(recipe, pin.version, arch, pinned):
            return f"{recipe.shown} changed ({arch}: {found.detail()})"
        if any(not s.get("url") for s in pinned):
            return f"{arch} has a source without a pinned URL"
        if any(not s.get("sha256") for s in pinned):
            return f"{arch} has no sha256 pinned yet"
    return None
