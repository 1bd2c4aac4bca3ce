"""The whole chain with the real programs: a recipe whose versions carry `+k3s1` suffixes in
minor streams is built with doit, released signed, installed by the real systemd-sysupdate
through the 1.32 stream transfer with Verify=yes, merged by the real systemd-sysext, and run."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import tomli_w

from conftest import Project
from sysext import make_root, requires_sysext, run_merged
from sysupdate import gpg_key, serve, sysupdate  # noqa: F401
from upstream import MirrorServer

pytestmark = pytest.mark.root

VERSIONS = ("1.32.2+k3s1", "1.32.3+k3s1", "1.33.0+k3s1")
HOST = "downloads.example.org"
RECIPE = f"""\
description = "A k3s-like tool, one static binary per version"
homepage = "https://{HOST}/"
arches = ["x86-64"]
streams = "minor"

[[sources]]
url = "https://{HOST}/kubelike/v{{version}}/kubelike-{{arch}}"
install = {{ "kubelike-*" = {{ to = "/usr/bin/kubelike", mode = "0755" }} }}

[arch-names]
x86-64 = "amd64"
"""


def upstream_tree(root: Path) -> dict[str, dict]:
    """The binaries as upstream would publish them, and the lock pinning each one."""
    lock: dict[str, dict] = {"kubelike": {}}
    for version in VERSIONS:
        path = root / HOST / "kubelike" / f"v{version}" / "kubelike-amd64"
        path.parent.mkdir(parents=True)
        path.write_text(f"#!/bin/sh\necho kubelike {version}\n")
        url = f"https://{HOST}/kubelike/v{version}/kubelike-amd64"
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        lock["kubelike"][version] = {"x86-64": {"sources": [{"url": url, "sha256": sha}]}}
    return lock


def build_and_release(tmp_path: Path, key, url: str, dest: Path) -> tuple[Project, str]:
    """The bakery alone in a project: build every pinned version, release signed to `dest`
    (served at `url`). Returns the project and the release's stderr."""
    mirror = MirrorServer(tmp_path / "upstream")
    try:
        root = tmp_path / "bakery"
        root.mkdir()
        project = Project(root, mirror, upstream_tree(tmp_path / "upstream"))
        for old in (root / "recipes").glob("*.toml"):
            old.unlink()
        (root / "recipes/kubelike.toml").write_text(RECIPE)
        project.doit("build")
        (root / "release/release.toml").write_text(tomli_w.dumps(
            {"base_url": url, "instances_max": 3, "signing": {"fingerprint": key.fingerprint}}))
        done = project.doit("release", "--dest", str(dest),
                            env={"BAKERY_SIGNING_KEY": key.armored_secret})
    finally:
        mirror.close()
    return project, done.stderr


def stream_update(su, tmp_path: Path, dest: Path):
    """A host that installed only the 1.32 stream transfer runs `systemd-sysupdate update`."""
    host = tmp_path / "host"
    (host / "opt/extensions/kubelike").mkdir(parents=True)
    (host / "etc/extensions").mkdir(parents=True)
    defs = tmp_path / "defs"
    defs.mkdir()
    shutil.copyfile(dest / "kubelike-1.32.conf", defs / "kubelike-1.32.conf")
    return host, su.run(defs, host, "update", keyring=dest / "bakery-signing-key.gpg")


@requires_sysext
def test_build_release_update_through_the_stream_and_merge(tmp_path, sysupdate, gpg_key):
    dest = tmp_path / "pub"
    dest.mkdir()
    with serve(dest) as url:
        project, stderr = build_and_release(tmp_path, gpg_key, url, dest)
        assert sorted(p.name for p in project.images.glob("*.raw")) == [
            f"kubelike-{v}-x86-64.raw" for v in VERSIONS]
        assert "plain http" in stderr          # signed, so allowed with a warning
        stream_conf = (dest / "kubelike-1.32.conf").read_text()
        assert "Verify=yes" in stream_conf and "MatchPattern=kubelike-1.32.@v-%a.raw" in stream_conf
        host, proc = stream_update(sysupdate, tmp_path, dest)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    link = host / "etc/extensions/kubelike.raw"
    installed = (link.parent / link.readlink()).resolve()
    # the newest of the 1.32 stream, not 1.33.0: the bakery and sysupdate agree on the order
    assert installed.name == "kubelike-1.32.3+k3s1-x86-64.raw"
    assert installed.read_bytes() == (project.images / installed.name).read_bytes()

    merged = run_merged(make_root(tmp_path / "sysext"), {"kubelike": installed},
                        '"$ROOT/usr/bin/kubelike"')
    assert merged.returncode == 0, merged.stderr
    assert merged.stdout.strip() == "kubelike 1.32.3+k3s1"


def test_a_tampered_manifest_stops_the_stream_update(tmp_path, sysupdate, gpg_key):
    """The same chain bites: one changed byte in the signed SHA256SUMS and nothing installs."""
    dest = tmp_path / "pub"
    dest.mkdir()
    with serve(dest) as url:
        build_and_release(tmp_path, gpg_key, url, dest)
        sums = dest / "SHA256SUMS"
        sums.write_bytes(sums.read_bytes().replace(b"kubelike-1.32.3", b"kubelike-1.32.4"))
        host, proc = stream_update(sysupdate, tmp_path, dest)
    assert proc.returncode != 0
    assert not list((host / "opt/extensions/kubelike").glob("*.raw"))
