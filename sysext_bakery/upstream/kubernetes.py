"""`kubernetes-schedule`: the release schedule the Kubernetes website publishes
(`data/releases/schedule.yaml`). Each entry of `schedules` is a supported minor
(`release: "1.32"`) with its shipped patches under `previousPatches` (`release: 1.32.2`);
`next` is only planned. The result is the newest shipped patch of every supported minor.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any


from sysext_bakery.errors import BakeryError
from sysext_bakery.model.version import version_key
from .base import RECIPE_HINT, Discovery, Get, Skipped, collect, tag_version, text_of

if TYPE_CHECKING:
    from sysext_bakery.recipe.load import Upstream

SCHEDULE = "https://raw.githubusercontent.com/kubernetes/website/main/data/releases/schedule.yaml"


def discover(up: "Upstream", get: Get, env: Mapping[str, str]) -> Discovery:
    url = up.url or SCHEDULE
    text = text_of(get(url, {"Accept": "application/yaml, text/plain, */*"}))
    import yaml   # only `doit update` reads YAML; `doit list` should not pay for it
    try:
        # BaseLoader keeps every scalar a string: the file has unquoted `release: 1.30`,
        # which a resolving loader would turn into the float 1.3
        doc = yaml.load(text, Loader=yaml.BaseLoader)
    except yaml.YAMLError as e:
        raise BakeryError(f"{url}: not valid YAML: {e}", RECIPE_HINT) from None
    schedules = doc.get("schedules") if isinstance(doc, dict) else None
    if not isinstance(schedules, list):
        raise BakeryError(f"{url}: no `schedules` list; not the Kubernetes release schedule?",
                          RECIPE_HINT)
    found: list[str | Skipped | None] = []
    for entry in schedules:
        minor = entry.get("release") if isinstance(entry, dict) else None
        if not isinstance(minor, str):
            raise BakeryError(f"{url}: a schedule without `release`", RECIPE_HINT)
        patches = [p["release"] for p in _list(entry.get("previousPatches"))
                   if isinstance(p, dict) and isinstance(p.get("release"), str)]
        ours = [p for p in patches if p.removeprefix("v").startswith(minor.removeprefix("v") + ".")]
        found += [Skipped(p, f"listed under minor {minor}") for p in patches if p not in ours]
        mapped = [tag_version(p, up.pattern, up.prefix) for p in ours]
        found += [m for m in mapped if isinstance(m, Skipped)]
        good = [m for m in mapped if isinstance(m, str)]
        if good:
            found.append(max(good, key=version_key))
    return collect(found, url)


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []
