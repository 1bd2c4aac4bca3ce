"""Case 8: `doit -n 2 build` of a catalogue sample against a serial `doit build`.

The sample is what a CI runner builds on a day with work to do: three kubernetes minors
(sharing the CNI plugins tarball), docker, two containerd minors (sharing runc) and three
small tools, both arches: 18 images from 9 recipes of recipes/. Their downloads are
synthesized from the recipes themselves (tests/catalogue.py `synthesize`), with ELF files of
the real binaries' sizes (docker is the bench's docker fixture), ~2.7 GB to stage and pack.

Every run starts cold: no build/ directory, so the download cache is empty too. That is the
CI job's situation, and it is what makes "a shared download is fetched once" measurable.
Two variants: the loopback mirror (downloading costs nothing, so only CPU work can overlap)
and a mirror serving each download at LINK_RATE (downloads take time, as from upstream).
"""
from __future__ import annotations

import hashlib
import json
import resource
import shutil
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import fixtures
from catalogue import synthesize
from upstream import Upstream as TreeWriter

if TYPE_CHECKING:
    from run import Bench

GENERATOR_VERSION = 1          # bump when the bytes change, so the cached sample is rebuilt
ARCHES = ("x86-64", "arm64")
# recipe -> versions (docker comes from the docker fixture)
SAMPLE = {"kubernetes": ["v1.33.7", "v1.34.3", "v1.35.0"], "containerd": ["1.7.27", "2.0.4"],
          "crictl": ["1.36.0"], "nerdctl": ["2.3.5"], "docker_compose": ["5.1.2"]}
# MiB of the real amd64 files each synthesized ELF stands for, by the start of its name
# (a member of a synthesized archive stands for everything upstream's archive installs)
SIZES = {"kubelet": 74, "kubeadm": 66, "kubectl": 55, "cni-plugins": 90, "containerd": 80,
         "runc": 11, "crictl": 40, "nerdctl": 27, "docker-compose": 60}
SMALL = 0.05                   # MiB: shell scripts and anything not listed
# bytes/s per download of the second variant: 200 Mbit/s, a plausible rate for one HTTPS
# download from a release CDN to a cloud runner (real links vary; the faster, the closer the
# ratio gets to the loopback row's)
LINK_RATE = 25e6


def _size(url: str, member: str) -> float:
    filename = url.rsplit("/", 1)[1]
    if member.endswith(".sh"):
        return SMALL
    return next((mib for prefix, mib in SIZES.items() if filename.startswith(prefix)), SMALL)


def elf(url: str, member: str, arch: str) -> bytes:
    """A binary-like ELF file, its bytes seeded by URL and member: no two downloads share
    content (the content-addressed cache must not dedupe what upstream ships twice)."""
    seed = int.from_bytes(hashlib.sha256(f"{url} {member}".encode()).digest()[:8], "big")
    return fixtures.elf_binary(arch, fixtures.Content(seed), int(_size(url, member) * fixtures.MIB))


def sample_pins(up: fixtures.Upstream, log: Callable[[str], None]) -> tuple[dict, dict[str, str]]:
    """name -> version -> arch -> URLs of the sample, and url -> sha256; the files are written
    into the bench's mirror tree once per GENERATOR_VERSION."""
    index = up.root / f"parallel-sample-v{GENERATOR_VERSION}.json"
    if index.exists():
        saved = json.loads(index.read_text())
        return saved["pins"], saved["sha256"]
    writer = TreeWriter(up.root)
    pins: dict = {"docker": {fixtures.DOCKER_VERSION: {a: [fixtures.docker_url(a)] for a in ARCHES}}}
    for name, versions in SAMPLE.items():
        log(f"parallel: synthesizing {name} {', '.join(versions)} for {', '.join(ARCHES)} (once)")
        made = synthesize(fixtures.REPO / "recipes", name, versions, writer, arches=list(ARCHES),
                          elf=elf)
        for a in made.artifacts:
            pins.setdefault(name, {}).setdefault(a.version, {}).setdefault(a.arch, []).append(a.url)
    sums = {**{u: up.sha256[u] for u in (fixtures.docker_url(a) for a in ARCHES)}, **writer.sha256}
    index.write_text(json.dumps({"pins": pins, "sha256": sums}, indent=0, sort_keys=True))
    return pins, sums


def shared_urls(pins: dict) -> list[str]:
    """URLs more than one image of the sample downloads."""
    users: dict[str, int] = {}
    for versions in pins.values():
        for arches in versions.values():
            for urls in arches.values():
                for u in urls:
                    users[u] = users.get(u, 0) + 1
    return sorted(u for u, n in users.items() if n > 1)


def run_case(bench: Bench, Row: type) -> None:
    """Serial, `-n 2` (and in full mode `-n 2 -P thread`) builds, interleaved, cold each time;
    once from the loopback mirror (downloads cost nothing: only CPU can overlap) and once from
    a mirror that serves each download at LINK_RATE (a CI runner's situation: downloads take
    time, and a parallel build packs one image while the next downloads)."""
    pins, sums = sample_pins(bench.up, bench.log)
    project = fixtures.new_project(bench.projects / "parallel", fixtures._toml_lock(pins, sums))
    try:
        _measure(bench, Row, project, pins, bench.server, "loopback")
        link = fixtures.MirrorServer(bench.up.root, rate=LINK_RATE)
        try:
            _measure(bench, Row, project, pins, link, f"upstream at {LINK_RATE / 1e6:.0f} MB/s a download")
        finally:
            link.close()
    finally:
        shutil.rmtree(project, ignore_errors=True)


def _measure(bench: Bench, Row: type, project: Path, pins: dict, server: fixtures.MirrorServer,
             label: str) -> None:
    images = sum(len(arches) for versions in pins.values() for arches in versions.values())
    shared = shared_urls(pins)
    paths = {u: "/" + u.removeprefix("https://") for u in shared}
    modes = {"serial": ("build",), "-n 2": ("-n", "2", "build")}
    if not bench.quick:
        modes["-n 2 -P thread"] = ("-n", "2", "-P", "thread", "build")
    times: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    most_gets = {m: 0 for m in modes}
    for rep in range(bench.reps(3, heavy=True)):
        for mode, args in modes.items():
            bench.wipe_build(project)          # cold: no stage, images or download cache
            before = len(server.requests)
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            profile = f"parallel-{mode.replace(' ', '')}" if rep == 0 and label == "loopback" else None
            run = bench.doit(project, *args, profile_as=profile, mirror=server.url)
            now = resource.getrusage(resource.RUSAGE_CHILDREN)
            asked = server.requests[before:]
            built = len(list((project / "build/images").glob("*.raw")))
            if built != images:
                raise SystemExit(f"parallel: {mode} built {built} of {images} images:\n{run.stdout}")
            gets = max((sum(1 for r in asked if r.split("?", 1)[0] == p) for p in paths.values()),
                       default=0)
            most_gets[mode] = max(most_gets[mode], gets)
            times[mode].append(run.seconds)
            cpu[mode].append(now.ru_utime - used.ru_utime + now.ru_stime - used.ru_stime)
            bench.log(f"parallel {label} {rep + 1} {mode}: {run.seconds:.1f} s, CPU "
                      f"{cpu[mode][-1]:.1f} s, {len(asked)} GETs, at most {gets} per shared URL, "
                      f"load {load()}")
    serial = statistics.median(times["serial"])
    serial_cpu = statistics.median(cpu["serial"])
    for mode in modes:
        if mode == "serial":
            continue
        t = statistics.median(times[mode])
        ok = t / serial <= 0.6 and most_gets[mode] == 1
        bench.add(Row(f"8 `doit {' '.join(modes[mode])}` vs `doit build`, {images} images, cold, "
                      f"{label}", t, serial, t / serial, "ratio <= 0.6, 1 GET per shared URL", ok,
                      note=f"{len(shared)} shared URLs, at most {most_gets[mode]} GET each; CPU "
                           f"{statistics.median(cpu[mode]):.0f} s vs serial {serial_cpu:.0f} s "
                           f"({serial_cpu / serial:.2f} CPUs busy serially: 2 CPUs can reach "
                           f"{serial_cpu / 2 / serial:.2f} at best); load {load()}"))


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])

