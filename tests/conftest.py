"""Shared fixtures: upstream-shaped files served from loopback, throw-away bakery projects
with a test lock, and a runner for the real doit CLI."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import pytest
import tomli_w

from catalogue import Signer, Synthesized, load_toml, synthesize
from sysext_bakery.model.version import compare_versions
from sysupdate import make_gpg_key, stop_gpg_agent

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


# --- the catalogue: every recipe built once from synthesized upstream files (tests/catalogue.py)

CATALOGUE_RECIPES = REPO / "recipes"
CATALOGUE_NAMES = sorted(p.stem for p in CATALOGUE_RECIPES.glob("*.toml"))
# versions beyond the lock that reach a recipe's other sources (`until = ...`)
EXTRA_VERSIONS = {"ollama": ["0.13.5"], "wasmedge": ["0.14.1"], "kata-containers": ["3.20.0"],
                  "wasmcloud": ["1.9.0"]}

def pinned_versions() -> dict[str, list[str]]:
    with (REPO / "release" / "lock.toml").open("rb") as f:
        lock = tomllib.load(f)
    return {name: sorted(set(lock.get(name, {})) | set(EXTRA_VERSIONS.get(name, [])),
                         key=lambda v: (compare_versions(v, "0"), v))
            for name in CATALOGUE_NAMES}


@dataclass
class Catalogue:
    project: Project
    mirror: MirrorServer
    versions: dict[str, list[str]]
    synthesized: dict[str, Synthesized]
    listed: subprocess.CompletedProcess
    run: subprocess.CompletedProcess

    def skipped(self, name: str) -> str:
        """The loader's complaint about recipes/<name>.toml, if any (from `doit list`)."""
        lines, keep = [], False
        for line in self.listed.stderr.splitlines():
            if line.startswith("bakery: skipped:"):
                keep = f"recipes/{name}.toml" in line
            if keep:
                lines.append(line)
        return "\n".join(lines)

    def requested(self, url: str) -> bool:
        parts = urlsplit(url)
        return any(unquote(r.split("?", 1)[0]) == f"/{parts.hostname}{unquote(parts.path)}"
                   for r in self.mirror.requests)


def armored_public(home: Path, fingerprint: str) -> str:
    return subprocess.run(["gpg", "--batch", "--armor", "--export", fingerprint],
                          env={"GNUPGHOME": str(home), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="session")
def catalogue(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("catalogue")
    key = make_gpg_key(tmp)
    signer = Signer(key.gnupghome, armored_public(key.gnupghome, key.fingerprint))
    up = Upstream(tmp / "upstream")
    versions = pinned_versions()
    synthesized = {n: synthesize(CATALOGUE_RECIPES, n, versions[n], up, signer) for n in CATALOGUE_NAMES}
    mirror = MirrorServer(up.root)
    (tmp / "bakery").mkdir()
    project = Project(tmp / "bakery", mirror, {n: {v: {} for v in vs} for n, vs in versions.items() if vs})
    # The same check against another key: the test signed the sums with its own.
    for name in CATALOGUE_NAMES:
        for source in load_toml(CATALOGUE_RECIPES, name).get("sources", []):
            if "signature-key" in source:
                (project.root / "recipes" / name / source["signature-key"]).write_text(signer.armored_public)
    listed = project.doit("list", "--all", check=False)
    tasks = {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}
    targets = [f"build:{n}-{v}" for n in CATALOGUE_NAMES for v in versions[n] if f"build:{n}-{v}" in tasks]
    run = project.doit("-n", "4", "-c", *targets, env={"BAKERY_COMPRESSION": "gzip"}, check=False)
    yield Catalogue(project, mirror, versions, synthesized, listed, run)
    mirror.close()
    stop_gpg_agent(key.gnupghome)


