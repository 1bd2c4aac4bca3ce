"""torcx migration: torcx images shaped like Flatcar's docker image, converted through the
real stage/validate/pack steps, read back, and merged with the real systemd-sysext."""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from elf import make_elf
from sysext_bakery.recipe import lock
from sysext_bakery.build import stage
from sysext_bakery.build import sums
from sysext_bakery.errors import BakeryError
from sysext_bakery.build.readback import extension_release, read_file, read_image
from sysext_bakery.build.pack import pack
from sysext_bakery.recipe.load import load_recipe, resolve_image
from sysext_bakery.torcx.convert import add_arguments, run, version_from_reference
from sysext_bakery.torcx.profile import load_profile
from sysext_bakery.torcx.units import rewrite_unit

UNITS = "usr/lib/systemd/system"
DOCKER_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr", "docker", "dockerd",
                   "docker-init", "docker-proxy", "runc")

# The units as Flatcar's docker torcx image shipped them: torcx.target ordering, the seal
# file, TORCX_* variables in Exec lines and an image-relative config path.
DOCKER_SERVICE = """\
[Unit]
Description=Docker Application Container Engine
Documentation=http://docs.docker.com
After=containerd.service docker.socket network-online.target
Wants=network-online.target
Requires=containerd.service docker.socket torcx.target
After=torcx.target

[Service]
EnvironmentFile=/run/metadata/torcx
Environment=TORCX_IMAGEDIR=/docker
Type=notify
EnvironmentFile=-/run/flannel/flannel_docker_opts.env
Environment="DOCKER_SELINUX=--selinux-enabled=true" TORCX_BINDIR=/run/torcx/bin
ExecStart=/usr/bin/env PATH=${TORCX_BINDIR}:${PATH} ${TORCX_BINDIR}/dockerd --host=fd:// $DOCKER_SELINUX $DOCKER_OPTS
ExecReload=/bin/kill -s HUP $MAINPID
Delegate=yes

[Install]
WantedBy=multi-user.target
"""

CONTAINERD_SERVICE = """\
[Unit]
Description=containerd container runtime
After=network.target
Requires=torcx.target
After=torcx.target

[Service]
EnvironmentFile=/run/metadata/torcx
Environment=TORCX_IMAGEDIR=/docker
ExecStartPre=mkdir -p /run/docker/libcontainerd
ExecStart=/usr/bin/env PATH=${TORCX_BINDIR}:${PATH} ${TORCX_BINDIR}/containerd --config ${TORCX_UNPACKDIR}${TORCX_IMAGEDIR}/usr/share/containerd/config.toml
Delegate=yes
KillMode=process

[Install]
WantedBy=multi-user.target
"""

DOCKER_SOCKET = """\
[Unit]
Description=Docker Socket for the API
PartOf=docker.service

[Socket]
ListenStream=/var/run/docker.sock
SocketMode=0660
SocketGroup=docker

[Install]
WantedBy=sockets.target
"""

DOCKER_MANIFEST = {
    "kind": "image-manifest-v0",
    "value": {
        "bin": [f"/bin/{b}" for b in DOCKER_BINARIES] + ["/bin/docker-env", "/lib/docker/cli-plugins/docker-buildx"],
        "units": ["/lib/systemd/system/containerd.service", "/lib/systemd/system/docker.service",
                  "/lib/systemd/system/docker.socket",
                  "/lib/systemd/system/multi-user.target.wants",
                  "/lib/systemd/system/sockets.target.wants"],
        "sysusers": ["/lib/sysusers.d/docker.conf"],
        "tmpfiles": ["/share/docker/tmpfiles.conf"],
        "udev_rules": ["/share/docker/99-docker.rules"],
        "network": ["/share/docker/50-docker0.network"],
    },
}

# A helper script reading a torcx variable: not rewritten, reported as a warning.
DOCKER_ENV = b'#!/bin/sh\necho "docker tools in ${TORCX_BINDIR:-/usr/bin}"\n'


# ---------------------------------------------------------------------------------------------
# Fixtures: torcx archives built here, member by member


def _info(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, size: int = 0,
          link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    return info


def write_tgz(path: Path, members: list[tuple[str, object]]) -> Path:
    """members: (name, bytes) files, (name, "dir"), (name, ("link", target)),
    (name, ("x", bytes)) executables."""
    with tarfile.open(path, "w:gz") as tar:
        for name, what in members:
            if what == "dir":
                tar.addfile(_info(name, tarfile.DIRTYPE, 0o755))
            elif isinstance(what, tuple) and what[0] == "link":
                tar.addfile(_info(name, tarfile.SYMTYPE, 0o777, link=what[1]))
            elif isinstance(what, tuple) and what[0] == "x":
                tar.addfile(_info(name, mode=0o755, size=len(what[1])), io.BytesIO(what[1]))
            else:
                tar.addfile(_info(name, size=len(what)), io.BytesIO(what))
    return path


def docker_members(arch: str = "x86-64", manifest: dict | None = None) -> list[tuple[str, object]]:
    members: list[tuple[str, object]] = [(".torcx", "dir"), ("bin", "dir")]
    members += [(f"bin/{b}", ("x", make_elf(arch, b.encode()))) for b in DOCKER_BINARIES]
    members += [
        ("bin/docker-env", ("x", DOCKER_ENV)),
        ("bin/docker-runc", ("link", "runc")),
        ("lib/docker/cli-plugins/docker-buildx", ("x", make_elf(arch, b"buildx"))),
        ("lib/systemd/system/docker.service", DOCKER_SERVICE.encode()),
        ("lib/systemd/system/containerd.service", CONTAINERD_SERVICE.encode()),
        ("lib/systemd/system/docker.socket", DOCKER_SOCKET.encode()),
        ("lib/systemd/system/multi-user.target.wants/containerd.service",
         ("link", "../containerd.service")),
        ("lib/systemd/system/sockets.target.wants/docker.socket", ("link", "../docker.socket")),
        ("lib/sysusers.d/docker.conf", b"g docker - -\n"),
        ("share/docker/tmpfiles.conf", b"d /var/lib/docker 0711 root root -\n"),
        ("share/docker/99-docker.rules", b'SUBSYSTEM=="net", KERNEL=="docker0", ENV{ID_NET_MANAGED_BY}="docker"\n'),
        ("share/docker/50-docker0.network", b"[Match]\nName=docker0\n[Link]\nUnmanaged=yes\n"),
        ("usr/share/containerd/config.toml", b'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n'),
        (".torcx/manifest.json", json.dumps(manifest or DOCKER_MANIFEST).encode()),
    ]
    return members


@pytest.fixture
def docker_tgz(tmp_path: Path) -> Path:
    return write_tgz(tmp_path / "docker:20.10.24.torcx.tgz", docker_members())


def tools_tgz(directory: Path) -> Path:
    """A second, small torcx image: a user's extra tool with a timer."""
    manifest = {"kind": "image-manifest-v0",
                "value": {"bin": ["/bin/tool"], "units": ["/lib/systemd/system/tool.service",
                                                          "/lib/systemd/system/tool.timer"]}}
    return write_tgz(directory / "tools:1.2-rc1.torcx.tgz", [
        ("bin/tool", ("x", b"#!/bin/sh\necho tool ran\n")),
        ("lib/systemd/system/tool.service",
         b"[Unit]\nRequires=torcx.target\nAfter=torcx.target\n[Service]\n"
         b"EnvironmentFile=/run/metadata/torcx\nExecStart=${TORCX_BINDIR}/tool\n"),
        ("lib/systemd/system/tool.timer", b"[Timer]\nOnCalendar=daily\n"),
        ("lib/systemd/system/timers.target.wants/tool.timer", ("link", "../tool.timer")),
        (".torcx/manifest.json", json.dumps(manifest).encode()),
    ])


def profile(path: Path, *images: tuple[str, str]) -> Path:
    path.write_text(json.dumps({"kind": "profile-manifest-v0", "value": {
        "images": [{"name": n, "reference": r} for n, r in images]}}))
    return path


def convert(*argv: str | Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    if "--base-url" not in argv:
        argv = (*argv, "--base-url", "https://nodes.example/sysext/")
    run(parser.parse_args([str(a) for a in argv]))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Converting Flatcar's docker image


@pytest.fixture
def converted(tmp_path: Path, docker_tgz: Path, capsys: pytest.CaptureFixture) -> dict:
    out = tmp_path / "images"
    convert(docker_tgz, "--out", out, "--base-url", "https://nodes.example/sysext")
    captured = capsys.readouterr()
    image = out / "docker-20.10.24-x86-64.raw"
    return {"out": out, "image": image, "entries": {e.path: e for e in read_image(image)},
            "stderr": captured.err}


def test_binaries_are_in_usr_bin(converted: dict) -> None:
    entries = converted["entries"]
    for binary in DOCKER_BINARIES:
        assert (entries[f"usr/bin/{binary}"].kind, entries[f"usr/bin/{binary}"].mode) == ("file", 0o755)
    assert entries["usr/bin/docker-runc"].kind == "symlink"
    # a manifest bin entry outside bin/ gets a /usr/bin link, as torcx's BINDIR had
    buildx = entries["usr/bin/docker-buildx"]
    assert (buildx.kind, buildx.target) == ("symlink", "../lib/docker/cli-plugins/docker-buildx")
    assert entries["usr/lib/docker/cli-plugins/docker-buildx"].kind == "file"
    assert not any(p == "usr/sbin" or p.startswith(("usr/sbin/", "bin", "lib", ".torcx"))
                   for p in entries)


def test_units_are_rewritten_without_torcx(converted: dict) -> None:
    image = converted["image"]
    units = {p: read_file(image, p).decode() for p in converted["entries"]
             if p.startswith(UNITS + "/") and converted["entries"][p].kind == "file"}
    assert {f"{UNITS}/docker.service", f"{UNITS}/containerd.service", f"{UNITS}/docker.socket"} <= set(units)
    for path, text in units.items():
        assert "torcx" not in text.lower(), f"{path} still mentions torcx:\n{text}"
    docker = units[f"{UNITS}/docker.service"]
    assert "ExecStart=/usr/bin/env PATH=/usr/bin:${PATH} /usr/bin/dockerd --host=fd://" in docker
    assert "Requires=containerd.service docker.socket\n" in docker
    assert 'Environment="DOCKER_SELINUX=--selinux-enabled=true"\n' in docker
    assert "EnvironmentFile=-/run/flannel/flannel_docker_opts.env" in docker
    containerd = units[f"{UNITS}/containerd.service"]
    assert "--config /usr/share/containerd/config.toml" in containerd
    assert "After=network.target\n" in containerd


def test_wants_become_upholds_dropins(converted: dict) -> None:
    image, entries = converted["image"], converted["entries"]
    assert read_file(image, f"{UNITS}/multi-user.target.d/10-docker-containerd.service.conf") \
        == b"[Unit]\nUpholds=containerd.service\n"
    assert read_file(image, f"{UNITS}/sockets.target.d/10-docker-docker.socket.conf") \
        == b"[Unit]\nUpholds=docker.socket\n"
    assert not any(".wants" in p for p in entries)


def test_system_integration_files_are_carried(converted: dict) -> None:
    image, entries = converted["image"], converted["entries"]
    assert read_file(image, "usr/lib/sysusers.d/docker.conf") == b"g docker - -\n"
    assert read_file(image, "usr/lib/tmpfiles.d/tmpfiles.conf").startswith(b"d /var/lib/docker")
    assert "usr/lib/udev/rules.d/99-docker.rules" in entries
    assert "usr/lib/systemd/network/50-docker0.network" in entries


def test_extension_release_and_sums(converted: dict) -> None:
    image = converted["image"]
    assert extension_release(image) == {"ID": "_any", "ARCHITECTURE": "x86-64",
                                        "SYSEXT_VERSION_ID": "20.10.24",
                                        "EXTENSION_RELOAD_MANAGER": "1"}
    assert sums.parse((converted["out"] / "SHA256SUMS").read_text()) == {image.name: digest(image)}


def test_scripts_mentioning_torcx_are_reported(converted: dict) -> None:
    assert "warning: docker: /usr/bin/docker-env still mentions torcx" in converted["stderr"]


def test_butane_installs_the_image_and_replaces_the_profile(converted: dict) -> None:
    image = converted["image"]
    config = yaml.safe_load((converted["out"] / "docker.bu").read_text())
    assert (config["variant"], config["version"]) == ("flatcar", "1.0.0")
    files = {f["path"]: f for f in config["storage"]["files"]}
    entry = files[f"/opt/extensions/docker/{image.name}"]
    assert entry["contents"] == {"source": f"https://nodes.example/sysext/{image.name}",
                                 "verification": {"hash": f"sha256-{digest(image)}"}}
    assert files["/etc/torcx/next-profile"]["contents"]["inline"] == "vendor"
    links = {link["path"]: link["target"] for link in config["storage"]["links"]}
    assert links["/etc/extensions/docker.raw"] == f"/opt/extensions/docker/{image.name}"
    # the image brings dockerd and containerd: Flatcar's built-in ones must step aside
    assert links["/etc/extensions/docker-flatcar.raw"] == "/dev/null"
    assert links["/etc/extensions/containerd-flatcar.raw"] == "/dev/null"


def test_sums_keep_other_images(tmp_path: Path, docker_tgz: Path) -> None:
    out = tmp_path / "images"
    out.mkdir()
    (out / "other-1-x86-64.raw").write_bytes(b"other")
    (out / "SHA256SUMS").write_text(f"{'a' * 64}  other-1-x86-64.raw\n")
    convert(docker_tgz, "--out", out)
    listed = sums.parse((out / "SHA256SUMS").read_text())
    assert listed["other-1-x86-64.raw"] == "a" * 64
    assert listed["docker-20.10.24-x86-64.raw"] == digest(out / "docker-20.10.24-x86-64.raw")


def test_squashfs_torcx_image(tmp_path: Path, docker_tgz: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(docker_tgz) as tar:
        tar.extractall(root, filter="tar")
    squashfs = tmp_path / "docker:20.10.24.torcx.squashfs"
    subprocess.run(["mksquashfs", root, squashfs, "-comp", "gzip", "-quiet", "-no-progress",
                    "-all-root"], check=True, capture_output=True)
    convert(squashfs, "--out", tmp_path / "images")
    image = tmp_path / "images/docker-20.10.24-x86-64.raw"
    assert read_file(image, f"{UNITS}/sockets.target.d/10-docker-docker.socket.conf") \
        == b"[Unit]\nUpholds=docker.socket\n"
    assert b"torcx" not in read_file(image, f"{UNITS}/docker.service")


def test_arm64_binaries_need_arm64(tmp_path: Path) -> None:
    archive = write_tgz(tmp_path / "docker:20.10.24.torcx.tgz", docker_members("arm64"))
    with pytest.raises(BakeryError, match=r"usr/bin/dockerd: ELF machine arm64, image arch x86-64"):
        convert(archive, "--out", tmp_path / "images")
    convert(archive, "--arch", "arm64", "--out", tmp_path / "images")
    assert extension_release(tmp_path / "images/docker-20.10.24-arm64.raw")["ARCHITECTURE"] == "arm64"


# ---------------------------------------------------------------------------------------------
# Profiles


def test_profile_with_two_images(tmp_path: Path, docker_tgz: Path) -> None:
    store = docker_tgz.parent
    tools_tgz(store)
    prof = profile(tmp_path / "custom.json", ("docker", "20.10.24"), ("tools", "1.2-rc1"))
    out = tmp_path / "images"
    convert("--profile", prof, "--store", store, "--out", out)
    tools = out / "tools-1.2_rc1-x86-64.raw"     # '-' cannot be in a version: mapped to '_'
    assert sorted(sums.parse((out / "SHA256SUMS").read_text())) == \
        ["docker-20.10.24-x86-64.raw", tools.name]
    assert read_file(tools, f"{UNITS}/timers.target.d/10-tools-tool.timer.conf") == \
        b"[Unit]\nUpholds=tool.timer\n"
    assert read_file(tools, f"{UNITS}/tool.service") == b"[Unit]\n[Service]\nExecStart=/usr/bin/tool\n"
    config = yaml.safe_load((out / "custom.bu").read_text())
    links = {link["path"] for link in config["storage"]["links"]}
    assert {"/etc/extensions/docker.raw", "/etc/extensions/tools.raw"} <= links


def test_profile_images_from_a_package_list(tmp_path: Path, docker_tgz: Path) -> None:
    prof = profile(tmp_path / "p.json", ("docker", "20.10.24"))
    sha512 = hashlib.sha512(docker_tgz.read_bytes()).hexdigest()
    store = tmp_path / "store"
    store.mkdir()
    docker_tgz.rename(store / "docker-20.10.24.tgz")     # found through the list's path
    package_list = tmp_path / "torcx_manifest.json"
    package_list.write_text(json.dumps({"kind": "torcx-package-list-v0", "value": {"packages": [
        {"name": "docker", "versions": [{"version": "20.10.24", "hash": f"sha512-{sha512}",
                                         "locations": [{"path": "/usr/share/torcx/store/docker-20.10.24.tgz"}]}]}]}}))
    convert("--profile", prof, "--store", store, "--package-list", package_list,
            "--out", tmp_path / "images")
    assert (tmp_path / "images/docker-20.10.24-x86-64.raw").is_file()
    package_list.write_text(package_list.read_text().replace(sha512, "0" * 128))
    with pytest.raises(BakeryError, match=r"docker-20.10.24.tgz: sha512 is [0-9a-f]+, .*torcx_manifest.json says 0+"):
        convert("--profile", prof, "--store", store, "--package-list", package_list,
                "--out", tmp_path / "images")


def test_profile_images_downloaded_from_a_package_list(tmp_path: Path, docker_tgz: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # the list's URL is served by a directory mirror (BAKERY_MIRROR), never the internet
    mirror = tmp_path / "mirror"
    (mirror / "torcx.example/pkgs").mkdir(parents=True)
    docker_tgz.rename(mirror / "torcx.example/pkgs/docker:20.10.24.torcx.tgz")
    monkeypatch.setenv("BAKERY_MIRROR", str(mirror))
    monkeypatch.setenv("BAKERY_CACHE", str(tmp_path / "cache"))
    sha512 = hashlib.sha512((mirror / "torcx.example/pkgs/docker:20.10.24.torcx.tgz").read_bytes()).hexdigest()
    package_list = tmp_path / "torcx_manifest.json"
    package_list.write_text(json.dumps({"kind": "torcx-package-list-v0", "value": {"packages": [
        {"name": "docker", "versions": [{"version": "20.10.24", "hash": f"sha512-{sha512}",
                                         "locations": [{"url": "https://torcx.example/pkgs/docker:20.10.24.torcx.tgz"}]}]}]}}))
    prof = profile(tmp_path / "p.json", ("docker", "20.10.24"))
    convert("--profile", prof, "--package-list", package_list, "--out", tmp_path / "images")
    assert "usr/bin/dockerd" in {e.path for e in read_image(tmp_path / "images/docker-20.10.24-x86-64.raw")}


def test_versions_from_references() -> None:
    assert version_from_reference("20.10.24", "x") == "20.10.24"
    assert version_from_reference("1.2-rc1", "x") == "1.2_rc1"
    assert version_from_reference("com.coreos.cl", "x") == "com.coreos.cl"
    with pytest.raises(BakeryError, match="gives no usable version"):
        version_from_reference("--", "x")


# ---------------------------------------------------------------------------------------------
# Bad input


def test_not_a_torcx_file_name(tmp_path: Path) -> None:
    archive = write_tgz(tmp_path / "docker.tgz", docker_members())
    with pytest.raises(BakeryError, match=r"docker.tgz: not a torcx image file name"):
        convert(archive, "--out", tmp_path / "images")


def test_not_an_archive(tmp_path: Path) -> None:
    archive = tmp_path / "docker:1.torcx.tgz"
    archive.write_text("<html>not found</html>")
    with pytest.raises(BakeryError, match=r"docker:1.torcx.tgz: neither a gzip tarball nor a "
                                          r"squashfs image: not a torcx image"):
        convert(archive, "--out", tmp_path / "images")


def test_missing_manifest(tmp_path: Path) -> None:
    members = [m for m in docker_members() if m[0] != ".torcx/manifest.json"]
    archive = write_tgz(tmp_path / "docker:1.torcx.tgz", members)
    with pytest.raises(BakeryError, match=r"docker:1.torcx.tgz: no .torcx/manifest.json: not a torcx image"):
        convert(archive, "--out", tmp_path / "images")
    assert not list((tmp_path / "images").glob("*.raw"))


def test_manifest_of_another_kind(tmp_path: Path) -> None:
    archive = write_tgz(tmp_path / "docker:1.torcx.tgz",
                        docker_members(manifest={"kind": "profile-manifest-v0", "value": {}}))
    with pytest.raises(BakeryError, match=r"manifest.json: kind is 'profile-manifest-v0', expected 'image-manifest-v0'"):
        convert(archive, "--out", tmp_path / "images")


def test_manifest_naming_missing_files(tmp_path: Path) -> None:
    manifest = json.loads(json.dumps(DOCKER_MANIFEST))
    manifest["value"]["bin"].append("/bin/docker-compose")
    manifest["value"]["tmpfiles"].append("/lib/tmpfiles.d/gone.conf")
    archive = write_tgz(tmp_path / "docker:1.torcx.tgz", docker_members(manifest=manifest))
    with pytest.raises(BakeryError, match=r"names files the image does not contain: "
                                          r"bin: /bin/docker-compose; tmpfiles: /lib/tmpfiles.d/gone.conf"):
        convert(archive, "--out", tmp_path / "images")


@pytest.mark.parametrize("member, message", [
    (("../../etc/cron.d/evil", b"x"), r"member '../../etc/cron.d/evil' has a '..' component"),
    (("/etc/shadow", b"x"), r"member '/etc/shadow' has an absolute path"),
    (("bin/escape", ("link", "../../../etc/shadow")), r"symlink 'bin/escape' points outside the archive"),
    (("bin/abs", ("link", "/etc/shadow")), r"symlink 'bin/abs' points outside the archive"),
    (("etc/docker/daemon.json", b"{}"), r"etc/docker/daemon.json: outside the directories a sysext can carry"),
])
def test_hostile_members(tmp_path: Path, member: tuple[str, object], message: str) -> None:
    archive = write_tgz(tmp_path / "docker:1.torcx.tgz", [member, *docker_members()])
    with pytest.raises(BakeryError, match=message):
        convert(archive, "--out", tmp_path / "images")
    assert not list((tmp_path / "images").glob("*.raw"))


def test_device_node_member(tmp_path: Path) -> None:
    archive = tmp_path / "docker:1.torcx.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(_info("bin/null", tarfile.CHRTYPE))
    with pytest.raises(BakeryError, match=r"member 'bin/null' is a character device"):
        convert(archive, "--out", tmp_path / "images")


def test_duplicate_images_in_profile(tmp_path: Path) -> None:
    prof = profile(tmp_path / "p.json", ("docker", "20.10.24"), ("docker", "19.03.15"))
    with pytest.raises(BakeryError, match=r"p.json: value.images\[1\]: image 'docker' is already "
                                          r"listed as value.images\[0\]"):
        load_profile(prof)


def test_bad_second_image_leaves_out_untouched(tmp_path: Path, docker_tgz: Path) -> None:
    store = docker_tgz.parent
    write_tgz(store / "tools:1.torcx.tgz", [("bin/tool", ("x", b"#!/bin/sh\n"))])
    prof = profile(tmp_path / "p.json", ("docker", "20.10.24"), ("tools", "1"))
    out = tmp_path / "images"
    with pytest.raises(BakeryError, match=r"tools:1.torcx.tgz: no .torcx/manifest.json"):
        convert("--profile", prof, "--store", store, "--out", out)
    assert list(out.iterdir()) == []


def test_profile_image_missing_from_stores(tmp_path: Path) -> None:
    prof = profile(tmp_path / "p.json", ("docker", "20.10.24"))
    with pytest.raises(BakeryError, match=r"image docker:20.10.24 is in none of the stores"):
        convert("--profile", prof, "--store", tmp_path, "--out", tmp_path / "images")


def test_not_a_profile(tmp_path: Path) -> None:
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps(DOCKER_MANIFEST))
    with pytest.raises(BakeryError, match=r"p.json: kind is 'image-manifest-v0', not a torcx profile"):
        load_profile(prof)


def test_unknown_torcx_variable() -> None:
    with pytest.raises(BakeryError, match=r"docker.service:2: refers to \$\{TORCX_PROFILE_PATH\}"):
        rewrite_unit("[Service]\nExecStart=/bin/cat ${TORCX_PROFILE_PATH}\n", "docker",
                     "docker.service")


# ---------------------------------------------------------------------------------------------
# The catalogue: an emitted recipe rebuilds the same image


def test_emitted_recipe_rebuilds_the_same_image(tmp_path: Path, docker_tgz: Path) -> None:
    recipes, out = tmp_path / "recipes", tmp_path / "images"
    lock_path = tmp_path / "release" / "lock.toml"
    lock_path.parent.mkdir()
    convert(docker_tgz, "--out", out, "--emit-recipe", recipes, "--lock", lock_path)
    recipe = load_recipe(recipes / "docker.toml")
    assert recipe.upholds == (("multi-user.target", ("containerd.service",)),
                              ("sockets.target", ("docker.socket",)))
    pins = lock.load(lock_path)["docker"]
    assert [(p.version, p.arches) for p in pins] == [("20.10.24", {"x86-64": []})]
    image = resolve_image(recipe, "20.10.24", "x86-64", [])
    stage.stage_image(image, [], tmp_path / "tree")
    rebuilt = tmp_path / "rebuilt.raw"
    assert pack(tmp_path / "tree", rebuilt) == digest(out / "docker-20.10.24-x86-64.raw")
    # converting again replaces its own recipe, but never a catalogue recipe of that name
    convert(docker_tgz, "--out", out, "--emit-recipe", recipes, "--lock", lock_path)
    (recipes / "docker.toml").write_text('description = "the catalogue recipe"\n')
    with pytest.raises(BakeryError, match=r"docker.toml: a recipe of that name exists and was "
                                          r"not made by torcx-convert"):
        convert(docker_tgz, "--out", out, "--emit-recipe", recipes, "--lock", lock_path)
    assert (recipes / "docker.toml").read_text() == 'description = "the catalogue recipe"\n'
    assert sums.parse((out / "SHA256SUMS").read_text()) == {"docker-20.10.24-x86-64.raw": \
        digest(out / "docker-20.10.24-x86-64.raw")}


@pytest.mark.parametrize("name", ["docker-custom", "dock"])
def test_emitted_recipe_name_must_not_extend_another(tmp_path: Path, docker_tgz: Path,
                                                     name: str) -> None:
    # docker's MatchPattern=docker-@v-%a.raw would also match docker-custom-1-x86-64.raw
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "docker.toml").write_text('description = "the catalogue recipe"\n')
    (recipes / "dock-tools.toml").write_text('description = "another recipe"\n')
    with pytest.raises(BakeryError, match=r"clashes with the recipe '(docker|dock-tools)'") as e:
        convert(docker_tgz, "--name", name, "--out", tmp_path / "images",
                "--emit-recipe", recipes, "--lock", tmp_path / "lock.toml")
    assert "_custom" in e.value.hint
    assert not (tmp_path / "images").exists()


@pytest.mark.parametrize("options, packed", [
    (("--format", "erofs"), ("erofs", "lz4hc")),
    (("--compression", "xz"), ("squashfs", "xz")),
    (("--format", "erofs", "--compression", "lz4"), ("erofs", "lz4")),
])
def test_emitted_recipe_keeps_format_and_compression(tmp_path: Path, options: tuple[str, ...],
                                                     packed: tuple[str, str]) -> None:
    recipes, out = tmp_path / "recipes", tmp_path / "images"
    archive = tools_tgz(tmp_path)
    convert(archive, *options, "--out", out, "--emit-recipe", recipes,
            "--lock", tmp_path / "lock.toml")
    image = resolve_image(load_recipe(recipes / "tools.toml"), "1.2_rc1", "x86-64", [])
    assert (image.fmt, image.compression) == packed
    stage.stage_image(image, [], tmp_path / "tree")
    rebuilt = tmp_path / "rebuilt.raw"
    assert pack(tmp_path / "tree", rebuilt, image.fmt, image.compression) \
        == digest(out / "tools-1.2_rc1-x86-64.raw")


# ---------------------------------------------------------------------------------------------
# The real systemd-sysext


try:
    import sysext
    requires_sysext = sysext.requires_sysext
except ImportError:
    requires_sysext = pytest.mark.skip(reason="tests/sysext.py (the merge helper) is missing")


@requires_sysext
def test_merged_with_systemd_sysext(tmp_path: Path, docker_tgz: Path) -> None:
    out = tmp_path / "images"
    convert(docker_tgz, "--out", out)
    root = sysext.make_root(tmp_path / "root")
    script = (
        'set -e\n'
        'test -x "$ROOT/usr/bin/dockerd" && test -x "$ROOT/usr/bin/containerd"\n'
        '"$ROOT/usr/bin/docker-env"\n'
        'grep "^ExecStart=" "$ROOT/usr/lib/systemd/system/docker.service"\n'
        'cat "$ROOT/usr/lib/systemd/system/sockets.target.d/10-docker-docker.socket.conf"\n'
        'cat "$ROOT/usr/lib/sysusers.d/docker.conf"\n')
    proc = sysext.run_merged(root, {"docker": out / "docker-20.10.24-x86-64.raw"}, script)
    assert proc.returncode == 0, proc.stderr
    assert "docker tools in /usr/bin" in proc.stdout
    assert "ExecStart=/usr/bin/env PATH=/usr/bin:${PATH} /usr/bin/dockerd" in proc.stdout
    assert "Upholds=docker.socket" in proc.stdout
    assert "g docker - -" in proc.stdout


# ---------------------------------------------------------------------------------------------
# --name and --version


def hello_tgz(directory: Path, service: str) -> Path:
    """A torcx image named hello whose unit reaches its binary through torcx's unpack paths."""
    manifest = {"kind": "image-manifest-v0",
                "value": {"bin": ["/bin/hello"], "units": ["/lib/systemd/system/hello.service"]}}
    return write_tgz(directory / "hello:1.0.torcx.tgz", [
        ("bin/hello", ("x", b"#!/bin/sh\necho hello\n")),
        ("lib/systemd/system/hello.service", service.encode()),
        (".torcx/manifest.json", json.dumps(manifest).encode()),
    ])


def test_renamed_image_keeps_its_paths(tmp_path: Path) -> None:
    # the unit names the torcx image (hello), not the sysext (hello2)
    archive = hello_tgz(tmp_path, "[Unit]\nDescription=hello, formerly from torcx\n[Service]\n"
                                  "ExecStartPre=${TORCX_UNPACKDIR}/hello/bin/hello\n"
                                  "ExecStart=/run/torcx/unpack/hello/bin/hello\n")
    out = tmp_path / "images"
    convert(archive, "--name", "hello2", "--out", out)
    unit = read_file(out / "hello2-1.0-x86-64.raw", f"{UNITS}/hello.service").decode()
    assert "ExecStartPre=/usr/bin/hello\nExecStart=/usr/bin/hello\n" in unit


@pytest.mark.parametrize("line", [
    "ExecStart=/run/torcx/unpack/other/bin/hello",
    "ExecStart=${TORCX_UNPACKDIR}/other/bin/hello",
    "ConditionPathExists=/run/metadata/torcx",
])
def test_unit_still_needing_torcx_is_refused(tmp_path: Path, line: str) -> None:
    archive = hello_tgz(tmp_path, f"[Unit]\nDescription=hello\n[Service]\n{line}\n")
    out = tmp_path / "images"
    with pytest.raises(BakeryError, match=r"hello: /usr/lib/systemd/system/hello.service:4: "):
        convert(archive, "--name", "hello2", "--out", out)
    assert not list(out.glob("*.raw"))


@pytest.mark.parametrize("version", ["1.0-rc1", "../x", ".1", "1 0"])
def test_bad_version_option(tmp_path: Path, docker_tgz: Path, version: str) -> None:
    out = tmp_path / "images" / "here"
    with pytest.raises(BakeryError, match=r"--version: version .* must not (contain|start with)"):
        convert(docker_tgz, "--version", version, "--out", out)
    assert not list(tmp_path.rglob("*.raw"))


# ---------------------------------------------------------------------------------------------
