"""The catalogue table of docs/recipes.md, rendered from recipes/ so it cannot go stale:
per recipe what it installs, where from, how each download is verified, arches, streams
and units.

It reads the recipe files' TOML rather than loaded recipes, so the table also lists a
recipe the loader refuses (its problems are reported by `doit list` and the tests).
"""
from __future__ import annotations

import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path", ".mount", ".target")
UNIT_DIR = "usr/lib/systemd/system"


def source_label(url: str) -> str:
    """`GitHub k3s-io/k3s` for release assets, else the host."""
    parts = urlsplit(url)
    path = parts.path.strip("/").split("/")
    if parts.hostname == "github.com" and len(path) >= 2:
        return f"GitHub {path[0]}/{path[1]}"
    return parts.hostname or url


def verification(source: dict) -> str:
    """How a download is verified, in a few words."""
    check = source.get("checksum", "sha256")
    if check == "github-digest":
        return "GitHub asset digest"
    if "checksum-url" not in source:
        return f"**trust on first use**: {source.get('no-checksum', 'reason not given')}"
    template = source["checksum-url"]
    url_name = PurePosixPath(urlsplit(source["url"]).path).name
    file = PurePosixPath(urlsplit(template.replace("{url}", source["url"])).path).name
    per_file = template.startswith("{url}") or url_name in file
    kind = f"{check} of the file" if per_file else f"{check} list `{file}`"
    if "signature-url" in source:
        kind += f", gpg-signed (`{source.get('signature-key', '?')}`)"
    return kind


def _units(name: str, data: dict, recipes: Path) -> str:
    upheld = [u for units in data.get("units", {}).get("upholds", {}).values() for u in units]
    shipped: set[str] = set()
    unit_dir = recipes / name / "files" / UNIT_DIR
    if unit_dir.is_dir():
        shipped |= {p.name for p in unit_dir.iterdir() if p.name.endswith(UNIT_SUFFIXES)}
    for source in data.get("sources", []):
        for entry in source.get("install", {}).values():
            dest = entry if isinstance(entry, str) else entry.get("to", "")
            if dest.startswith(f"/{UNIT_DIR}/") and dest.endswith(UNIT_SUFFIXES):
                shipped.add(PurePosixPath(dest).name)
    others = sorted(shipped - set(upheld))
    text = ", ".join(f"`{u}`" for u in upheld)
    if others:
        text += ("; " if text else "") + "not upheld: " + ", ".join(f"`{u}`" for u in others)
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def catalogue_rows(recipes: Path) -> list[list[str]]:
    rows = []
    for path in sorted(recipes.glob("*.toml")):
        with path.open("rb") as f:
            data = tomllib.load(f)
        sources = data.get("sources", [])
        origins = list(dict.fromkeys(
            source_label(s["url"]) + (f" ({s['version']})" if "version" in s else "")
            for s in sources))
        checks = list(dict.fromkeys(verification(s) for s in sources))
        rows.append([f"`{path.stem}`", data.get("description", ""), ", ".join(origins),
                     "; ".join(checks), ", ".join(data.get("arches", [])),
                     data.get("streams", "none"), _units(path.stem, data, recipes)])
    return rows


def tofu_recipes(recipes: Path) -> list[str]:
    """Recipes with a source trusted on first use."""
    return [row[0].strip("`") for row in catalogue_rows(recipes) if "trust on first use" in row[3]]


def catalogue_markdown(recipes: Path) -> str:
    head = ["recipe", "installs", "source", "verified by", "arches", "streams", "units (upheld)"]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in catalogue_rows(recipes)]
    tofu = tofu_recipes(recipes)
    out += ["", f"{len(tofu)} of {len(out) - 2} recipes rely on trust on first use for at least one "
            "download" + (": " + ", ".join(f"`{t}`" for t in tofu) + "." if tofu else "."),
            "Their sha256 is recorded in the lock by the first online `doit update` and reviewed "
            "in its diff; every later download must match it.", ""]
    return "\n".join(out)
