"""The lock: parsing with errors that name the key, and trust-on-first-use recording."""
from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sysext_bakery.recipe import lock
from sysext_bakery.errors import BakeryError


def test_load_pins(tmp_path: Path) -> None:
    path = tmp_path / "lock.toml"
    path.write_text('[docker."24.0.9".x86-64]\nsources = [{ url = "https://a/b.tgz", sha256 = "abababababababababababababababababababababababababababababababab" }]\n'
                    '[wasmtime."29.0.1"]\n')
    pins = lock.load(path)
    assert pins["docker"] == [lock.Pin("docker", "24.0.9",
                                       {"x86-64": [{"url": "https://a/b.tgz", "sha256": "ab" * 32}]})]
    assert pins["wasmtime"] == [lock.Pin("wasmtime", "29.0.1", {})]
    assert lock.load(tmp_path / "missing.toml") == {}


@pytest.mark.parametrize("text, message", [
    ('[docker."24.0-rc1"]\n', "lock.toml: docker.24.0-rc1: version '24.0-rc1' must not contain '-'"),
    ('[docker."24.0.9".x86-64]\nsources = "x"\n', "lock.toml: docker.24.0.9.x86-64: expected sources = ["),
    ('[docker."24.0.9".x86-64]\nsources = [{ url = "u", sha = "x" }]\n',
     "lock.toml: docker.24.0.9.x86-64: expected sources = ["),
    ('docker = 1\n', "lock.toml: docker: expected a table of versions"),
    ('[docker."24.0.9".x86_64]\nsources = []\n', "lock.toml: docker.24.0.9: unknown arch 'x86_64'"),
    ('[docker."24.0.9".x86-64]\nsources = [{ url = 1 }]\n', "lock.toml: docker.24.0.9.x86-64: expected"),
    ('[docker\n', "lock.toml: not valid TOML"),
])
def test_bad_lock_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "lock.toml"
    path.write_text(text)
    with pytest.raises(BakeryError) as e:
        lock.load(path)
    assert message in str(e.value)


def test_record_keeps_other_entries_and_is_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "lock.toml"
    path.write_text('[docker."24.0.9"]\n\n[wasmtime."29.0.1"]\n')
    entry = [{"url": "https://a/b.tgz", "sha256": "cd" * 32}]
    lock.record_sha256(path, "docker", "24.0.9", "arm64", entry)
    pins = lock.load(path)
    assert pins["docker"][0].arches == {"arm64": entry}
    assert pins["wasmtime"][0].version == "29.0.1"
    assert path.read_text().startswith(lock.HEADER)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["lock.toml"]


@pytest.mark.parametrize("entry, says", [
    ('url = "https://a/b.tgz\\n", sha256 = "%s"' % ("ab" * 32), "sources[0].url"),
    ('url = "http://a/b.tgz"', "must start with https://"),
    ('url = "https://a/b.tgz", sha256 = "AB"', "sources[0].sha256: expected 64"),
])
def test_a_bad_pinned_url_or_sha256_is_named(tmp_path: Path, entry: str, says: str) -> None:
    path = tmp_path / "lock.toml"
    path.write_text(f'[docker."24.0.9".x86-64]\nsources = [{{ {entry} }}]\n')
    with pytest.raises(BakeryError) as err:
        lock.load(path, "release/lock.toml")
    assert "release/lock.toml: docker.24.0.9.x86-64" in str(err.value) and says in str(err.value)
