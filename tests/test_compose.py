"""`bakery compose`: one host's extensions from a directory published by the real publisher,
as one Butane config whose Ignition twin the real ignition-validate accepts."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ignition import as_butane, assert_valid, ignition_validate
from sysext_bakery.build import sums
from sysext_bakery.cli import main
from sysext_bakery.errors import BakeryError
from sysext_bakery.publish import compose
from sysext_bakery.publish import directory as publish
from sysext_bakery.publish import provision
from sysext_bakery.publish import sign
from sysext_bakery.publish import sysupdate as release
from sysupdate import make_gpg_key, serve, stop_gpg_agent, write_provenance

REPO = Path(__file__).resolve().parent.parent
BASE = "https://sysexts.example.invalid/bakery/"
DOCKER = {"replaces": ["docker-flatcar", "containerd-flatcar"], "conflicts": ["containerd"]}
CONTAINERD = {"replaces": ["containerd-flatcar"], "conflicts": ["docker"]}
# (name, version, arch, stream, replaces/conflicts)
CATALOGUE = [
    ("docker", "27.3.1", "x86-64", "27", DOCKER),
    ("docker", "27.4.0", "x86-64", "27", DOCKER),
    ("docker", "27.4.0", "arm64", "27", DOCKER),
    ("docker", "28.0.1", "x86-64", "28", DOCKER),
    ("containerd", "1.7.20", "x86-64", "1.7", CONTAINERD),
    ("kubernetes", "v1.32.2", "x86-64", "v1.32", {}),
    ("kubernetes", "v1.33.0", "x86-64", "v1.33", {}),
    ("tailscale", "1.80.0", "x86-64", None, {}),
]


def publish_catalogue(work: Path, dest: Path, base: str, entries=CATALOGUE, signer=None) -> None:
    """Publish `entries` with the real publisher: image files (their bytes do not matter to
    compose) and the provenance records the pack step writes."""
    images, state = work / "images", work / "state"
    images.mkdir(parents=True, exist_ok=True)
    for name, version, arch, stream, facts in entries:
        raw = images / f"{name}-{version}-{arch}.raw"
        raw.write_bytes(f"{name} {version} {arch}\n".encode() * 64)
        write_provenance(state, name, version, arch, hashlib.sha256(raw.read_bytes()).hexdigest(),
                         raw.stat().st_size, stream, **facts)
    config = release.ReleaseConfig(base_url=base, signing_key=signer.key if signer else None)
    publish.publish_directory(publish.built_images(images, state), dest, config,
                              publish.load_templates(REPO / "release/templates"), signer, "0123abcd" * 5)


@pytest.fixture(scope="module")
def signed(tmp_path_factory) -> Path:
    """A signed published directory of CATALOGUE (Verify=yes transfers)."""
    tmp = tmp_path_factory.mktemp("signed")
    key = make_gpg_key(tmp)
    try:
        with sign.signer_from_env({"BAKERY_SIGNING_KEY": key.armored_secret}) as signer:
            publish_catalogue(tmp / "work", tmp / "published", BASE, signer=signer)
    finally:
        stop_gpg_agent(key.gnupghome)
    return tmp / "published"


@pytest.fixture(scope="module")
def unsigned(tmp_path_factory) -> Path:
    """An unsigned directory (Verify=false) with x86-64 images only."""
    tmp = tmp_path_factory.mktemp("unsigned")
    publish_catalogue(tmp / "work", tmp / "published", BASE,
                      [e for e in CATALOGUE if e[2] == "x86-64"])
    return tmp / "published"


def run_compose(tmp: Path, source: str, *exts: str, arch: str = "x86-64") -> tuple[str, str]:
    out = tmp / "out"
    assert main(["compose", *exts, "--from", source, "--arch", arch, "--out", str(out)]) == 0
    return (out / compose.BUTANE).read_text(), (out / compose.IGNITION).read_text()


def sha(data: bytes) -> str:
    return "sha256-" + hashlib.sha256(data).hexdigest()


def check_config(butane: str, ignition: str, tmp: Path) -> dict:
    """Valid for the real ignition-validate, the same config as the Butane, readable back."""
    assert_valid(ignition, tmp)
    assert as_butane(json.loads(ignition)) == yaml.safe_load(butane)
    assert provision.ignition_json(provision.parse_butane(butane, "composed.bu")) == ignition
    return json.loads(ignition)


def test_docker_kubernetes_tailscale_make_one_config(signed, tmp_path):
    butane, ignition = run_compose(tmp_path, str(signed), "docker-27", "kubernetes-v1.32", "tailscale")
    doc = check_config(butane, ignition, tmp_path)
    files = {f["path"]: f["contents"] for f in doc["storage"]["files"]}
    published = sums.parse((signed / "SHA256SUMS").read_text())

    for name, image in [("docker", "docker-27.4.0-x86-64.raw"),
                        ("kubernetes", "kubernetes-v1.32.2-x86-64.raw"),
                        ("tailscale", "tailscale-1.80.0-x86-64.raw")]:
        path = f"/opt/extensions/{name}/{image}"
        assert files[path] == {"source": BASE + image,
                               "verification": {"hash": "sha256-" + published[image]}}
    transfers = {p: c for p, c in files.items() if p.startswith("/etc/sysupdate.") and p != "/etc/sysupdate.d/noop.conf"}
    assert sorted(transfers) == ["/etc/sysupdate.docker.d/docker-27.conf",
                                 "/etc/sysupdate.kubernetes.d/kubernetes-v1.32.conf",
                                 "/etc/sysupdate.tailscale.d/tailscale.conf"]
    for path, contents in transfers.items():
        conf = path.rsplit("/", 1)[1]
        assert contents == {"source": BASE + conf,
                            "verification": {"hash": sha((signed / conf).read_bytes())}}
    assert "MatchPattern=docker-27.@v-%a.raw" in (signed / "docker-27.conf").read_text()

    paths = [f["path"] for f in doc["storage"]["files"]]
    assert paths.count("/etc/sysupdate.d/noop.conf") == 1
    assert paths.count("/etc/systemd/import-pubring.gpg") == 1
    assert files["/etc/systemd/import-pubring.gpg"]["verification"]["hash"] == sha(
        (signed / "bakery-signing-key.gpg").read_bytes())
    assert files["/etc/sysupdate.d/noop.conf"]["verification"]["hash"] == sha(
        (signed / "noop.conf").read_bytes())

    links = {x["path"]: x for x in doc["storage"]["links"]}
    for builtin in ("docker-flatcar", "containerd-flatcar"):
        assert links[f"/etc/extensions/{builtin}.raw"] == {
            "path": f"/etc/extensions/{builtin}.raw", "target": "/dev/null", "hard": False,
            "overwrite": True}
    assert links["/etc/extensions/kubernetes.raw"]["target"] == \
        "/opt/extensions/kubernetes/kubernetes-v1.32.2-x86-64.raw"
    assert len(links) == 5

    units = {u["name"]: u for u in doc["systemd"]["units"]}
    assert [u["name"] for u in doc["systemd"]["units"]].count("systemd-sysupdate.timer") == 1
    assert units["systemd-sysupdate.timer"] == {"name": "systemd-sysupdate.timer", "enabled": True}
    dropins = {d["name"]: d["contents"] for d in units["systemd-sysupdate.service"]["dropins"]}
    assert sorted(dropins) == ["docker.conf", "kubernetes.conf", compose.REFRESH_DROPIN,
                               "tailscale.conf"]
    assert "systemd-sysupdate -C kubernetes update" in dropins["kubernetes.conf"]
    assert units["systemd-sysext.service"]["dropins"] == [
        {"name": compose.REFRESH_DROPIN, "contents": compose.RECORD_MERGED}]
    assert butane.startswith("# Composed by `bakery compose docker-27 kubernetes-v1.32 tailscale "
                             "--arch x86-64` from ")
    assert "docker-27.4.0-x86-64.raw (follows docker-27.conf)" in butane


def test_arm64_and_unsigned(signed, unsigned, tmp_path):
    _, ignition = run_compose(tmp_path, str(signed), "docker", arch="arm64")
    doc = json.loads(ignition)
    assert_valid(ignition, tmp_path)
    paths = {f["path"] for f in doc["storage"]["files"]}
    assert "/opt/extensions/docker/docker-27.4.0-arm64.raw" in paths
    assert "/etc/sysupdate.docker.d/docker.conf" in paths       # the name: every version

    butane, ignition = run_compose(tmp_path, str(unsigned), "docker-28", "tailscale")
    doc = check_config(butane, ignition, tmp_path)
    paths = {f["path"] for f in doc["storage"]["files"]}
    assert "/etc/systemd/import-pubring.gpg" not in paths       # Verify=false: no keyring
    assert "Verify=false" in (unsigned / "docker-28.conf").read_text()
    assert "/opt/extensions/docker/docker-28.0.1-x86-64.raw" in paths


def test_an_exact_version_is_pinned(signed, tmp_path):
    butane, ignition = run_compose(tmp_path, str(signed), "docker-27.3.1")
    doc = check_config(butane, ignition, tmp_path)
    assert [f["path"] for f in doc["storage"]["files"]] == [
        "/opt/extensions/docker/docker-27.3.1-x86-64.raw"]
    assert "systemd" not in doc                                  # no timer, no reboot signal
    assert {x["path"] for x in doc["storage"]["links"]} == {
        "/etc/extensions/docker.raw", "/etc/extensions/docker-flatcar.raw",
        "/etc/extensions/containerd-flatcar.raw"}
    assert "pinned: no transfer" in butane


@pytest.mark.parametrize("exts, arch, says", [
    (["docker", "containerd"], "x86-64",
     "docker and containerd conflict: docker's recipe declares it"),
    (["containerd-1.7", "tailscale", "docker-27.4.0"], "x86-64",
     "containerd-1.7 and docker-27.4.0 conflict"),
    (["nginx"], "x86-64", "nginx: no extension of that name is published in "),
    (["docker-26"], "x86-64", "docker-26: docker has no published version or stream '26'"),
    (["kubernetes-v1.32.9"], "x86-64", "no published version or stream 'v1.32.9'"),
    (["docker", "docker-27"], "x86-64", r"docker is asked for twice \(docker and docker-27\)"),
    (["tailscale"], "arm64", "tailscale: tailscale is not published for arm64"),
    (["docker-28"], "arm64", "docker-28: not published for arm64"),
    (["docker-27.3.1"], "arm64", "docker-27.3.1: not published for arm64"),
])
def test_refusals(signed, tmp_path, capsys, exts, arch, says):
    assert main(["compose", *exts, "--from", str(signed), "--arch", arch,
                 "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert re.search("bakery: error: .*" + says, err), err
    assert not (tmp_path / "out").exists()


def test_an_arch_the_directory_does_not_have(unsigned, tmp_path, capsys):
    assert main(["compose", "tailscale", "--from", str(unsigned), "--arch", "arm64",
                 "--out", str(tmp_path)]) == 1
    assert "nothing is published for arm64" in capsys.readouterr().err


def test_only_what_sha256sums_lists_is_published(signed, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(signed, copy)
    manifest = sums.parse((copy / "SHA256SUMS").read_text())
    del manifest["tailscale-1.80.0-x86-64.raw"]           # a publish that stopped half way
    (copy / "SHA256SUMS").write_text(sums.render(manifest))
    read = compose.reader(str(copy))
    images = compose.load_published(read, str(copy))
    with pytest.raises(BakeryError, match="tailscale: no extension of that name is published"):
        compose.choose(["tailscale"], images, "x86-64", str(copy))
    # ... and the signature over the changed SHA256SUMS no longer verifies
    chosen = compose.choose(["docker"], images, "x86-64", str(copy))
    with pytest.raises(BakeryError, match="SHA256SUMS.gpg does not verify SHA256SUMS"):
        compose.compose(chosen, read, str(copy))
    manifest["docker-27.4.0-x86-64.raw"] = "00" * 32
    (copy / "SHA256SUMS").write_text(sums.render(manifest))
    with pytest.raises(BakeryError, match="inconsistent"):
        compose.load_published(read, str(copy))


def test_from_a_url(tmp_path, capsys):
    dest = tmp_path / "published"
    dest.mkdir()
    with serve(dest) as url:
        publish_catalogue(tmp_path / "work", dest, url, [e for e in CATALOGUE if e[0] != "containerd"])
        butane, ignition = run_compose(tmp_path, url, "docker-27", "kubernetes-v1.32", "tailscale")
        doc = check_config(butane, ignition, tmp_path)
        sources = [f["contents"]["source"] for f in doc["storage"]["files"]]
        assert len(sources) == 7 and all(s.startswith(url) for s in sources)   # unsigned: no key
        assert "note:" not in capsys.readouterr().err
        assert main(["compose", "docker", "--from", url + "nothing/", "--out", str(tmp_path)]) == 1
        assert re.search(r"nothing/index.json: HTTP 404", capsys.readouterr().err)
    # published for BASE but read from elsewhere: hosts are pointed at BASE, and told so
    moved = tmp_path / "moved"
    publish_catalogue(tmp_path / "work2", moved, BASE, CATALOGUE[-1:])
    with serve(moved) as url:
        _, ignition = run_compose(tmp_path, url, "tailscale")
        assert json.loads(ignition)["storage"]["files"][0]["contents"]["source"].startswith(BASE)
        assert f"was published for {BASE}" in capsys.readouterr().err


def test_a_broken_composed_config_fails_ignition_validate(signed, tmp_path):
    _, ignition = run_compose(tmp_path, str(signed), "docker-27", "tailscale")
    doc = json.loads(ignition)
    noop = next(f for f in doc["storage"]["files"] if f["path"] == "/etc/sysupdate.d/noop.conf")
    doc["storage"]["files"].append(noop)          # what copying two snippets together gives
    proc = ignition_validate(json.dumps(doc), tmp_path)
    assert proc.returncode != 0 and "duplicate entry" in proc.stdout + proc.stderr


def _shell(dropin: str) -> str:
    line = next(x for x in dropin.splitlines() if x.startswith("ExecStartPost="))
    return re.fullmatch(r"ExecStartPost=/bin/sh -c '(.*)'", line)[1]


def test_reboot_signal_follows_what_was_merged(tmp_path):
    """The two drop-in commands, run by a real sh on a directory standing in for the host."""
    ext, run_dir = tmp_path / "etc/extensions", tmp_path / "run"
    ext.mkdir(parents=True)
    run_dir.mkdir()
    (ext / "docker.raw").symlink_to("/opt/extensions/docker/docker-27.4.0-x86-64.raw")

    def sh(dropin: str) -> None:
        script = _shell(dropin).replace("/etc/extensions/", f"{ext}/").replace("/run/", f"{run_dir}/")
        subprocess.run(["sh", "-c", script], check=True)

    sentinel = run_dir / "reboot-required"
    sh(compose.SIGNAL_REBOOT)            # nothing recorded yet (sysext did not run): no signal
    assert not sentinel.exists()
    sh(compose.RECORD_MERGED)            # systemd-sysext merged
    sh(compose.SIGNAL_REBOOT)            # sysupdate found nothing new
    assert not sentinel.exists()
    (ext / "docker.raw").unlink()
    (ext / "docker.raw").symlink_to("/opt/extensions/docker/docker-27.5.0-x86-64.raw")
    sh(compose.SIGNAL_REBOOT)            # sysupdate moved the link
    assert sentinel.exists()


def test_the_published_directory_is_read_within_the_index_limit(tmp_path):
    """compose reads index.json and SHA256SUMS under the bound every reader of a published
    index uses (sysupdate.MAX_INDEX), from a URL as from a directory."""
    from sysext_bakery import http
    dest = tmp_path / "published"
    dest.mkdir()
    with (dest / "index.json").open("wb") as f:
        f.truncate(http.MAX_BODY + 1)              # sparse: past an API answer's bound
    with serve(dest) as url:
        assert len(compose.reader(url)("index.json", True)) == http.MAX_BODY + 1
    with (dest / "SHA256SUMS").open("wb") as f:
        f.truncate(release.MAX_INDEX + 1)
    with pytest.raises(BakeryError) as err:
        compose.reader(str(dest))("SHA256SUMS", True)
    assert err.value.message.startswith(f"{dest / 'SHA256SUMS'}: larger than "), err.value.message
    with pytest.raises(BakeryError, match="missing"):
        compose.reader(str(dest))("noop.conf", True)
    assert compose.reader(str(dest))("SHA256SUMS.gpg", False) is None
