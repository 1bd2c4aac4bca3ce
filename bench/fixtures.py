"""Deterministic, upstream-sized fixtures for the benchmarks, and throw-away bakery projects.

The docker fixture is shaped like download.docker.com's static tarball (a `docker/` directory
of eight executables, ~195 MB unpacked, ~70 MB as .tgz). Real Go binaries are neither random
(incompressible) nor text: gzip shrinks them ~2.8x per 128 KiB squashfs block and zstd -15
about 10 % further. The content generator mixes three kinds of 1 KiB chunks to land there:
random bytes (12 %), slices of a "hot" 64 KiB region that moves every MiB (20 %, repeats a
few tens of KiB apart, like symbol tables and repeated code) and slices of a 4 MiB pool of
Zipf-distributed short random "words" (the rest). Fixed seed: every run and every machine
gets the same bytes.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import random
import shutil
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from elf import make_elf  # noqa: E402  (the tests' tiny valid ELF header)
from upstream import MirrorServer  # noqa: E402,F401  (loopback server that logs requests)
from sysext_bakery.files import file_digest  # noqa: E402

GENERATOR_VERSION = 1          # bump when the bytes change, so cached fixtures are rebuilt
SEED = 20240601
MTIME = 1700000000
MIB = 1 << 20

# Sizes of docker 24.0.9's static binaries (x86_64), MiB, rounded.
DOCKER_BINARIES = {"containerd": 39, "containerd-shim-runc-v2": 12, "ctr": 19, "docker": 34,
                   "docker-init": 0.75, "docker-proxy": 2, "dockerd": 65, "runc": 14}
DOCKER_VERSION = "24.0.9"
DOCKER_ARCH = {"x86-64": "x86_64", "arm64": "aarch64"}
GO_ARCH = {"x86-64": "amd64", "arm64": "arm64"}
CONTAINERD_VERSION, RUNC_VERSION, WASMTIME_VERSION = "1.7.27", "1.2.5", "29.0.1"


# --- content -----------------------------------------------------------------------------------

class Content:
    """Binary-like bytes from a seeded generator."""

    CHUNK = 1024
    RANDOM, HOT = 0.12, 0.20

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        vocab = [self.rng.randbytes(self.rng.randint(2, 12)) for _ in range(256)]
        weights = [1 / (i + 1) for i in range(len(vocab))]
        pool = bytearray()
        while len(pool) < 4 * MIB:
            pool += b"".join(self.rng.choices(vocab, weights, k=4096))
        self.pool = bytes(pool[:4 * MIB])

    def make(self, size: int) -> bytes:
        rng, pool, n = self.rng, self.pool, self.CHUNK
        out = bytearray()
        hot = rng.randrange(len(pool) - 65536)
        while len(out) < size:
            r = rng.random()
            if r < self.RANDOM:
                out += rng.randbytes(n)
            elif r < self.RANDOM + self.HOT:
                at = hot + rng.randrange(65536 - n)
                out += pool[at:at + n]
            else:
                at = rng.randrange(len(pool) - n)
                out += pool[at:at + n]
            if len(out) % MIB < n:
                hot = rng.randrange(len(pool) - 65536)
        return bytes(out[:size])


def elf_binary(arch: str, content: Content, size: int) -> bytes:
    head = make_elf(arch)
    return head + content.make(size - len(head))


# --- tarballs ----------------------------------------------------------------------------------

def _add(tar: tarfile.TarFile, name: str, data: bytes | None, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = mode, MTIME
    if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def write_tgz(path: Path, members: list[tuple[str, bytes | None, int]], level: int = 6) -> None:
    """A gzip'd tar (gzip -6 like upstream tarballs; mtime 0 so the bytes are reproducible)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level,
                                               mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, mode in members:
            _add(tar, name, data, mode)
    tmp.replace(path)


def docker_tgz(path: Path, arch: str) -> None:
    """~195 MB of docker-shaped binaries; both arches share content, only ELF headers differ."""
    content = Content(SEED)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6,
                                               mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        _add(tar, "docker/", None, 0o755)
        for name, mib in DOCKER_BINARIES.items():   # one binary in memory at a time
            _add(tar, f"docker/{name}", elf_binary(arch, content, int(mib * MIB)), 0o755)
    tmp.replace(path)


def tar_xz(members: list[tuple[str, bytes | None, int]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, mode in members:
            _add(tar, name, data, mode)
    return lzma.compress(raw.getvalue())


# --- the upstream mirror tree ------------------------------------------------------------------

def docker_url(arch: str, version: str = DOCKER_VERSION) -> str:
    return f"https://download.docker.com/linux/static/stable/{DOCKER_ARCH[arch]}/docker-{version}.tgz"


def containerd_url(arch: str) -> str:
    v = CONTAINERD_VERSION
    return (f"https://github.com/containerd/containerd/releases/download/v{v}/"
            f"containerd-static-{v}-linux-{GO_ARCH[arch]}.tar.gz")


def runc_url(arch: str) -> str:
    return (f"https://github.com/opencontainers/runc/releases/download/v{RUNC_VERSION}/"
            f"runc.{GO_ARCH[arch]}")


def wasmtime_url(arch: str) -> str:
    v = WASMTIME_VERSION
    return (f"https://github.com/bytecodealliance/wasmtime/releases/download/v{v}/"
            f"wasmtime-v{v}-{DOCKER_ARCH[arch]}-linux.tar.xz")


def scale_url(recipe: str, version: str, arch: str) -> str:
    return f"https://tools.example.org/{recipe}/{version}/{recipe}-{GO_ARCH[arch]}"


def mirror_path(root: Path, url: str) -> Path:
    return root / url.removeprefix("https://")


@dataclass
class Upstream:
    root: Path
    sha256: dict[str, str]      # url -> sha256 of the file served for it


def mirror_tree(workdir: Path, scale_recipes: int, log=print, docker: bool = True) -> Upstream:
    """The mirror tree under `workdir`, generated once per GENERATOR_VERSION and reused.
    Without `docker`, only the scale releases (a separate, small tree: `--only scale nightly`
    need no 70 MB tarballs)."""
    root = workdir / f"upstream-v{GENERATOR_VERSION}{'' if docker else '-small'}"
    index = root / "sha256.json"
    if index.exists():
        sums = json.loads(index.read_text())
        if all(scale_url(scale_name(r), "1.0.0", "x86-64") in sums for r in range(scale_recipes)):
            return Upstream(root, sums)
    sums: dict[str, str] = {}

    def put(url: str, data: bytes) -> None:
        path = mirror_path(root, url)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        sums[url] = hashlib.sha256(data).hexdigest()

    for arch in ("x86-64", "arm64") if docker else ():
        path = mirror_path(root, docker_url(arch))
        path.parent.mkdir(parents=True, exist_ok=True)
        log(f"generating {path.name} for {arch} (~70 MB .tgz, once)")
        docker_tgz(path, arch)
        sums[docker_url(arch)] = file_digest(path)
        small = Content(SEED + 1)
        tgz = root / "containerd.tmp.tgz"
        write_tgz(tgz, [("bin/", None, 0o755)] + [
            (f"bin/{b}", elf_binary(arch, small, 256 * 1024), 0o755)
            for b in ("containerd", "ctr", "containerd-shim-runc-v2")])
        put(containerd_url(arch), tgz.read_bytes())
        tgz.unlink()
        put(runc_url(arch), elf_binary(arch, small, 128 * 1024))
        top = f"wasmtime-v{WASMTIME_VERSION}-{DOCKER_ARCH[arch]}-linux"
        put(wasmtime_url(arch), tar_xz([(f"{top}/", None, 0o755),
                                        (f"{top}/wasmtime", elf_binary(arch, small, 256 * 1024), 0o755),
                                        (f"{top}/LICENSE", b"Apache-2.0\n", 0o644)]))
    for r in range(scale_recipes):
        for version in scale_versions():
            for arch in ("x86-64", "arm64"):
                put(scale_url(scale_name(r), version, arch),
                    make_elf(arch, f"{scale_name(r)} {version}\n".encode() * 32))
    index.write_text(json.dumps(sums, indent=0, sort_keys=True))
    return Upstream(root, sums)


# --- projects ----------------------------------------------------------------------------------

def _toml_lock(pins: dict[str, dict[str, dict[str, list[str]]]], sums: dict[str, str]) -> str:
    """name -> version -> arch -> source URLs, as lock.toml with every sha256 pinned."""
    out = []
    for name, versions in pins.items():
        for version, arches in versions.items():
            for arch, urls in arches.items():
                sources = ", ".join(f'{{ url = "{u}", sha256 = "{sums[u]}" }}' for u in urls)
                out.append(f'[{name}."{version}".{arch}]\nsources = [{sources}]\n')
    return "\n".join(out)


def new_project(root: Path, lock_text: str, recipes: Path | None = None) -> Path:
    """A bakery project: the repo's dodo.py and release/ templates, `recipes` (default: the
    repo's), and the given lock."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    shutil.copytree(recipes or REPO / "recipes", root / "recipes")
    shutil.copytree(REPO / "release", root / "release")
    (root / "release" / "lock.toml").write_text(lock_text)
    return root


def catalogue_project(root: Path, up: Upstream) -> Path:
    """The repo's catalogue (docker, containerd, wasmtime), one pinned version each, 2 arches."""
    arches = ("x86-64", "arm64")
    pins = {"docker": {DOCKER_VERSION: {a: [docker_url(a)] for a in arches}},
            "containerd": {CONTAINERD_VERSION: {a: [containerd_url(a), runc_url(a)] for a in arches}},
            "wasmtime": {WASMTIME_VERSION: {a: [wasmtime_url(a)] for a in arches}}}
    return new_project(root, _toml_lock(pins, up.sha256))


def scale_name(r: int) -> str:
    return f"tool{r:03d}"


def scale_versions() -> list[str]:
    return [f"1.{v}.0" for v in range(5)]


SCALE_RECIPE = """description = "synthetic benchmark tool {name}"
homepage = "https://tools.example.org/{name}/"
arches = ["x86-64", "arm64"]
streams = "major"

[arch-names]
x86-64 = "amd64"
arm64 = "arm64"

[[sources]]
url = "https://tools.example.org/{name}/{{version}}/{name}-{{arch}}"
install = {{ "{name}-*" = {{ to = "/usr/bin/{name}", mode = "0755" }} }}
"""


def scale_project(root: Path, up: Upstream, recipes: int) -> Path:
    """`recipes` synthetic recipes x 5 versions x 2 arches, each a single plain ELF file."""
    recipe_dir = root.with_name(root.name + ".recipes")
    if recipe_dir.exists():
        shutil.rmtree(recipe_dir)
    recipe_dir.mkdir(parents=True)
    pins: dict[str, dict[str, dict[str, list[str]]]] = {}
    for r in range(recipes):
        name = scale_name(r)
        (recipe_dir / f"{name}.toml").write_text(SCALE_RECIPE.format(name=name))
        pins[name] = {v: {a: [scale_url(name, v, a)] for a in ("x86-64", "arm64")}
                      for v in scale_versions()}
    project = new_project(root, _toml_lock(pins, up.sha256), recipes=recipe_dir)
    shutil.rmtree(recipe_dir)
    return project


def mirror_url(url: str, base: str) -> str:
    """Where BAKERY_MIRROR=<base> fetches `url` from (the same mapping the bakery applies)."""
    return f"{base.rstrip('/')}/{url.removeprefix('https://')}"


# --- the nightly run: recorded discovery answers with nothing new ----------------------------

NIGHTLY_UPSTREAM = """
[upstream]
type = "html-index"
url = "https://tools.example.org/{name}/"
pattern = '{name}-(\\d+\\.\\d+\\.\\d+)\\.tar'
"""


def _index_page(title: str, files: list[str]) -> bytes:
    """An nginx-style autoindex page, the shape of download.docker.com's."""
    rows = "".join(f'<a href="{f}">{f}</a>{" " * 30}2025-01-22 17:45  72M\n' for f in files)
    return (f"<!DOCTYPE html>\n<html>\n<head><title>Index of {title}</title></head>\n<body>\n"
            f"<h1>Index of {title}</h1>\n<hr>\n<pre><a href=\"../\">../</a>\n{rows}"
            "</pre><hr></body>\n</html>\n").encode()


@dataclass
class Nightly:
    project: Path
    upstream: Path          # the recorded tree to serve (BAKERY_MIRROR)
    requests: int           # discovery requests a run with nothing new makes
    images: int             # images the lock pins once updated


def nightly_catalogue(root: Path, log=print) -> Nightly:
    """The repo's whole catalogue (recipes/, release/versions.toml and lock.toml) and, from
    tests/recorded.py, upstream answers in each discovery type's shape offering several
    streams per recipe, with the downloads, checksum files, signatures and GitHub digests of
    the versions to pin. Regenerated each run (a few seconds): recipes change."""
    import recorded
    from sysupdate import stop_gpg_agent
    from upstream import Upstream as TreeUpstream
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    project = new_project(root / "project", (REPO / "release" / "lock.toml").read_text())
    up = TreeUpstream(root / "upstream")
    signer = recorded.make_signer(root)
    try:
        offers = recorded.nightly_catalogue(up, project / "recipes", project / "release/lock.toml",
                                            project / "release/versions.toml", signer)
        recorded.trust(project / "recipes", signer)
    finally:
        stop_gpg_agent(signer.gnupghome)
    log(f"nightly: {len(offers)} recipes, {sum(len(o.offered) for o in offers.values())} "
        f"versions offered, {sum(len(o.expected) for o in offers.values())} to pin")
    return Nightly(project, up.root, sum(o.requests for o in offers.values()),
                   2 * sum(len(o.expected) for o in offers.values()))


def publish_all(dest: Path, project: Path) -> int:
    """An index.json at `dest` that lists every image the project's lock pins; their number."""
    import recorded
    return len(recorded.publish_index(dest, project / "release/lock.toml", project / "recipes"))


def nightly_scale(root: Path, up: Upstream, recipes: int) -> Path:
    """`recipes` synthetic recipes x 5 versions x 2 arches, each tracked by an html-index
    that lists exactly the pinned versions."""
    project = scale_project(root, up, recipes)
    tracked = []
    for r in range(recipes):
        name = scale_name(r)
        recipe = project / "recipes" / f"{name}.toml"
        recipe.write_text(recipe.read_text().replace("\n[arch-names]", NIGHTLY_UPSTREAM.format(name=name)
                                                     + "\n[arch-names]", 1))
        path = mirror_path(up.root, f"https://tools.example.org/{name}/index.html")
        path.write_bytes(_index_page(f"/{name}/", [f"{name}-{v}.tar" for v in scale_versions()]))
        tracked.append(f"[{name}]\nstreams = 1\nkeep-per-stream = 5\n")
    (project / "release" / "versions.toml").write_text("\n".join(tracked))
    return project
