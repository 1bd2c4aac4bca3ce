"""End to end through the real doit CLI: recipes + lock -> images, incrementally."""
from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from conftest import Project, executed, lock_for
from elf import make_elf
from sysext_bakery.build import sums
from sysext_bakery.build.readback import extension_release, read_file, read_image
from sysext_bakery.recipe.lock import load as load_lock
from upstream import DOCKER_BINARIES, Upstream, docker_tgz, docker_url, tar_bytes
import sysext

IMAGES = ("docker-24.0.9-x86-64.raw", "docker-24.0.9-arm64.raw")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def built(project: Project) -> Project:
    project.doit("build:docker-24")
    return project


def test_build_docker_stream_builds_both_arches(built: Project) -> None:
    assert sorted(p.name for p in built.images.glob("*.raw")) == sorted(IMAGES)
    listed = sums.parse((built.images / "SHA256SUMS").read_text())
    assert listed == {name: digest(built.images / name) for name in IMAGES}


def test_image_contents(built: Project) -> None:
    image = built.images / "docker-24.0.9-x86-64.raw"
    entries = {e.path: e for e in read_image(image)}
    for binary in DOCKER_BINARIES:
        e = entries[f"usr/bin/{binary}"]
        assert (e.kind, e.mode, e.uid, e.gid) == ("file", 0o755, 0, 0)
    for unit in ("docker.service", "docker.socket", "containerd.service"):
        assert entries[f"usr/lib/systemd/system/{unit}"].mode == 0o644
    assert "usr/share/containerd/config.toml" in entries
    assert not any(p.startswith(("etc", "usr/sbin")) for p in entries)
    assert read_file(image, "usr/lib/systemd/system/sockets.target.d/10-docker-docker.socket.conf") \
        == b"[Unit]\nUpholds=docker.socket\n"
    assert read_file(image, "usr/lib/systemd/system/multi-user.target.d/10-docker-containerd.service.conf") \
        == b"[Unit]\nUpholds=containerd.service\n"
    assert extension_release(image) == {"ID": "_any", "ARCHITECTURE": "x86-64",
                                        "SYSEXT_VERSION_ID": "24.0.9", "EXTENSION_RELOAD_MANAGER": "1"}
    assert extension_release(built.images / "docker-24.0.9-arm64.raw")["ARCHITECTURE"] == "arm64"


def test_second_run_executes_nothing(built: Project) -> None:
    requests_before = len(built.mirror.requests)
    again = built.doit("build:docker-24")
    assert executed(again) == []
    assert "-- pack:docker-24.0.9-x86-64" in again.stdout
    assert len(built.mirror.requests) == requests_before


def test_editing_a_unit_restages_and_repacks_without_download(built: Project) -> None:
    before = {n: digest(built.images / n) for n in IMAGES}
    requests_before = len(built.mirror.requests)
    unit = built.root / "recipes/docker/files/usr/lib/systemd/system/docker.service"
    unit.write_text(unit.read_text().replace("RestartSec=2", "RestartSec=3"))
    run = built.doit("build:docker-24")
    assert sorted(executed(run)) == sorted(f"{step}:docker-24.0.9-{a}" for step in ("stage", "pack")
                                           for a in ("x86-64", "arm64"))
    assert len(built.mirror.requests) == requests_before
    after = {n: digest(built.images / n) for n in IMAGES}
    assert all(before[n] != after[n] for n in IMAGES)
    assert sums.parse((built.images / "SHA256SUMS").read_text()) == after
    image = built.images / "docker-24.0.9-x86-64.raw"
    assert b"RestartSec=3" in read_file(image, "usr/lib/systemd/system/docker.service")


def test_deleting_an_image_repacks_only_it(built: Project) -> None:
    (built.images / IMAGES[1]).unlink()
    run = built.doit("build:docker-24")
    assert executed(run) == ["pack:docker-24.0.9-arm64"]
    assert (built.images / IMAGES[1]).exists()


def test_changing_the_pinned_url_refetches(built: Project, upstream: Upstream) -> None:
    lock = lock_for(upstream)
    other = docker_url("x86-64", "24.0.8")
    lock["docker"]["24.0.9"]["x86-64"]["sources"] = [{"url": other, "sha256": upstream.sha256[other]}]
    built.write_lock(lock)
    run = built.doit("build:docker-24")
    assert sorted(executed(run)) == [f"{step}:docker-24.0.9-x86-64" for step in ("fetch", "pack", "stage")]
    assert built.mirror.requests[-1] == "/" + other[len("https://"):]


def test_changing_the_pinned_sha256_refetches_and_mismatch_is_fatal(built: Project, upstream: Upstream) -> None:
    lock = lock_for(upstream)
    lock["docker"]["24.0.9"]["x86-64"]["sources"][0]["sha256"] = "0" * 64
    built.write_lock(lock)
    run = built.doit("build:docker-24", check=False)
    assert run.returncode != 0
    url = docker_url("x86-64", "24.0.9")
    assert f"{url}: sha256 mismatch: expected {'0' * 64}, got {upstream.sha256[url]}" in run.stdout + run.stderr
    assert not (built.root / "build/cache" / ("0" * 64)).exists()
    assert [p.name for p in (built.root / "build/cache/.tmp").iterdir()] == []


def test_build_stream_picks_newest_of_stream_and_name_newest_overall(project: Project) -> None:
    listing = project.doit("list").stdout
    assert "build:docker-24 " in listing and "newest pinned docker 24.x: 24.0.9" in listing
    assert "build:docker " in listing and "newest pinned docker: 25.0.0" in listing
    assert "fetch:" not in listing
    assert "pack:docker-24.0.8-arm64" in project.doit("list", "--all").stdout


def test_restrict_to_one_arch(project: Project) -> None:
    project.doit("build:docker-24", env={"BAKERY_ARCH": "arm64"})
    assert [p.name for p in project.images.glob("*.raw")] == ["docker-24.0.9-arm64.raw"]


def test_reproducible(project: Project, tmp_path: Path, mirror, upstream: Upstream) -> None:
    project.doit("build:wasmtime")
    other_root = tmp_path / "again"
    other_root.mkdir()
    other = Project(other_root, mirror, lock_for(upstream))
    other.doit("build:wasmtime", env={"BAKERY_CACHE": str(tmp_path / "other-cache")})
    for arch in ("x86-64", "arm64"):
        name = f"wasmtime-29.0.1-{arch}.raw"
        assert digest(project.images / name) == digest(other.images / name)


def test_containerd_verified_against_upstream_checksum_file(project: Project, upstream: Upstream) -> None:
    lock = lock_for(upstream)
    lock["containerd"] = {"1.7.27": {}}      # pinned by hand: no URL, no sha256
    project.write_lock(lock)
    run = project.doit("build:containerd-1.7.27")
    assert "trust on first use" not in run.stderr
    assert any(r.endswith(".tar.gz.sha256sum") for r in project.mirror.requests)
    pins = {p.version: p for p in load_lock(project.lock_path)["containerd"]}
    recorded = pins["1.7.27"].arches["x86-64"]
    assert [s["sha256"] for s in recorded] == [upstream.sha256[s["url"]] for s in recorded]
    entries = {e.path for e in read_image(project.images / "containerd-1.7.27-arm64.raw")}
    assert {"usr/bin/containerd", "usr/bin/ctr", "usr/bin/runc"} <= entries


def test_trust_on_first_use_records_sha256_with_warning(project: Project, upstream: Upstream) -> None:
    lock = lock_for(upstream)
    lock["wasmtime"] = {"29.0.1": {}}
    project.write_lock(lock)
    run = project.doit("build:wasmtime-29.0.1")
    assert run.stderr.count("WARNING: trust on first use") == 2
    pins = load_lock(project.lock_path)["wasmtime"][0]
    assert set(pins.arches) == {"x86-64", "arm64"}
    assert {a: [s["sha256"] for s in v] for a, v in pins.arches.items()} == {
        a: [upstream.sha256[s["url"]]] for a, v in pins.arches.items() for s in v}
    assert executed(project.doit("build:wasmtime-29.0.1")) == []


def test_unpinned_version_says_how_to_pin(project: Project) -> None:
    run = project.doit("build:docker-99.1.0", check=False)
    assert run.returncode != 0
    assert ('docker 99.1.0 is not pinned in release/lock.toml. Pin it by adding a table '
            '[docker."99.1.0"] to the lock') in run.stdout + run.stderr
    assert "`doit update:docker`" in run.stdout + run.stderr
    run = project.doit("build:docker-26", check=False)
    assert run.returncode != 0
    assert ('no docker 26.x is pinned in release/lock.toml'
            + '. Pin it by adding a table [docker."26.<rest of the version>"]') in run.stdout + run.stderr


def test_broken_recipe_is_reported_and_others_listed(project: Project) -> None:
    (project.root / "recipes" / "broken.toml").write_text('description = "x"\nhomepage = 1\n')
    run = project.doit("list")
    assert "build:docker-24" in run.stdout
    assert [l for l in run.stdout.splitlines() if "broken" in l] == [
        "build:broken              withheld by a problem (`doit list` names it)"]
    assert "bakery: problem: recipes/broken.toml: homepage: expected a string, got int 1" in run.stderr


def add_recipe(project: Project, upstream: Upstream, name: str, archive: bytes,
               install: str = '{ "tool/*" = "/usr/bin/" }', arches: str = '["x86-64", "arm64"]') -> None:
    url_path = f"example.org/{name}/{name}-1.0.tar.gz"
    upstream.add(f"https://{url_path}", archive)
    (project.root / "recipes" / f"{name}.toml").write_text(
        f'description = "test"\nhomepage = "https://example.org/"\narches = {arches}\n'
        f'[[sources]]\nurl = "https://example.org/{name}/{name}-{{version}}.tar.gz"\ninstall = {install}\n')
    lock = lock_for(upstream)
    lock[name] = {"1.0": {}}
    project.write_lock(lock)


def test_upstream_404(project: Project, upstream: Upstream) -> None:
    add_recipe(project, upstream, "gone", b"")
    (upstream.root / "example.org/gone/gone-1.0.tar.gz").unlink()
    run = project.doit("build:gone-1.0", check=False)
    assert run.returncode != 0
    assert ("https://example.org/gone/gone-1.0.tar.gz: HTTP 404 Not Found (from "
            f"{project.mirror.url}/example.org/gone/gone-1.0.tar.gz)") in run.stdout + run.stderr


def test_tarball_with_dotdot_refused(project: Project, upstream: Upstream) -> None:
    add_recipe(project, upstream, "evil", tar_bytes([("tool/../../escape", b"x", 0o755)]))
    run = project.doit("build:evil-1.0", check=False)
    assert run.returncode != 0
    assert "tool/../../escape" in run.stdout + run.stderr and "'..'" in run.stdout + run.stderr
    assert not (project.root / "build/stage/evil-1.0-x86-64").exists()
    assert not list(project.images.glob("evil-*"))


def test_tarball_with_escaping_symlink_refused(project: Project, upstream: Upstream) -> None:
    add_recipe(project, upstream, "sneaky", tar_bytes(
        [("tool/", None, 0o755), ("tool/ok", make_elf("x86-64"), 0o755)],
        links=[("tool/passwd", "../../../etc/passwd", tarfile.SYMTYPE)]), arches='["x86-64"]')
    run = project.doit("build:sneaky-1.0", check=False)
    assert run.returncode != 0
    assert "tool/passwd" in run.stdout + run.stderr and "outside" in run.stdout + run.stderr
    assert not list(project.images.glob("sneaky-*"))


def test_arm64_image_with_x86_binary_refused(project: Project, upstream: Upstream) -> None:
    add_recipe(project, upstream, "wrongarch", docker_tgz("x86-64", "1.0"),
               install='{ "docker/*" = "/usr/bin/" }')
    run = project.doit("--continue", "build:wrongarch-1.0", check=False)
    assert run.returncode != 0
    assert "usr/bin/dockerd: ELF machine x86-64, image arch arm64" in run.stdout + run.stderr
    assert (project.images / "wrongarch-1.0-x86-64.raw").exists()
    assert not (project.images / "wrongarch-1.0-arm64.raw").exists()


@sysext.requires_sysext
def test_real_merge_exposes_docker(built: Project, tmp_path: Path) -> None:
    root = sysext.make_root(tmp_path / "root")
    proc = sysext.run_merged(root, {"docker": built.images / "docker-24.0.9-x86-64.raw"},
                             'head -c 4 "$ROOT/usr/bin/docker" | od -c | head -1; '
                             'ls "$ROOT/usr/lib/systemd/system/"; '
                             'cat "$ROOT/usr/lib/systemd/system/sockets.target.d/10-docker-docker.socket.conf"')
    assert "E   L   F" in proc.stdout
    assert "docker.socket" in proc.stdout and "containerd.service" in proc.stdout
    assert "Upholds=docker.socket" in proc.stdout
    assert not (root / "usr/bin/docker").exists(), "unmerge must restore the original /usr"


def test_erofs_build_and_inspect_task(project: Project) -> None:
    project.doit("build:wasmtime", env={"BAKERY_FORMAT": "erofs"})
    image = project.images / "wasmtime-29.0.1-arm64.raw"
    assert image.read_bytes()[1024:1028] == bytes.fromhex("e2e1f5e0")   # erofs superblock magic
    assert extension_release(image)["SYSEXT_VERSION_ID"] == "29.0.1"
    shown = project.doit("inspect", "wasmtime-29.0.1-arm64").stdout
    assert "ARCHITECTURE=arm64" in shown
    assert {e.path for e in read_image(image) if e.kind == "file"} == {
        "usr/bin/wasmtime", "usr/lib/extension-release.d/extension-release.wasmtime"}
    # switching back to squashfs repacks from the staged tree without staging again
    run = project.doit("build:wasmtime")
    assert sorted(executed(run)) == ["pack:wasmtime-29.0.1-arm64", "pack:wasmtime-29.0.1-x86-64"]
    assert project.images.joinpath("wasmtime-29.0.1-arm64.raw").read_bytes()[:4] == b"hsqs"


def test_directory_mirror_needs_no_server(project: Project, upstream: Upstream) -> None:
    requests_before = len(project.mirror.requests)
    project.doit("build:wasmtime", env={"BAKERY_MIRROR": str(upstream.root)})
    assert len(project.mirror.requests) == requests_before
    assert sorted(p.name for p in project.images.glob("*.raw")) == [
        "wasmtime-29.0.1-arm64.raw", "wasmtime-29.0.1-x86-64.raw"]


def test_chmod_and_symlinks_in_files_are_tracked(built: Project) -> None:
    files = built.root / "recipes/docker/files"
    (files / "usr/libexec/docker").mkdir(parents=True)
    # valid inside the image, dangling on the build host
    (files / "usr/libexec/docker/dockerd").symlink_to("../../bin/dockerd")
    run = built.doit("build:docker-24.0.9", env={"BAKERY_ARCH": "x86-64"})
    assert sorted(executed(run)) == ["pack:docker-24.0.9-x86-64", "stage:docker-24.0.9-x86-64"]
    image = built.images / "docker-24.0.9-x86-64.raw"
    entries = {e.path: e for e in read_image(image)}
    assert entries["usr/libexec/docker/dockerd"].target == "../../bin/dockerd"

    (files / "usr/lib/sysusers.d/docker.conf").chmod(0o755)
    run = built.doit("build:docker-24.0.9", env={"BAKERY_ARCH": "x86-64"})
    assert sorted(executed(run)) == ["pack:docker-24.0.9-x86-64", "stage:docker-24.0.9-x86-64"]
    assert {e.path: e for e in read_image(image)}["usr/lib/sysusers.d/docker.conf"].mode == 0o755

    (files / "usr/libexec/docker/dockerd").unlink()
    (files / "usr/libexec/docker/dockerd").symlink_to("../../bin/docker")
    run = built.doit("build:docker-24.0.9", env={"BAKERY_ARCH": "x86-64"})
    assert "pack:docker-24.0.9-x86-64" in executed(run)
    assert {e.path: e for e in read_image(image)}["usr/libexec/docker/dockerd"].target == "../../bin/docker"
    assert executed(built.doit("build:docker-24.0.9", env={"BAKERY_ARCH": "x86-64"})) == []


def test_docker_provenance_and_setup_unit(built: Project) -> None:
    record = json.loads((built.root / "build/state/images/docker-24.0.9-x86-64.json").read_text())
    assert (record["replaces"], record["conflicts"]) == (["docker-flatcar", "containerd-flatcar"],
                                                         ["containerd"])
    image = built.images / "docker-24.0.9-x86-64.raw"
    unit = read_file(image, "usr/lib/systemd/system/docker-sysext-setup.service").decode()
    assert "ExecStart=/usr/bin/systemd-sysusers /usr/lib/sysusers.d/docker.conf\n" in unit
    assert "Before=containerd.service docker.service docker.socket shutdown.target\n" in unit
    assert read_file(image, "usr/lib/systemd/system/docker.socket.d/10-docker-sysext-setup.conf") == \
        b"[Unit]\nWants=docker-sysext-setup.service\nAfter=docker-sysext-setup.service\n"


@sysext.requires_sysext
def test_docker_group_exists_after_a_merge_on_a_set_up_host(built: Project, tmp_path: Path) -> None:
    """What docker-sysext-setup.service runs, run in the merged namespace against a host root
    whose /etc/group already exists and lacks docker (systemd-sysusers.service would skip it)."""
    root = sysext.make_root(tmp_path / "root")
    (root / "etc/group").write_text("root:x:0:\n")
    proc = sysext.run_merged(root, {"docker": built.images / "docker-24.0.9-x86-64.raw"}, r"""
        set -e
        unit="$ROOT/usr/lib/systemd/system/docker-sysext-setup.service"
        sed -n 's/^ExecStart=//p' "$unit" | while read -r program file; do
            "$program" --root="$ROOT" "$ROOT$file"
        done
    """)
    assert proc.returncode == 0, proc.stderr
    assert [line.split(":")[0] for line in (root / "etc/group").read_text().splitlines()] == ["root", "docker"]
