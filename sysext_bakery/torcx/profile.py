"""torcx profiles and stores: which images a profile names, and where their archives are
(a store directory, or a torcx package list of paths and URLs checked against its hashes)."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sysext_bakery.errors import BakeryError
from sysext_bakery.files import file_digest

PROFILE_KINDS = ("profile-manifest-v0", "profile-manifest-v1")
PACKAGE_LIST_KIND = "torcx-package-list-v0"
ARCHIVE_SUFFIXES = (".torcx.tgz", ".torcx.squashfs")

HINT_ARCHIVE = ("a torcx image is `<name>:<reference>.torcx.tgz` (or `.torcx.squashfs`) holding "
                "bin/, lib/ and .torcx/manifest.json; pass that file, or --profile with --store")


@dataclass(frozen=True)
class TorcxImage:
    """One torcx image to convert: its name and reference, and the archive holding it."""
    name: str
    reference: str
    archive: Path


def parse_archive_name(path: Path) -> tuple[str, str]:
    """(name, reference) from `<name>:<reference>.torcx.tgz|squashfs`."""
    for suffix in ARCHIVE_SUFFIXES:
        if path.name.endswith(suffix):
            name, sep, reference = path.name[:-len(suffix)].partition(":")
            if sep and name and reference:
                return name, reference
    raise BakeryError(f"{path}: not a torcx image file name (expected <name>:<reference>"
                      f"{' or '.join(ARCHIVE_SUFFIXES)})", HINT_ARCHIVE)


def _load_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise BakeryError(f"{path}: cannot read the {what}: {e.strerror}") from None
    except ValueError as e:
        raise BakeryError(f"{path}: the {what} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BakeryError(f"{path}: the {what} is not a JSON object")
    return data


def load_profile(path: Path) -> list[tuple[str, str, str | None]]:
    """(name, reference, format or None) of each image of a torcx profile, in order."""
    data = _load_json(path, "torcx profile")
    if data.get("kind") not in PROFILE_KINDS:
        raise BakeryError(f"{path}: kind is {data.get('kind')!r}, not a torcx profile "
                          f"({' or '.join(PROFILE_KINDS)})",
                          "pass the profile JSON, e.g. /etc/torcx/profiles/<name>.json")
    images = (data.get("value") or {}).get("images")
    if not isinstance(images, list):
        raise BakeryError(f"{path}: value.images: missing or not a list")
    entries: list[tuple[str, str, str | None]] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(images):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) and entry[k]
                                                  for k in ("name", "reference")):
            raise BakeryError(f"{path}: value.images[{i}]: needs string fields name and reference")
        name = entry["name"]
        if name in seen:
            raise BakeryError(f"{path}: value.images[{i}]: image {name!r} is already listed as "
                              f"value.images[{seen[name]}]",
                              "torcx applies one reference per image and a sysext name is "
                              "unique: keep one entry per image")
        seen[name] = i
        fmt = entry.get("format")
        if fmt not in (None, "tgz", "squashfs"):
            raise BakeryError(f"{path}: value.images[{i}].format: {fmt!r} is not tgz or squashfs")
        entries.append((name, entry["reference"], fmt))
    if not entries:
        raise BakeryError(f"{path}: the profile lists no images", "nothing to convert")
    return entries


def find_in_stores(name: str, reference: str, fmt: str | None,
                   stores: Sequence[Path]) -> Path | None:
    """The archive of an image in the first store that holds it."""
    suffixes = [s for s in ARCHIVE_SUFFIXES if fmt is None or s.endswith(fmt)]
    for store in stores:
        for suffix in suffixes:
            candidate = store / f"{name}:{reference}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def locate_images(profile: Path, stores: Sequence[Path], package_list: Path | None,
                  cache: Path) -> list[TorcxImage]:
    """Every image of a profile with its archive, from the stores or, failing that, from a
    torcx package list (local paths or URLs, verified against the list's hash)."""
    for store in stores:
        if not store.is_dir():
            raise BakeryError(f"{store}: torcx store directory does not exist",
                              "pass directories such as /usr/share/torcx/store/<os-version>/ "
                              "or /var/lib/torcx/store/")
    packages = load_package_list(package_list) if package_list else {}
    found = []
    for name, reference, fmt in load_profile(profile):
        archive = find_in_stores(name, reference, fmt, stores)
        if archive is None and (name, reference) in packages:
            archive = _from_package_list(name, reference, packages[name, reference], stores,
                                         package_list, cache)
        if archive is None:
            looked = ", ".join(str(s) for s in stores) or "no --store given"
            raise BakeryError(f"{profile}: image {name}:{reference} is in none of the stores "
                              f"({looked})" + (f" nor in {package_list}" if package_list else ""),
                              f"copy {name}:{reference}.torcx.tgz from the host's torcx store "
                              "and pass its directory with --store")
        found.append(TorcxImage(name, reference, archive))
    return found


def load_package_list(path: Path) -> dict[tuple[str, str], tuple[str, list[dict]]]:
    """(name, version) -> (hash, locations) from a torcx package list (torcx_manifest.json)."""
    data = _load_json(path, "torcx package list")
    if data.get("kind") != PACKAGE_LIST_KIND:
        raise BakeryError(f"{path}: kind is {data.get('kind')!r}, not {PACKAGE_LIST_KIND!r}",
                          "pass the torcx_manifest.json that lists image URLs and hashes")
    result = {}
    for p, package in enumerate((data.get("value") or {}).get("packages") or []):
        for v, version in enumerate(package.get("versions") or []):
            where = f"{path}: value.packages[{p}].versions[{v}]"
            if not isinstance(version.get("hash"), str) or not isinstance(version.get("locations"), list):
                raise BakeryError(f"{where}: needs a hash and a list of locations")
            result[package.get("name"), version.get("version")] = (version["hash"],
                                                                   version["locations"])
    return result


def _from_package_list(name: str, reference: str, entry: tuple[str, list[dict]],
                       stores: Sequence[Path], origin: Path, cache: Path) -> Path | None:
    from sysext_bakery.build.fetch import fetch

    digest, locations = entry
    algorithm, _, expected = digest.partition("-")
    if algorithm not in ("sha256", "sha512") or not expected:
        raise BakeryError(f"{origin}: {name}:{reference}: hash {digest!r} is not sha256-<hex> or "
                          "sha512-<hex>")
    for location in locations:
        if location.get("path"):
            # Paths name the host's store; the copy given here is found by its file name.
            archive = find_in_stores(name, reference, None, stores) or \
                next((s / Path(location["path"]).name for s in stores
                      if (s / Path(location["path"]).name).is_file()), None)
        elif location.get("url"):
            archive = fetch(location["url"], None, cache, mirror=os.environ.get("BAKERY_MIRROR")).path
        else:
            continue
        if archive is not None:
            actual = file_digest(archive, algorithm)
            if actual != expected.lower():
                raise BakeryError(f"{archive}: {algorithm} is {actual}, {origin} says {expected}",
                                  "the archive is corrupt or not the one listed; fetch it again")
            return archive
    return None

