"""extension_release: the one rule for the file's path, its text and its parsing."""
from __future__ import annotations

from sysext_bakery.model import extension_release
from sysext_bakery.model.image import Image


def test_path_rule() -> None:
    assert extension_release.path("docker") == "usr/lib/extension-release.d/extension-release.docker"
    assert extension_release.is_release_path("usr/lib/extension-release.d/extension-release.x")
    assert not extension_release.is_release_path("usr/lib/extension-release.d/sub/extension-release.x")
    assert not extension_release.is_release_path("usr/lib/os-release")


def test_render_is_read_back_by_parse() -> None:
    image = Image(name="docker", version="24.0.9", arch="arm64", sources=(), os_id="flatcar",
                  sysext_level="1.0")
    text = extension_release.render(image, ships_units=True)
    assert extension_release.parse(text) == {"ID": "flatcar", "SYSEXT_LEVEL": "1.0",
                                             "ARCHITECTURE": "arm64",
                                             "SYSEXT_VERSION_ID": "24.0.9",
                                             "EXTENSION_RELOAD_MANAGER": "1"}


def test_parse_release_handles_quoting_and_comments() -> None:
    text = "# c\n\nID=flatcar\nNAME='Flatcar Linux'\nPRETTY=\"a \\\"quoted\\\" \\$x\"\nbroken line\n"
    assert extension_release.parse(text) == {"ID": "flatcar", "NAME": "Flatcar Linux",
                                             "PRETTY": 'a "quoted" $x'}
