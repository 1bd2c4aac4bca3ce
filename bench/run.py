"""The bakery's performance benchmarks: every case against a baseline measured in the same run.

    .venv/bin/python bench/run.py [--quick] [--only CASE ...] [--markdown FILE] [--profile DIR]

Prints one table (case, median seconds, baseline, ratio, target, PASS/MISS) and exits 0 even
when a target is missed: benchmarks are not tests. See bench/README.md.
"""
from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import fixtures
import parallel
from fixtures import REPO

PYTHON = sys.executable
PROBE = Path(__file__).resolve().parent / "doit_probe.py"
DOCKER_IMG = f"docker-{fixtures.DOCKER_VERSION}-x86-64"
CASES = ("noop", "cold", "edit", "size", "scale", "memory", "nightly", "parallel")
sys.path.insert(0, str(REPO))
from sysext_bakery.build.pack import pack_command  # noqa: E402  (the exact flags the bakery uses)


@dataclass
class Row:
    case: str
    value: float           # seconds, or a size/ratio for non-time rows
    baseline: float | None
    ratio: float | None
    target: str
    ok: bool
    unit: str = "s"
    note: str = ""


@dataclass
class Run:
    seconds: float
    stdout: str
    probe: dict


class Bench:
    def __init__(self, workdir: Path, quick: bool, profile: Path | None, docker: bool = True):
        self.workdir = workdir
        self.quick = quick
        self.profile = profile
        self.rows: list[Row] = []
        self.up = fixtures.mirror_tree(workdir, 100, log=self.log, docker=docker)
        self.server = fixtures.MirrorServer(self.up.root)
        self.projects = workdir / "projects"

    def reps(self, light: int, heavy: bool = False) -> int:
        if heavy:
            return 2 if self.quick else 3
        return max(3, light // 2) if self.quick else light

    @staticmethod
    def log(msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    # --- running things -----------------------------------------------------------------------

    def doit(self, project: Path, *args: str, env: dict[str, str] | None = None,
             profile_as: str | None = None, mirror: str | None = None) -> Run:
        probe = project / "build" / ".bench-probe.json"
        probe.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, "BAKERY_MIRROR": mirror or self.server.url,
                    "BENCH_PROBE": str(probe), **(env or {})}
        if profile_as and self.profile:
            full_env["BENCH_PROFILE"] = str(self.profile / f"{profile_as}.prof")
        start = time.perf_counter()
        proc = subprocess.run([PYTHON, str(PROBE), *args], cwd=project, env=full_env,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"doit {' '.join(args)} failed in {project}:\n{proc.stdout}\n{proc.stderr}")
        return Run(seconds, proc.stdout, json.loads(probe.read_text()))

    @staticmethod
    def timed(cmd: list[str] | str, **kwargs) -> float:
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kwargs)
        return time.perf_counter() - start

    def add(self, row: Row) -> None:
        self.rows.append(row)
        self.log(f"{row.case}: {fmt(row.value, row.unit)} "
                 f"{'PASS' if row.ok else 'MISS'} ({row.target})")

    # --- the catalogue project, shared by noop / cold / edit / memory ---------------------------

    def catalogue(self) -> Path:
        return fixtures.catalogue_project(self.projects / "catalogue", self.up)

    def wipe_build(self, project: Path) -> None:
        shutil.rmtree(project / "build", ignore_errors=True)

    def shell_build(self, scratch: Path, compression: str) -> float:
        """The raw pipeline: curl, sha256 check, tar -xzf, mksquashfs with the bakery's flags."""
        url = fixtures.docker_url("x86-64")
        shutil.rmtree(scratch, ignore_errors=True)
        (scratch / "tree/usr/bin").mkdir(parents=True)
        mksquashfs = " ".join(pack_command(scratch / "tree", scratch / "out.raw", "squashfs",
                                           compression))
        script = (f"set -e; cd {scratch}; curl -sf {fixtures.mirror_url(url, self.server.url)} -o f.tgz; "
                  f"echo '{self.up.sha256[url]}  f.tgz' | sha256sum -c --quiet; "
                  f"tar -xzf f.tgz -C tree/usr/bin --strip-components=1; {mksquashfs}")
        return self.timed(["bash", "-c", script])

    def cold_and_memory(self, project: Path) -> None:
        """Cold build of docker x86-64 vs the shell pipeline, interleaved; peak RSS from the same runs."""
        env = {"BAKERY_ARCH": "x86-64"}
        scratch = self.workdir / "shell"
        bakery, shell, rss, compression = [], [], [], None
        for i in range(self.reps(3, heavy=True)):
            self.wipe_build(project)
            run = self.doit(project, "build:docker-24", env=env, profile_as="cold" if i == 0 else None)
            bakery.append(run.seconds)
            rss.append(run.probe["maxrss_kib"] / 1024)
            compression = compression or json.loads(
                (project / "build/state/images" / f"{DOCKER_IMG}.json").read_text())["compression"]
            shell.append(self.shell_build(scratch, compression))
            self.log(f"cold {i + 1}: bakery {bakery[-1]:.2f} s, shell {shell[-1]:.2f} s")
        shutil.rmtree(scratch, ignore_errors=True)
        b, s = statistics.median(bakery), statistics.median(shell)
        self.add(Row(f"2 cold build {DOCKER_IMG} ({compression}) vs curl+tar+mksquashfs",
                     b, s, b / s, "ratio <= 1.05", b / s <= 1.05))
        peak = max(rss)
        self.add(Row("6 peak RSS of the doit process (cold build)", peak, None, None,
                     "<= 150 MB", peak <= 150, unit="MB"))

    def noop(self, project: Path) -> None:
        self.doit(project, "build")    # everything of the catalogue, both arches
        build, listing, read = [], [], []
        for i in range(self.reps(9)):
            run = self.doit(project, "build", profile_as="noop" if i == 0 else None)
            ran = [line for line in run.stdout.splitlines() if line.startswith(". ")]
            if ran:
                self.log(f"no-op run executed tasks: {ran}")
            build.append(run.seconds)
            read.append(run.probe["rchar"])
            listing.append(self.doit(project, "list", "--all").seconds)
        b, lst = statistics.median(build), statistics.median(listing)
        self.add(Row("1a no-op `doit build`, 6 images built", b, None, None, "<= 0.3 s", b <= 0.3))
        self.add(Row("1b no-op `doit build` vs `doit list --all`", b, lst, b / lst,
                     "ratio <= 2", b / lst <= 2))
        images = sum(p.stat().st_size for p in (project / "build/images").glob("*.raw"))
        mb = max(read) / 1e6
        self.add(Row("1c bytes read by a no-op run (images total "
                     f"{images / 1e6:.0f} MB)", mb, None, None, "< 5 % of images: nothing hashed",
                     max(read) < 0.05 * images, unit="MB"))

    def edit(self, project: Path) -> None:
        """Edit a unit file: re-stage + re-pack, no download; vs mksquashfs of the staged tree."""
        env = {"BAKERY_ARCH": "x86-64"}
        unit = project / "recipes/docker/files/usr/lib/systemd/system/docker.service"
        original = unit.read_text()
        tree = project / "build/stage" / DOCKER_IMG
        compression = json.loads((project / "build/state/images" / f"{DOCKER_IMG}.json").read_text())["compression"]
        out = self.workdir / "pack-alone.raw"
        bakery, alone, downloads = [], [], 0
        for i in range(self.reps(3, heavy=True)):
            unit.write_text(original + f"# bench edit {i}\n")
            before = len(self.server.requests)
            run = self.doit(project, "build:docker-24", env=env, profile_as="edit" if i == 0 else None)
            downloads += len(self.server.requests) - before
            bakery.append(run.seconds)
            alone.append(self.timed(pack_command(tree, out, "squashfs", compression)))
            self.log(f"edit {i + 1}: bakery {bakery[-1]:.2f} s, pack alone {alone[-1]:.2f} s")
        unit.write_text(original)
        out.unlink(missing_ok=True)
        b, a = statistics.median(bakery), statistics.median(alone)
        self.add(Row("3 unit edit: re-stage + re-pack vs mksquashfs alone", b, a, b / a,
                     "ratio <= 1.05, no download", b / a <= 1.05 and downloads == 0,
                     note=f"{downloads} downloads"))

    def size(self, project: Path) -> None:
        """Every compressor on the staged docker tree: size and time; the default vs gzip."""
        tree = project / "build/stage" / DOCKER_IMG
        default = json.loads((project / "build/state/images" / f"{DOCKER_IMG}.json").read_text())["compression"]
        variants: list[tuple[str, list[str]]] = [
            (f"squashfs {c}" + (" (the bakery's default: 1M blocks, level 10)" if c == "zstd" else ""),
             pack_command(tree, Path("OUT"), "squashfs", c))
            for c in ("gzip", "zstd", "xz", "lz4")]
        zstd = pack_command(tree, Path("OUT"), "squashfs", "zstd")
        # the last -Xcompression-level given wins, so these keep the default's 1M blocks
        variants += [(f"squashfs zstd 1M -{lvl}", zstd + ["-Xcompression-level", str(lvl)])
                     for lvl in (3, 12, 15)]
        variants.append(("squashfs lz4 -Xhc", pack_command(tree, Path("OUT"), "squashfs", "lz4") + ["-Xhc"]))
        variants += [(f"erofs {c}", pack_command(tree, Path("OUT"), "erofs", c)) for c in ("lz4", "lz4hc")]
        out = self.workdir / "size.raw"
        table: dict[str, tuple[float, int]] = {}
        for label, cmd in variants:
            cmd = [str(out) if c == "OUT" else c for c in cmd]
            times = []
            for _ in range(1 if self.quick else 2):
                out.unlink(missing_ok=True)
                times.append(self.timed(cmd))
            table[label] = (statistics.median(times), out.stat().st_size)
            self.log(f"size {label}: {table[label][1] / 1e6:.1f} MB in {table[label][0]:.1f} s")
        out.unlink(missing_ok=True)
        self.size_table = table
        gz_t, gz_s = table["squashfs gzip"]
        d_t, d_s = next(v for k, v in table.items() if k.split(" (")[0] == f"squashfs {default}")
        self.add(Row(f"4a image size, default ({default}) vs mksquashfs gzip", d_s / 1e6, gz_s / 1e6,
                     d_s / gz_s, "ratio <= 0.92", d_s / gz_s <= 0.92, unit="MB"))
        self.add(Row(f"4b pack time, default ({default}) vs mksquashfs gzip", d_t, gz_t, d_t / gz_t,
                     "ratio <= 1.0", d_t <= gz_t))

    # --- scale -------------------------------------------------------------------------------

    def scale(self) -> None:
        graph = {}
        for recipes in (25, 50, 100):
            project = fixtures.scale_project(self.projects / f"scale{recipes}", self.up, recipes)
            graph[recipes * 10] = statistics.median(
                self.doit(project, "list", "--all").seconds for _ in range(self.reps(5)))
            self.log(f"scale: list --all with {recipes * 10} images: {graph[recipes * 10]:.2f} s")
        self.add(Row("5a `doit list --all`, 1,000 images", graph[1000], None, None, "<= 1 s",
                     graph[1000] <= 1))
        slope, intercept, residual = linear_fit(graph)
        self.add(Row("5b graph load: worst deviation from a straight line over 250/500/1,000 images",
                     residual * 100, None, None, "<= 10 % of t(1000) (linear)",
                     residual <= 0.10, unit="%",
                     note=f"{slope * 1000:.2f} ms per image + {intercept:.2f} s; "
                          + ", ".join(f"t({n})={t:.2f}s" for n, t in graph.items())))
        start = time.perf_counter()
        self.doit(project, "-n", "2", "-P", "thread", "build")
        self.log(f"scale: first build of 1,000 images took {time.perf_counter() - start:.0f} s")
        noop = statistics.median(self.doit(project, "build", profile_as="scale-noop").seconds
                                 for _ in range(self.reps(5)))
        self.add(Row("5c no-op `doit build`, 1,000 images built", noop, None, None, "<= 1.5 s",
                     noop <= 1.5))
        shutil.rmtree(project)

    # --- the nightly run --------------------------------------------------------------------

    def nightly(self) -> None:
        """`doit update` + `doit plan` with nothing new upstream (recorded answers on loopback)
        and everything published: the lock stays as it is and the matrix is empty. The
        catalogue first pins what its recorded upstreams offer in one unmeasured run (the
        previous night), which downloads what has no upstream checksum."""
        night = fixtures.nightly_catalogue(self.projects / "nightly", log=self.log)
        server = fixtures.MirrorServer(night.upstream)
        try:
            self.doit(night.project, "update", mirror=server.url)
            recipes = len(list((night.project / "recipes").glob("*.toml")))
            self.nightly_case(f"the catalogue ({recipes} recipes, {night.images} images)",
                              night.project, server, night.requests, "nightly")
        finally:
            server.close()
        shutil.rmtree(night.project.parent)
        project = fixtures.nightly_scale(self.projects / "nightly-scale", self.up, 100)
        self.doit(project, "update")
        self.nightly_case("100 recipes, 1,000 images", project, self.server, 100, "nightly-scale")
        shutil.rmtree(project)

    def nightly_case(self, label: str, project: Path, server: fixtures.MirrorServer,
                     expected_requests: int, profile: str) -> None:
        published = project.with_name(project.name + ".published")
        images = fixtures.publish_all(published, project)
        lock = (project / "release/lock.toml").read_text()
        load = os.getloadavg()
        totals, updates, plans, cpu, builds, asked = [], [], [], [], 0, set()
        for i in range(self.reps(5)):
            before = len(server.requests)
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            update = self.doit(project, "update", mirror=server.url,
                               profile_as=f"{profile}-update" if i == 0 else None)
            asked.add(len(server.requests) - before)
            plan = self.doit(project, "--reporter=zero", "plan", "--from", str(published),
                             mirror=server.url, profile_as=f"{profile}-plan" if i == 0 else None)
            now = resource.getrusage(resource.RUSAGE_CHILDREN)
            # CPU time of the two doit processes: what a loaded machine does not inflate
            cpu.append(now.ru_utime - used.ru_utime + now.ru_stime - used.ru_stime)
            builds = max(builds, len(json.loads(plan.stdout)["include"]))
            updates.append(update.seconds)
            plans.append(plan.seconds)
            totals.append(update.seconds + plan.seconds)
            self.log(f"nightly {label} {i + 1}: update {update.seconds:.2f} s + plan "
                     f"{plan.seconds:.2f} s, {len(server.requests) - before} requests")
        unchanged = (project / "release/lock.toml").read_text() == lock
        requests = asked.pop() if len(asked) == 1 else -1
        shutil.rmtree(published)
        t = statistics.median(totals)
        self.add(Row(f"7 nightly `doit update` + `doit plan`, nothing new, {label}", t, None, None,
                     "<= 3 s, 0 images to build", t <= 3 and builds == 0 and unchanged
                     and requests == expected_requests,
                     note=f"CPU {statistics.median(cpu):.2f} s; "
                          f"update {statistics.median(updates):.2f} s ({requests} upstream "
                          f"requests, {expected_requests} expected), plan "
                          f"{statistics.median(plans):.2f} s, {builds} of {images} images "
                          f"to build, lock {'unchanged' if unchanged else 'CHANGED'}; "
                          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"))

    # --- output --------------------------------------------------------------------------------

    def table(self) -> str:
        lines = ["| case | median | baseline | ratio | target | result |",
                 "| --- | ---: | ---: | ---: | --- | --- |"]
        for r in self.rows:
            base = fmt(r.baseline, r.unit) if r.baseline is not None else ""
            ratio = f"{r.ratio:.2f}" if r.ratio is not None else ""
            note = f" ({r.note})" if r.note else ""
            lines.append(f"| {r.case}{note} | {fmt(r.value, r.unit)} | {base} | {ratio} | "
                         f"{r.target} | {'PASS' if r.ok else '**MISS**'} |")
        return "\n".join(lines)

    def size_markdown(self) -> str:
        table = getattr(self, "size_table", None)
        if not table:
            return ""
        gz_t, gz_s = table["squashfs gzip"]
        lines = ["| format / compressor | size MB | vs gzip | pack s | vs gzip |",
                 "| --- | ---: | ---: | ---: | ---: |"]
        for label, (t, s) in table.items():
            lines.append(f"| {label} | {s / 1e6:.1f} | {s / gz_s:.3f} | {t:.1f} | {t / gz_t:.2f} |")
        return "\n".join(lines)


def linear_fit(points: dict[int, float]) -> tuple[float, float, float]:
    """Least-squares line through (n, t): slope, intercept and the largest residual relative
    to the largest t. Noise of a few 10 ms on one point must not read as non-linear growth,
    hence a fit over all points rather than comparing two differences."""
    n = len(points)
    mx, my = sum(points) / n, sum(points.values()) / n
    slope = sum((x - mx) * (y - my) for x, y in points.items()) / sum((x - mx) ** 2 for x in points)
    intercept = my - slope * mx
    worst = max(abs(y - (intercept + slope * x)) for x, y in points.items())
    return slope, intercept, worst / max(points.values())


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    return f"{value:.2f} s" if unit == "s" else f"{value:.1f} {unit}"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    debian = Path("/etc/debian_version").read_text().strip() if Path("/etc/debian_version").exists() else "?"
    tools = subprocess.run(["mksquashfs", "-version"], capture_output=True, text=True).stdout.splitlines()[0]
    return (f"{os.cpu_count()} CPUs ({cpu}), {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') >> 30} GiB RAM, "
            f"Debian {debian}, Python {platform.python_version()}, {tools}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (2-3 per case)")
    parser.add_argument("--only", nargs="+", choices=CASES, help="run only these cases")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/sysext-bakery-bench"),
                        help="fixtures (kept between runs) and scratch projects")
    parser.add_argument("--markdown", type=Path, help="also write the tables there")
    parser.add_argument("--profile", type=Path, help="write cProfile stats of the first cold, "
                        "edit, no-op and nightly runs into this directory")
    args = parser.parse_args()
    cases = set(args.only or CASES)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # Byte-compile the bakery once, as an installed package is: with PYTHONDONTWRITEBYTECODE
    # set (as on this machine), every doit run would otherwise compile ~90 modules again.
    compileall.compile_dir(REPO / "sysext_bakery", quiet=1)
    bench = Bench(args.workdir, args.quick, args.profile,
                  docker=bool(cases & {"noop", "cold", "edit", "size", "memory", "parallel"}))
    try:
        if cases & {"noop", "cold", "edit", "size", "memory"}:
            project = bench.catalogue()
            if cases & {"cold", "memory"}:
                bench.cold_and_memory(project)
            if "noop" in cases:
                bench.noop(project)
            if cases & {"edit", "size"}:
                bench.doit(project, "build:docker-24", env={"BAKERY_ARCH": "x86-64"})
            if "edit" in cases:
                bench.edit(project)
            if "size" in cases:
                bench.size(project)
            shutil.rmtree(project)
        if "scale" in cases:
            bench.scale()
        if "nightly" in cases:
            bench.nightly()
        if "parallel" in cases:
            parallel.run_case(bench, Row)
    finally:
        bench.server.close()
    elapsed = time.perf_counter() - started
    header = (f"machine: {machine()}\n"
              f"mode: {'--quick' if args.quick else 'full'}, {elapsed:.0f} s in total")
    text = f"{header}\n\n{bench.table()}\n\n{bench.size_markdown()}\n"
    print(text)
    misses = [r.case for r in bench.rows if not r.ok]
    if misses:
        print("MISSED TARGETS:\n  " + "\n  ".join(misses))
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
