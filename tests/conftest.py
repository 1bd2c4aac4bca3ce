"""Shared fixtures: upstream-shaped files served from loopback, throw-away bakery projects
with a test lock, and a runner for the real doit CLI."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from upstream import (MirrorServer, Upstream, containerd_url, docker_url, populate, runc_url,
                      wasmtime_url)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Upstream:
    return populate(tmp_path_factory.mktemp("upstream"))


@pytest.fixture(scope="session")
def mirror(upstream: Upstream):
    server = MirrorServer(upstream.root)
    yield server
    server.close()


def pinned(upstream: Upstream, *urls: str) -> dict:
    return {"sources": [{"url": u, "sha256": upstream.sha256[u]} for u in urls]}


def lock_for(upstream: Upstream) -> dict:
    """The test lock: every fixture pinned with its sha256 (containerd verified upstream-style)."""
    arches = ("x86-64", "arm64")
    return {
        "docker": {v: {a: pinned(upstream, docker_url(a, v)) for a in arches}
                   for v in ("24.0.8", "24.0.9", "25.0.0")},
        "containerd": {"1.7.27": {a: pinned(upstream, containerd_url(a, "1.7.27"), runc_url(a))
                                  for a in arches}},
        "wasmtime": {"29.0.1": {a: pinned(upstream, wasmtime_url(a, "29.0.1")) for a in arches}},
    }


class Project:
    """A bakery checkout in a temp dir: the repo's dodo.py and recipes, a test lock."""

    def __init__(self, root: Path, mirror: MirrorServer, lock: dict):
        self.root = root
        self.mirror = mirror
        shutil.copy(REPO / "dodo.py", root / "dodo.py")
        shutil.copytree(REPO / "recipes", root / "recipes")
        shutil.copytree(REPO / "release", root / "release")
        self.write_lock(lock)

    @property
    def lock_path(self) -> Path:
        return self.root / "release" / "lock.toml"

    @property
    def images(self) -> Path:
        return self.root / "build" / "images"

    def write_lock(self, lock: dict) -> None:
        self.lock_path.write_text(tomli_w.dumps(lock))

    def doit(self, *args: str, env: dict[str, str] | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "BAKERY_MIRROR": self.mirror.url, **(env or {})}
        proc = subprocess.run([sys.executable, "-m", "doit", *args], cwd=self.root, env=full_env,
                              capture_output=True, text=True, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"doit {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc


def executed(proc: subprocess.CompletedProcess) -> list[str]:
    """Task names doit ran (". name"), as opposed to up-to-date ones ("-- name")."""
    return [line[2:].strip() for line in proc.stdout.splitlines() if line.startswith(". ")]


@pytest.fixture
def project(tmp_path: Path, mirror: MirrorServer, upstream: Upstream) -> Project:
    root = tmp_path / "bakery"
    root.mkdir()
    return Project(root, mirror, lock_for(upstream))
