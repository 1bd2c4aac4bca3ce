"""Provisioning configs: the Butane and Ignition forms of one model agree, every Ignition
config the bakery publishes passes the real ignition-validate, and broken ones do not."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from ignition import as_butane, assert_valid, decode_data_url, ignition_validate
from sysext_bakery.errors import BakeryError
from sysext_bakery.publish import provision as p
from sysext_bakery.publish import sysupdate as release
from sysext_bakery.torcx.convert import Built, butane as torcx_butane

REPO = Path(__file__).resolve().parent.parent
BASE = "https://sysexts.example.invalid/bakery/"
SHA = "ab" * 32

RICH = p.Config(
    directories=(p.Directory("/opt/extensions/tool", mode=0o750),),
    files=(p.File("/etc/tool/tool.conf", inline="key = 'value'\n[section]\nü → ✓\n",
                  mode=0o600, overwrite=True),
           p.File("/etc/tool/empty"),
           p.File("/etc/tool/binaryish", inline="\x01\x02\x03\xff" * 8),
           p.File("/opt/extensions/tool/tool-1.0-x86-64.raw", source=BASE + "tool-1.0-x86-64.raw",
                  hash="sha256-" + SHA, mode=0o644),
           p.File("/etc/tool/big", source="https://example.invalid/big", hash="sha512-" + "cd" * 64)),
    links=(p.Link("/etc/extensions/tool.raw", "/opt/extensions/tool/tool-1.0-x86-64.raw"),
           p.Link("/etc/extensions/docker-flatcar.raw", "/dev/null", overwrite=True)),
    units=(p.Unit("tool.service", enabled=True,
                  contents="[Unit]\nDescription=tool\n[Service]\nExecStart=/usr/bin/tool\n"
                           "[Install]\nWantedBy=multi-user.target\n"),
           p.Unit("systemd-sysupdate.service",
                  dropins=(p.Dropin("tool.conf", "[Service]\nExecStartPre=/bin/true\n"),))),
    users=(p.User("core", groups=("docker",), ssh_authorized_keys=("ssh-ed25519 AAAAC3Nz me@host",)),
           p.User("tool", uid=1234)),
    groups=(p.Group("docker", gid=233),))


def agree(butane_text: str, ignition_text: str) -> None:
    assert as_butane(json.loads(ignition_text)) == yaml.safe_load(butane_text)


@pytest.mark.parametrize("text, url", [
    ("hello world\n", "data:,hello%20world%0A"),
    ("a/b?c#d%e", "data:,a%2Fb%3Fc%23d%25e"),
    ("-_.!~*'()", "data:,-_.!~*'()"),          # RFC 2396 unreserved: kept as they are
    ("", "data:,"),
    ("\x01\x02\x03", "data:,%01%02%03"),          # shorter than ;base64,AQID
    ("\x00" * 8, "data:;base64,AAAAAAAAAAA="),     # base64 is shorter: Butane picks it
])
def test_inline_contents_become_butane_style_data_urls(text, url):
    assert p.data_url(text.encode()) == url
    assert decode_data_url(url) == text.encode()


def test_rich_config_is_valid_ignition_and_agrees_with_butane(tmp_path):
    butane, ignition = p.butane_yaml(RICH, "one\ntwo"), p.ignition_json(RICH)
    assert butane.startswith("# one\n# two\nvariant: flatcar\nversion: 1.0.0\n")
    assert "mode: 0644" in butane and "mode: 0750" in butane   # octal, as Butane's docs write it
    assert "inline: |" in butane                              # multi-line text stays readable
    assert json.loads(ignition)["storage"]["files"][0]["mode"] == 0o600
    assert_valid(ignition, tmp_path)
    agree(butane, ignition)
    assert p.parse_butane(butane, "rich.bu") == RICH


def release_files(public_key: bytes | None) -> dict[str, str]:
    images = [release.PublishedImage(name, version, arch, hashlib.sha256(f"{name}{version}{arch}"
                                     .encode()).hexdigest(), 10, stream)
              for name, version, arch, stream in [
                  ("docker", "24.0.9", "x86-64", "24"), ("docker", "24.0.10", "x86-64", "24"),
                  ("docker", "24.0.10", "arm64", "24"), ("wasmtime", "20.0.0", "x86-64", None)]]
    templates = {t: (REPO / "release/templates" / t).read_text() for t in ("transfer.conf", "noop.conf")}
    return release.render_release(images, release.ReleaseConfig(BASE), templates, public_key).files


@pytest.mark.parametrize("public_key", [None, b"an armored key"], ids=["unsigned", "signed"])
def test_release_snippets_have_valid_ignition_twins(tmp_path, public_key):
    files = release_files(public_key)
    snippets = sorted(n for n in files if n.endswith(".butane.yaml"))
    assert snippets == ["docker-arm64.butane.yaml", "docker.butane.yaml", "wasmtime.butane.yaml"]
    for name in snippets:
        ign = name.removesuffix(".butane.yaml") + ".ign"
        assert_valid(files[ign], tmp_path)
        agree(files[name], files[ign])
        config = json.loads(files[ign])
        paths = {f["path"]: f for f in config["storage"]["files"]}
        assert ("/etc/systemd/import-pubring.gpg" in paths) == (public_key is not None)
        for f in paths.values():   # every download published next to it, pinned
            source = f["contents"]["source"]
            assert source.startswith(BASE)
            published = files.get(source[len(BASE):])
            if published is not None:
                assert f["contents"]["verification"]["hash"] == "sha256-" + hashlib.sha256(
                    published.encode()).hexdigest()
    docker = json.loads(files["docker.ign"])
    assert docker["storage"]["directories"] == [{"path": "/opt/extensions/docker"}]
    assert docker["storage"]["links"] == [{"path": "/etc/extensions/docker.raw", "hard": False,
                                           "target": "/opt/extensions/docker/docker-24.0.10-x86-64.raw"}]
    units = {u["name"]: u for u in docker["systemd"]["units"]}
    assert units["systemd-sysupdate.timer"] == {"name": "systemd-sysupdate.timer", "enabled": True}
    assert "systemd-sysupdate -C docker update" in units["systemd-sysupdate.service"]["dropins"][0]["contents"]


def test_snippets_of_several_images_merge_into_one_valid_config(tmp_path):
    files = release_files(b"key")
    parts = [p.parse_butane(files[n], n) for n in ("docker.butane.yaml", "wasmtime.butane.yaml")]
    merged = p.merge(parts)
    paths = [f.path for f in merged.files]
    assert paths.count("/etc/sysupdate.d/noop.conf") == 1 and len(paths) == len(set(paths))
    [service] = [u for u in merged.units if u.name == "systemd-sysupdate.service"]
    assert [d.name for d in service.dropins] == ["docker.conf", "wasmtime.conf"]
    assert_valid(p.ignition_json(merged), tmp_path)
    # side by side without the merge, the shared noop.conf is what Ignition refuses
    doc = json.loads(p.ignition_json(parts[0]))
    doc["storage"]["files"] += json.loads(p.ignition_json(parts[1]))["storage"]["files"]
    proc = ignition_validate(json.dumps(doc), tmp_path)
    assert proc.returncode != 0 and "duplicate entry" in proc.stdout + proc.stderr
    with pytest.raises(BakeryError, match="appears twice"):
        p.ignition_json(p.Config(files=parts[0].files + parts[1].files))
    other = p.Config(files=(p.File("/etc/sysupdate.d/noop.conf", inline="[Transfer]\n"),))
    with pytest.raises(BakeryError, match="noop.conf is given two different ways"):
        p.merge([parts[0], other])


def test_torcx_butane_has_a_valid_ignition_form(tmp_path):
    built = [Built("docker", "20.10.24", Path("/out/docker-20.10.24-x86-64.raw"), SHA,
                   ("docker-flatcar", "containerd-flatcar")),
             Built("tool", "1.0", Path("/out/tool-1.0-x86-64.raw"), "cd" * 32, ())]
    text = torcx_butane(built, "https://nodes.example/sysext")
    assert text.startswith("# Replaces a torcx profile: docker 20.10.24, tool 1.0.\n")
    ignition = p.ignition_json(p.parse_butane(text, "docker.bu"))
    assert_valid(ignition, tmp_path)
    agree(text, ignition)
    files = {f["path"]: f for f in json.loads(ignition)["storage"]["files"]}
    assert files["/etc/torcx/next-profile"]["contents"]["source"] == "data:,vendor"


@pytest.mark.parametrize("break_it, says", [
    (lambda d: d["storage"]["files"][0].update(path="etc/tool/tool.conf"), "path not absolute"),
    (lambda d: d["storage"]["files"][3]["contents"]["verification"].update(hash="sha256-abc"),
     "incorrect size for hash sum"),
    (lambda d: d["storage"]["files"][0]["contents"].update(source="data:,two words"),
     "invalid data character"),
    (lambda d: d["storage"]["links"].append({"path": "/etc/tool/empty", "target": "/x"}),
     "duplicate entry"),
    (lambda d: d["systemd"]["units"][0].update(name="tool.daemon"), "invalid systemd unit"),
])
def test_ignition_validate_refuses_broken_configs(tmp_path, break_it, says):
    doc = json.loads(p.ignition_json(RICH))
    break_it(doc)
    proc = ignition_validate(json.dumps(doc), tmp_path)
    assert proc.returncode != 0 and says in proc.stdout + proc.stderr, proc.stdout + proc.stderr


@pytest.mark.parametrize("config, says", [
    (p.Config(files=(p.File("etc/x"),)), "path must be absolute"),
    (p.Config(files=(p.File("/etc/../x"),)), "path must be absolute"),
    (p.Config(files=(p.File("/x", inline="a", source=BASE + "x", hash="sha256-" + SHA),)),
     "both inline contents and a source"),
    (p.Config(files=(p.File("/x", source=BASE + "x"),)), "without a verification hash"),
    (p.Config(files=(p.File("/x", source=BASE + "x", hash="md5-abc"),)), "not sha256-"),
    (p.Config(files=(p.File("/x", source="ftp://h/x", hash="sha256-" + SHA),)), "not a URL"),
    (p.Config(files=(p.File("/x", mode=0o10000),)), "not a permission mode"),
    (p.Config(directories=(p.Directory("/x"),), links=(p.Link("/x", "/y"),)), "appears twice"),
    (p.Config(units=(p.Unit("tool"),)), "not a unit file name"),
    (p.Config(units=(p.Unit("a.service", dropins=(p.Dropin("x", ""),)),)), "drop-in names"),
    (p.Config(users=(p.User("core"), p.User("core"))), "passwd.users"),
])
def test_the_model_refuses_what_ignition_would(config, says):
    with pytest.raises(BakeryError, match=says):
        p.ignition_json(config)
    with pytest.raises(BakeryError, match=says):
        p.butane_yaml(config)


@pytest.mark.parametrize("text, says", [
    ("variant: fcos\nversion: 1.5.0\n", "only flatcar 1.0.0"),
    ("variant: flatcar\nversion: 1.0.0\nkernel_arguments: {}\n", "kernel_arguments"),
    ("variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n  - path: /x\n    user: {name: a}\n",
     r"storage.files\[0\]: key\(s\) user"),
    ("variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n  - path: /x\n    mode: '0644'\n",
     r"storage.files\[0\].mode: expected int"),
    ("variant: flatcar\nversion: 1.0.0\nstorage:\n  links:\n  - path: /x\n", "missing target"),
    ("variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n  - path: x\n", "path must be absolute"),
    ("variant: [\n", "not valid YAML"),
])
def test_reading_butane_back_refuses_what_the_model_cannot_hold(text, says):
    with pytest.raises(BakeryError, match=says) as e:
        p.parse_butane(text, "in.bu")
    assert str(e.value.args[0]).startswith("in.bu: ")


def test_snippets_mask_the_builtin_sysexts_an_image_replaces(tmp_path):
    def published(name: str, replaces: tuple[str, ...]) -> release.PublishedImage:
        return release.PublishedImage(name, "1.0", "x86-64", hashlib.sha256(name.encode()).hexdigest(),
                                      10, replaces=replaces)
    templates = {t: (REPO / "release/templates" / t).read_text() for t in ("transfer.conf", "noop.conf")}
    files = release.render_release(
        [published("docker", ("docker-flatcar", "containerd-flatcar")),
         published("containerd", ("containerd-flatcar",)), published("wasmtime", ())],
        release.ReleaseConfig(BASE), templates, None).files
    mask = {"hard": False, "target": "/dev/null", "overwrite": True}
    docker = json.loads(files["docker.ign"])["storage"]["links"]
    assert docker[1:] == [{"path": "/etc/extensions/docker-flatcar.raw", **mask},
                          {"path": "/etc/extensions/containerd-flatcar.raw", **mask}]
    assert_valid(files["docker.ign"], tmp_path)
    agree(files["docker.butane.yaml"], files["docker.ign"])
    assert [link["path"] for link in json.loads(files["wasmtime.ign"])["storage"]["links"]] == [
        "/etc/extensions/wasmtime.raw"]
    # docker and containerd both mask containerd-flatcar: merged, the mask is there once
    merged = p.merge(p.parse_butane(files[n], n) for n in ("docker.butane.yaml", "containerd.butane.yaml"))
    assert sorted(link.path for link in merged.links) == [
        "/etc/extensions/containerd-flatcar.raw", "/etc/extensions/containerd.raw",
        "/etc/extensions/docker-flatcar.raw", "/etc/extensions/docker.raw"]
    assert_valid(p.ignition_json(merged), tmp_path)
