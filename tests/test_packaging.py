"""The installed package holds every module: a folder without __init__.py works from a
checkout (editable install) but setuptools' find leaves it out of a real install."""
from __future__ import annotations

from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parent.parent


def test_every_folder_with_modules_is_a_package_setuptools_finds():
    found = set(find_packages(str(REPO), include=["sysext_bakery*"]))
    folders = {".".join(p.parent.relative_to(REPO).parts)
               for p in (REPO / "sysext_bakery").rglob("*.py") if "__pycache__" not in p.parts}
    assert folders <= found, f"not installed: {sorted(folders - found)} (add an __init__.py)"
