"""The extension-release file: where it lives in an image, its text, and how it is read.

systemd-sysext merges an image only when it holds
`usr/lib/extension-release.d/extension-release.<name>` (os-release syntax) for its own name.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sysext_bakery.model.image import Image

RELEASE_DIR = "usr/lib/extension-release.d"
FILE_PREFIX = "extension-release."
RELEASE_PREFIX = f"{RELEASE_DIR}/{FILE_PREFIX}"


def file_name(name: str) -> str:
    """The file's name inside RELEASE_DIR for image `name`."""
    return FILE_PREFIX + name


def path(name: str) -> str:
    """The file's path relative to the image root for image `name`."""
    return RELEASE_PREFIX + name


def is_release_path(rel: str) -> bool:
    """Whether `rel` (relative to the image root) is an extension-release file of any name."""
    return rel.startswith(RELEASE_PREFIX) and "/" not in rel[len(RELEASE_PREFIX):]


def render(image: Image, ships_units: bool = False) -> str:
    """The text of the image's extension-release file; `ships_units` decides the reload flag
    when the image leaves it open (None)."""
    lines = [f"ID={image.os_id}"]
    if image.sysext_level is not None:
        lines.append(f"SYSEXT_LEVEL={image.sysext_level}")
    lines += [f"ARCHITECTURE={image.arch}", f"SYSEXT_VERSION_ID={image.version}"]
    if image.reload_manager or (image.reload_manager is None and ships_units):
        lines.append("EXTENSION_RELOAD_MANAGER=1")
    return "\n".join(lines) + "\n"


def parse(text: str) -> dict[str, str]:
    """os-release syntax: KEY=VALUE lines, optional shell quoting, # comments."""
    fields = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = re.sub(r'\\([\\"$`])', r"\1", value)
        fields[key.strip()] = value
    return fields
