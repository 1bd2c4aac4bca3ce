"""When a pin no longer matches its recipe: the lock pins URLs its recipe no longer renders
(a companion `version` or a URL template was edited since). One rule for both sides:
`doit update` re-pins such a version (update/pins.py), and a build, where the pinned URL
wins, warns about it or, locked, refuses the version (plan.py)."""
from __future__ import annotations

from dataclasses import dataclass

from sysext_bakery.model.url import redact
from sysext_bakery.recipe.load import Recipe, applicable_sources, source_url


@dataclass(frozen=True)
class Drift:
    """One arch of a pinned version: the URLs the lock pins and those the recipe renders."""
    arch: str
    pinned: tuple[str, ...]
    recipe: tuple[str, ...]

    @property
    def changes(self) -> list[tuple[str, str]]:
        """(pinned, recipe) of each source whose URL differs, for messages: credentials in a
        pinned URL (a private mirror's) are redacted like in every other message."""
        return [(redact(old), redact(new)) for old, new in zip(self.pinned, self.recipe)
                if old != new]

    def detail(self) -> str:
        return ("; ".join(f"{old} -> {new}" for old, new in self.changes)
                or f"{len(self.pinned)} sources pinned, {len(self.recipe)} in the recipe")


def recipe_urls(recipe: Recipe, version: str, arch: str) -> tuple[str, ...]:
    """Each source's URL for one image, as the recipe renders them today (what
    resolve_image takes when the lock pins no URL; only the URLs: a build runs this for
    every pinned image on every graph load)."""
    return tuple(source_url(recipe, tpl, version, arch)
                 for tpl in applicable_sources(recipe, version, arch))


def drift(recipe: Recipe, version: str, arch: str,
          pinned: list[dict[str, str]] | None) -> Drift | None:
    """The drift of one arch's pinned sources, or None when they match the recipe. An arch
    the lock does not list, or a source entry without a URL, takes its URL from the recipe:
    nothing there can be stale."""
    if pinned is None:
        return None
    want = recipe_urls(recipe, version, arch)
    if len(pinned) == len(want):
        have = tuple(s.get("url") or url for s, url in zip(pinned, want))
    else:
        have = tuple(s.get("url") or "?" for s in pinned)
    return None if have == want else Drift(arch, have, want)
