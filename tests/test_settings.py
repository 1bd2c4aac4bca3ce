"""Settings read from the environment, with errors that name the variable."""
from __future__ import annotations

from pathlib import Path

import pytest

from sysext_bakery.errors import BakeryError
from sysext_bakery.settings import settings_from_env


def test_settings_from_env(tmp_path: Path) -> None:
    s = settings_from_env(Path("/p"), {"BAKERY_MIRROR": "/srv/m", "BAKERY_ARCH": "arm64, x86-64",
                                       "BAKERY_FORMAT": "erofs", "BAKERY_COMPRESSION": "lz4",
                                       "BAKERY_CACHE": str(tmp_path / "c")})
    assert (s.mirror, s.arches, s.fmt, s.compression) == ("/srv/m", ("arm64", "x86-64"), "erofs", "lz4")
    assert s.download_cache == tmp_path / "c" and s.images == Path("/p/build/images")
    assert (tmp_path / "c").is_dir() and list((tmp_path / "c").iterdir()) == []   # probe removed


@pytest.mark.parametrize("env, message", [
    ({"BAKERY_ARCH": "amd64"}, "BAKERY_ARCH: unknown arch 'amd64'"),
    ({"BAKERY_FORMAT": "ext4"}, "BAKERY_FORMAT: unknown format 'ext4'"),
    ({"BAKERY_COMPRESSION": "lz4hc"}, "BAKERY_COMPRESSION: 'lz4hc' is not available for squashfs"),
    ({"BAKERY_CACHE": "/proc/nope"}, "BAKERY_CACHE=/proc/nope: not a directory the bakery can write to"),
    ({"BAKERY_CACHE": "/proc/self/status/x"}, "BAKERY_CACHE=/proc/self/status/x: not a directory"),
    ({"BAKERY_CACHE": "/etc/hostname"}, "BAKERY_CACHE=/etc/hostname: is not a directory"),
])
def test_settings_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(BakeryError, match=message):
        settings_from_env(Path("/p"), env)
