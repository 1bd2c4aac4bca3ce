"""torcx profiles and stores: which images a profile names, and where their archives are
(a store directory, or a torcx package list of paths and URLs checked against its hashes)."""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sysext_bakery.errors import BakeryError
from sysext_bakery.inputs import brief, read_json
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


_TORCX_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def _load_json(path: Path, what: str) -> dict:
    data = read_json(path, str(path), what)
    if not isinstance(data, dict):
        raise BakeryError(f"{path}: the {what} is not a JSON object")
    return data


def load_profile(path: Path) -> list[tuple[str, str, str | None]]:
    """(name, reference, format or None) of each image of a torcx profile, in order."""
    data = _load_json(path, "torcx profile")
    if data.get("kind") not in PROFILE_KINDS:
        raise BakeryError(f"{path}: kind is {brief(data.get('kind'))}, not a torcx profile "
                          f"({' or '.join(PROFILE_KINDS)})",
                          "pass the profile JSON, e.g. /etc/torcx/profiles/<name>.json")
    value = data.get("value")
    images = value.get("images") if isinstance(value, dict) else None
    if not isinstance(images, list):
        raise BakeryError(f"{path}: value.images: missing or not a list")
    entries: list[tuple[str, str, str | None]] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(images):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) and entry[k]
                                                  for k in ("name", "reference")):
            raise BakeryError(f"{path}: value.images[{i}]: needs string fields name and reference")
        for key in ("name", "reference"):
            if not _TORCX_WORD.fullmatch(entry[key]):   # both become parts of a file name
                raise BakeryError(f"{path}: value.images[{i}].{key}: {brief(entry[key])} is not "
                                  "a torcx image name or reference (letters, digits, . _ + -)")
        name = entry["name"]
        if name in seen:
            raise BakeryError(f"{path}: value.images[{i}]: image {brief(name)} is already listed as "
                              f"value.images[{seen[name]}]",
                              "torcx applies one reference per image and a sysext name is "
                              "unique: keep one entry per image")
        seen[name] = i
        fmt = entry.get("format")
        if fmt not in (None, "tgz", "squashfs"):
            raise BakeryError(f"{path}: value.images[{i}].format: {brief(fmt)} is not tgz or squashfs")
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
        raise BakeryError(f"{path}: kind is {brief(data.get('kind'))}, not {PACKAGE_LIST_KIND!r}",
                          "pass the torcx_manifest.json that lists image URLs and hashes")
    result = {}
    value = data.get("value")
    packages = value.get("packages") if isinstance(value, dict) else None
    if not isinstance(packages, list):
        raise BakeryError(f"{path}: value.packages: missing or not a list")
    for p, package in enumerate(packages):
        versions = package.get("versions") if isinstance(package, dict) else None
        if not isinstance(versions, list) or not isinstance(package.get("name"), str):
            raise BakeryError(f"{path}: value.packages[{p}]: needs a name and a list of versions")
        for v, version in enumerate(versions):
            where = f"{path}: value.packages[{p}].versions[{v}]"
            if not isinstance(version, dict) or not isinstance(version.get("version"), str) or \
                    not isinstance(version.get("hash"), str) or \
                    not isinstance(version.get("locations"), list):
                raise BakeryError(f"{where}: needs a version, a hash and a list of locations")
            if not all(isinstance(loc, dict) and all(isinstance(x, str) for x in loc.values())
                       for loc in version["locations"]):
                raise BakeryError(f"{where}.locations: each location is an object of strings "
                                  "(path or url)")
            result[package.get("name"), version.get("version")] = (version["hash"],
                                                                   version["locations"])
    return result


def _from_package_list(name: str, reference: str, entry: tuple[str, list[dict]],
                       stores: Sequence[Path], origin: Path, cache: Path) -> Path | None:
    from sysext_bakery.build.fetch import fetch

    digest, locations = entry
    algorithm, _, expected = digest.partition("-")
    if algorithm not in ("sha256", "sha512") or not expected:
        raise BakeryError(f"{origin}: {name}:{reference}: hash {brief(digest)} is not sha256-<hex> or "
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

