"""Recipes whose layout is the point: where kubernetes puts the CNI plugins and its units,
the compose plugin in the directory the real docker CLI searches, k3s's links, HashiCorp's
signed sums (and a tampered signature refused), ollama's switch of archive format, and merges
with the real systemd-sysext against a base tree."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

import sysext
from catalogue import Signer, synthesize
from conftest import CATALOGUE_RECIPES, Catalogue, Project, armored_public
from sysext_bakery.build.readback import read_file, read_image
from sysext_bakery.model.naming import image_filename
from sysupdate import make_gpg_key, stop_gpg_agent
from upstream import MirrorServer, Upstream

K8S = "v1.35.0"
UNITS = "usr/lib/systemd/system"


def image(cat: Catalogue, name: str, version: str, arch: str = "x86-64") -> Path:
    assert not cat.skipped(name), f"recipes/{name}.toml does not load:\n{cat.skipped(name)}"
    path = cat.project.images / image_filename(name, version, arch)
    assert path.exists(), f"{path.name} not built:\n{cat.run.stdout[-3000:]}\n{cat.run.stderr[-3000:]}"
    return path


def newest(cat: Catalogue, name: str) -> str:
    return cat.versions[name][-1]


def locked(cat: Catalogue) -> dict:
    with cat.project.lock_path.open("rb") as f:
        return tomllib.load(f)


# --- kubernetes ---------------------------------------------------------------------------

def test_kubernetes_cni_plugins_in_usr_libexec_and_copied_to_opt(catalogue: Catalogue) -> None:
    img = image(catalogue, "kubernetes", K8S)
    entries = {e.path: e for e in read_image(img)}
    cni = [p for p in entries if p.startswith("usr/libexec/cni/")]
    assert cni and all(entries[p].mode == 0o755 for p in cni)
    # /opt stays the host's: network add-ons write their own plugins into /opt/cni/bin
    assert not any(p.startswith("opt") for p in entries)
    tmpfiles = read_file(img, "usr/lib/tmpfiles.d/kubernetes.conf").decode()
    assert "C /opt/cni/bin - - - - /usr/libexec/cni" in tmpfiles.splitlines()
    # the companion's own version is what the lock records for every kubernetes version
    for arch in ("x86-64", "arm64"):
        urls = [s["url"] for s in locked(catalogue)["kubernetes"][K8S][arch]["sources"]]
        go = {"x86-64": "amd64", "arm64": "arm64"}[arch]
        assert urls[-1] == ("https://github.com/containernetworking/plugins/releases/download/"
                            f"v1.9.1/cni-plugins-linux-{go}-v1.9.1.tgz")
        assert urls[:3] == [f"https://dl.k8s.io/release/{K8S}/bin/linux/{go}/{b}"
                            for b in ("kubelet", "kubeadm", "kubectl")]


def test_kubelet_unit_and_kubeadm_drop_in(catalogue: Catalogue) -> None:
    img = image(catalogue, "kubernetes", K8S)
    unit = read_file(img, f"{UNITS}/kubelet.service").decode()
    assert "ExecStart=/usr/bin/kubelet\n" in unit
    drop_in = read_file(img, f"{UNITS}/kubelet.service.d/10-kubeadm.conf").decode().splitlines()
    # the drop-in resets ExecStart= and runs kubelet with kubeadm's generated flags
    reset = drop_in.index("ExecStart=")
    assert drop_in[reset + 1].startswith("ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS")
    assert "EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env" in drop_in
    assert read_file(img, f"{UNITS}/multi-user.target.d/10-kubernetes-kubelet.service.conf") \
        == b"[Unit]\nUpholds=kubelet.service\n"
    for binary in ("kubelet", "kubeadm", "kubectl"):
        assert read_file(img, f"usr/bin/{binary}")[18] == 62      # EM_X86_64


# --- docker CLI plugins -------------------------------------------------------------------

# The docker CLI looks for plugins in these directories (and ~/.docker/cli-plugins).
DOCKER_PLUGIN_DIRS = ("usr/local/lib/docker/cli-plugins", "usr/local/libexec/docker/cli-plugins",
                      "usr/lib/docker/cli-plugins", "usr/libexec/docker/cli-plugins")


@pytest.mark.parametrize("name, plugin", [("docker_compose", "docker-compose"),
                                          ("docker_buildx", "docker-buildx")])
def test_cli_plugins_land_in_dockers_plugin_path(catalogue: Catalogue, name: str, plugin: str) -> None:
    entries = {e.path: e for e in read_image(image(catalogue, name, newest(catalogue, name)))}
    found = [d for d in DOCKER_PLUGIN_DIRS if f"{d}/{plugin}" in entries]
    assert found == ["usr/libexec/docker/cli-plugins"]
    assert entries[f"{found[0]}/{plugin}"].mode == 0o755


PLUGIN_SCRIPT = b"""#!/bin/sh
if [ "$1" = docker-cli-plugin-metadata ]; then
  echo '{"SchemaVersion":"0.1.0","Vendor":"bakery test","Version":"v5.1.2","ShortDescription":"Docker Compose"}'
  exit 0
fi
echo "compose plugin ran: $*"
"""


@sysext.requires_sysext
@pytest.mark.skipif(not shutil.which("docker"), reason="no docker CLI installed to look the plugin up")
def test_real_docker_cli_finds_the_merged_compose_plugin(tmp_path: Path) -> None:
    """A compose 'binary' that is a plugin-protocol script, built into an image, merged with
    systemd-sysext; the host's real docker CLI then runs it as `docker compose`."""
    up = Upstream(tmp_path / "upstream")
    url = "https://github.com/docker/compose/releases/download/v5.1.2/docker-compose-linux-x86_64"
    up.add(url, PLUGIN_SCRIPT)
    up.add(url + ".sha256", f"{hashlib.sha256(PLUGIN_SCRIPT).hexdigest()} *docker-compose-linux-x86_64\n".encode())
    mirror = MirrorServer(up.root)
    try:
        (tmp_path / "bakery").mkdir()
        project = Project(tmp_path / "bakery", mirror, {"docker_compose": {"5.1.2": {}}})
        project.doit("pack:docker_compose-5.1.2-x86-64")
    finally:
        mirror.close()
    root = sysext.make_root(tmp_path)
    (tmp_path / "home").mkdir()
    # In the private mount namespace the merged /usr/libexec replaces the host's for docker.
    done = sysext.run_merged(root, {"docker_compose": project.images / "docker_compose-5.1.2-x86-64.raw"},
                             f'mount --bind "$ROOT/usr/libexec" /usr/libexec && '
                             f'HOME={tmp_path / "home"} DOCKER_CONFIG={tmp_path / "home"} '
                             f'{shutil.which("docker")} compose up -d')
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "compose plugin ran: compose up -d"


# --- k3s ----------------------------------------------------------------------------------

def test_k3s_links_and_per_arch_assets(catalogue: Catalogue) -> None:
    version = newest(catalogue, "k3s")
    for arch, asset in (("x86-64", "k3s"), ("arm64", "k3s-arm64")):
        img = image(catalogue, "k3s", version, arch)
        entries = {e.path: e for e in read_image(img)}
        assert entries["usr/local/bin/k3s"].kind == "file"
        for tool in ("kubectl", "crictl", "ctr"):
            link = entries[f"usr/local/bin/{tool}"]
            assert (link.kind, link.target) == ("symlink", "k3s")
        assert read_file(img, "usr/local/bin/k3s")[18] == {"x86-64": 62, "arm64": 183}[arch]
        [source] = locked(catalogue)["k3s"][version][arch]["sources"]
        assert source["url"] == f"https://github.com/k3s-io/k3s/releases/download/v{version}/{asset}"
    # the links stay out of /usr/bin, where kubernetes, crictl and containerd ship theirs
    assert not any(e.path.startswith("usr/bin/") for e in read_image(img))


# --- HashiCorp: signed sums ----------------------------------------------------------------

def _hashicorp_project(tmp_path: Path, tamper: str | None) -> tuple[Project, MirrorServer, str]:
    key = make_gpg_key(tmp_path)
    try:
        signer = Signer(key.gnupghome, armored_public(key.gnupghome, key.fingerprint))
        up = Upstream(tmp_path / "upstream")
        version = "2.0.1"
        synthesize(CATALOGUE_RECIPES, "consul", [version], up, signer)
        base = f"https://releases.hashicorp.com/consul/{version}/consul_{version}_SHA256SUMS"
        if tamper == "signature":       # a signature by another key
            (tmp_path / "other").mkdir()
            other = make_gpg_key(tmp_path / "other")
            try:
                up.add(base + ".sig", Signer(other.gnupghome, "").sign(
                    (up.root / base.removeprefix("https://")).read_bytes(), armor=False))
            finally:
                stop_gpg_agent(other.gnupghome)
        elif tamper == "sums":          # the sums changed after signing
            path = up.root / base.removeprefix("https://")
            path.write_text(path.read_text().replace("linux_amd64.zip", "linux_amd64.zip\n" + "0" * 64 + "  x"))
        mirror = MirrorServer(up.root)
        (tmp_path / "bakery").mkdir()
        project = Project(tmp_path / "bakery", mirror, {"consul": {version: {}}})
        (project.root / "recipes/consul/hashicorp.asc").write_text(signer.armored_public)
        return project, mirror, version
    finally:
        stop_gpg_agent(key.gnupghome)


def test_hashicorp_zip_with_signed_sums_builds(catalogue: Catalogue) -> None:
    img = image(catalogue, "consul", "2.0.1")
    assert read_file(img, "usr/bin/consul")[:4] == b"\x7fELF"
    sums = "https://releases.hashicorp.com/consul/2.0.1/consul_2.0.1_SHA256SUMS"
    assert catalogue.requested(sums) and catalogue.requested(sums + ".sig")


@pytest.mark.parametrize("name", ["consul", "nomad", "vault"])
def test_shipped_hashicorp_key_is_the_one_the_recipe_documents(tmp_path: Path, name: str) -> None:
    key = CATALOGUE_RECIPES / name / "hashicorp.asc"
    shown = subprocess.run(["gpg", "--batch", "--with-colons", "--show-keys", str(key)],
                           env={**os.environ, "GNUPGHOME": str(tmp_path)}, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    fingerprints = [line.split(":")[9] for line in shown if line.startswith("fpr:")]
    assert fingerprints[0] == "C874011F0AB405110D02105534365D9472D7468F"
    assert "374EC75B485913604A831CC7C820C6D5CD27AB87" in fingerprints      # the signing subkey
    comment = (CATALOGUE_RECIPES / f"{name}.toml").read_text().replace(" ", "")
    assert fingerprints[0] in comment and "374EC75B485913604A831CC7C820C6D5CD27AB87" in comment


@pytest.mark.parametrize("tamper", ["signature", "sums"])
def test_hashicorp_tampered_signature_is_refused(tmp_path: Path, tamper: str) -> None:
    project, mirror, version = _hashicorp_project(tmp_path, tamper)
    try:
        listed = project.doit("list", check=False)
        assert "recipes/consul.toml" not in listed.stderr, listed.stderr
        run = project.doit(f"build:consul-{version}", check=False)
    finally:
        mirror.close()
    assert run.returncode != 0
    out = run.stdout + run.stderr
    assert "Traceback" not in out
    assert "signature" in out.lower(), out
    assert not list(project.images.glob("consul-*.raw"))
    with project.lock_path.open("rb") as f:
        pins = tomllib.load(f)["consul"][version]
    assert not any(s.get("sha256") for arch in pins.values() for s in arch.get("sources", [])), pins


def test_hashicorp_good_signature_builds_in_its_own_project(tmp_path: Path) -> None:
    """The control for the tampered cases: the same setup untampered builds."""
    project, mirror, version = _hashicorp_project(tmp_path, None)
    try:
        project.doit(f"build:consul-{version}")
    finally:
        mirror.close()
    assert {p.name for p in project.images.glob("consul-*.raw")} == \
        {f"consul-{version}-x86-64.raw", f"consul-{version}-arm64.raw"}


# --- ollama: .tgz before 0.14.0, .tar.zst from it -----------------------------------------

def test_ollama_archive_format_follows_the_version(catalogue: Catalogue) -> None:
    pins = locked(catalogue)["ollama"]
    for version, suffix in (("0.13.5", ".tgz"), ("0.21.2", ".tar.zst")):
        image(catalogue, "ollama", version)
        for arch in ("x86-64", "arm64"):
            [source] = pins[version][arch]["sources"]
            assert source["url"].endswith(suffix), (version, source["url"])
            assert catalogue.requested(source["url"])
        entries = {e.path for e in read_image(image(catalogue, "ollama", version))}
        assert "usr/bin/ollama" in entries and any(p.startswith("usr/lib/ollama/") for p in entries)


# --- merges with the real systemd-sysext ----------------------------------------------------

BASE_FILES = ("usr/bin/sh", "usr/bin/systemctl", "usr/lib/systemd/system/multi-user.target",
              "usr/lib/systemd/system/sockets.target", "usr/lib/tmpfiles.d/base.conf",
              "usr/share/doc/base/README")


def base_root(tmp_path: Path) -> Path:
    """A host root with the directories base OSes have and a few of their files."""
    root = sysext.make_root(tmp_path)
    listing = Path(__file__).resolve().parent.parent / "sysext_bakery/data/host-directories.txt"
    for line in listing.read_text().splitlines():
        if line and not line.startswith("#"):
            (root / line).mkdir(parents=True, exist_ok=True)
    for f in BASE_FILES:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text(f"base {f}\n")
    return root


def _files(entries) -> set[str]:
    return {e.path for e in entries if e.kind != "dir"}


MERGES = {
    "docker": ("docker.service", "docker.socket", "containerd.service"),
    "kubernetes": ("kubelet.service", "kubelet.service.d/10-kubeadm.conf"),
    "tailscale": ("tailscaled.service",),
    "consul": ("consul.service",),
}


@sysext.requires_sysext
@pytest.mark.parametrize("name", sorted(MERGES))
def test_merge_with_real_systemd_sysext(catalogue: Catalogue, tmp_path: Path, name: str) -> None:
    img = image(catalogue, name, newest(catalogue, name))
    entries = read_image(img)
    root = base_root(tmp_path)
    base = {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}
    # nothing the image ships as a file or link hides one of the base's
    assert not (_files(entries) & base), sorted(_files(entries) & base)
    script = ("cd \"$ROOT\" && find usr opt -mindepth 1 \\( -type f -o -type l \\) 2>/dev/null | sort; "
              "for f in " + " ".join(BASE_FILES) + "; do cat \"$ROOT/$f\"; done")
    done = sysext.run_merged(root, {name: img}, script)
    # systemd-sysext's own bookkeeping (usr/.systemd-sysext/) is not part of the image
    merged = {p for p in done.stdout.splitlines() if not p.startswith("usr/.systemd-sysext/")}
    for unit in MERGES[name]:
        assert f"{UNITS}/{unit}" in merged, f"{unit} not in the merged /usr"
    upheld = [p for p in merged if p.startswith(f"{UNITS}/") and ".target.d/10-" in p]
    assert upheld, "no Upholds= drop-in in the merged /usr"
    for f in BASE_FILES:
        assert f"base {f}" in merged, f"base file {f} is hidden after the merge"
    # what the merge added is exactly the image's files
    assert merged - base - {f"base {f}" for f in BASE_FILES} == _files(entries) - {""}
