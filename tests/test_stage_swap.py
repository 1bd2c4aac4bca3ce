"""The fetch's proof that a download is untouched (actions.fetch_image records what stage may
skip hashing again) is taken from the file it hashed or wrote, not looked up by name
afterwards: a cache entry swapped in between is hashed by the stage, not packed unchecked."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from sysext_bakery.build import actions, fetch as fetch_module, tidy
from test_stage_hashing import hashed_files, image_of


def test_an_entry_swapped_right_after_the_fetch_hashed_it_is_hashed_again(project, monkeypatch,
                                                                        capsys) -> None:
    image, settings, paths = image_of(project)
    real = fetch_module.fetch

    def fetch_then_swap(url, sha256, cache, **kwargs):
        got = real(url, sha256, cache, **kwargs)
        # another user of a shared cache renames other bytes over the entry
        other = cache / "planted"
        other.write_bytes(b"not what the lock pins")
        os.replace(other, got.path)
        return got
    monkeypatch.setattr(tidy, "_run", "run-1")
    for cold in (True, False):          # downloaded now, then found in the cache
        monkeypatch.setattr(fetch_module, "fetch", fetch_then_swap)
        actions.fetch_image(image, settings, paths)
        monkeypatch.setattr(fetch_module, "fetch", real)
        calls = hashed_files(monkeypatch)
        actions.stage_image(image, settings, paths)
        assert calls, cold
        assert "removed it, fetching again" in capsys.readouterr().err
        entry = settings.download_cache / calls[0]
        assert hashlib.sha256(entry.read_bytes()).hexdigest() == calls[0]
        assert Path(paths.tree, "usr/bin/wasmtime").is_file()
