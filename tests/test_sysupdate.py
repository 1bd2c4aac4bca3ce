"""The published directory, consumed by the real systemd-sysupdate (254 from bookworm-backports
on Debian 12) over a loopback HTTP server, the way a Flatcar host consumes it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sysext_bakery.publish import directory as publish
from sysext_bakery.publish import sign
from sysext_bakery.publish import sysupdate as release
from sysext import make_root, requires_sysext, run_merged
from sysupdate import Sysupdate, gpg_key, make_image, serve, sysupdate  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.root


def publish_dir(work: Path, dest: Path, base_url: str, signer=None, *,
                fingerprint: str | None = None, next_key: str | None = None,
                rotate_key: bool = False) -> publish.PublishReport:
    """Publish; the configured fingerprint is the signer's own unless `fingerprint` says."""
    templates = publish.load_templates(REPO / "release/templates")
    config = release.ReleaseConfig(base_url=base_url,
                                   signing_key=fingerprint or (signer.key if signer else None),
                                   next_signing_key=next_key)
    built = publish.built_images(work / "images", work / "state")
    return publish.publish_directory(built, dest, config, templates, signer, "test-revision",
                                     rotate_key=rotate_key)


def host(tmp: Path, name: str, *confs: Path) -> tuple[Path, Path]:
    """A host root as the Butane snippet leaves it, and a definitions dir holding `confs`."""
    root = tmp / "root"
    (root / "opt/extensions" / name).mkdir(parents=True, exist_ok=True)
    (root / "etc/extensions").mkdir(parents=True, exist_ok=True)
    defs = tmp / "defs"
    shutil.rmtree(defs, ignore_errors=True)
    defs.mkdir()
    for conf in confs:
        shutil.copyfile(conf, defs / conf.name)
    return root, defs


def current(root: Path, name: str) -> str:
    link = root / "etc/extensions" / f"{name}.raw"
    assert link.is_symlink(), f"{link} is not a symlink"
    target = (link.parent / link.readlink()).resolve()
    assert target.is_file() and target.parent == (root / "opt/extensions" / name).resolve()
    return target.name


def installed(root: Path, name: str) -> list[str]:
    return sorted(p.name for p in (root / "opt/extensions" / name).glob("*.raw"))


def update(su: Sysupdate, defs: Path, root: Path, keyring: Path | None = None) -> None:
    proc = su.run(defs, root, "update", keyring=keyring)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_update_installs_newest_then_upgrades_and_prunes(tmp_path, sysupdate):
    dest = tmp_path / "pub"
    dest.mkdir()
    with serve(dest) as url:
        make_image(tmp_path, "hello", "1.0.0")
        publish_dir(tmp_path, dest, url)
        root, defs = host(tmp_path, "hello", dest / "hello.conf")
        update(sysupdate, defs, root)
        assert current(root, "hello") == "hello-1.0.0-x86-64.raw"

        make_image(tmp_path, "hello", "1.1.0")
        publish_dir(tmp_path, dest, url)
        update(sysupdate, defs, root)
        assert current(root, "hello") == "hello-1.1.0-x86-64.raw"
        assert installed(root, "hello") == ["hello-1.0.0-x86-64.raw", "hello-1.1.0-x86-64.raw"]

        # InstancesMax=3: installing a 4th version removes the oldest
        for version in ("1.2.0", "1.10.0"):
            make_image(tmp_path, "hello", version)
            publish_dir(tmp_path, dest, url)
            update(sysupdate, defs, root)
        assert current(root, "hello") == "hello-1.10.0-x86-64.raw"
        assert installed(root, "hello") == ["hello-1.1.0-x86-64.raw", "hello-1.10.0-x86-64.raw",
                                            "hello-1.2.0-x86-64.raw"]


def test_signed_release_verifies_and_tampering_is_refused(tmp_path, sysupdate, gpg_key):
    key = gpg_key
    keyring = tmp_path / "pubring.gpg"
    dest = tmp_path / "pub"
    dest.mkdir()
    with serve(dest) as url:
        make_image(tmp_path, "hello", "1.0.0")
        with sign.signer_from_env({"BAKERY_SIGNING_KEY": key.armored_secret}) as signer:
            publish_dir(tmp_path, dest, url, signer)
        assert "Verify=yes" in (dest / "hello.conf").read_text()
        keyring.write_bytes((dest / "bakery-signing-key.gpg").read_bytes())

        root, defs = host(tmp_path / "good", "hello", dest / "hello.conf")
        update(sysupdate, defs, root, keyring=keyring)
        assert current(root, "hello") == "hello-1.0.0-x86-64.raw"

        manifest = bytearray((dest / "SHA256SUMS").read_bytes())
        manifest[0] = ord("0") if manifest[0] != ord("0") else ord("1")
        (dest / "SHA256SUMS").write_bytes(bytes(manifest))
        root, defs = host(tmp_path / "bad", "hello", dest / "hello.conf")
        proc = sysupdate.run(defs, root, "update", keyring=keyring)
        assert proc.returncode != 0
        assert "Signature verification failed" in proc.stdout + proc.stderr
        assert installed(root, "hello") == []
        assert not (root / "etc/extensions/hello.raw").exists()


def test_stream_conf_takes_patch_updates_only(tmp_path, sysupdate):
    dest = tmp_path / "pub"
    dest.mkdir()
    with serve(dest) as url:
        make_image(tmp_path, "hello", "1.0.0", stream="1")
        publish_dir(tmp_path, dest, url)
        root, defs = host(tmp_path, "hello", dest / "hello-1.conf")
        update(sysupdate, defs, root)
        assert current(root, "hello") == "hello-1.0.0-x86-64.raw"

        make_image(tmp_path, "hello", "2.0.0", stream="2")
        publish_dir(tmp_path, dest, url)
        update(sysupdate, defs, root)
        assert current(root, "hello") == "hello-1.0.0-x86-64.raw"

        make_image(tmp_path, "hello", "1.0.1", stream="1")
        publish_dir(tmp_path, dest, url)
        update(sysupdate, defs, root)
        assert current(root, "hello") == "hello-1.0.1-x86-64.raw"
        assert "hello-2.0.0-x86-64.raw" not in installed(root, "hello")


def test_noop_conf_lets_a_plain_update_succeed(tmp_path, sysupdate):
    dest = tmp_path / "pub"
    make_image(tmp_path, "hello", "1.0.0")
    publish_dir(tmp_path, dest, "http://127.0.0.1:9/")
    empty = tmp_path / "empty"
    empty.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    # the failure noop.conf works around
    assert sysupdate.run(empty, root, "update").returncode != 0
    _, defs = host(tmp_path, "hello", dest / "noop.conf")
    update(sysupdate, defs, root)


@requires_sysext
def test_installed_image_merges_with_systemd_sysext(tmp_path, sysupdate):
    dest = tmp_path / "pub"
    dest.mkdir()
    with serve(dest) as url:
        make_image(tmp_path, "hello", "1.2.3")
        publish_dir(tmp_path, dest, url)
        root, defs = host(tmp_path / "host", "hello", dest / "hello.conf")
        update(sysupdate, defs, root)
    installed_image = (root / "etc/extensions/hello.raw").resolve()
    sysext_root = make_root(tmp_path / "sysext")
    done = run_merged(sysext_root, {"hello": installed_image}, '"$ROOT/usr/bin/hello"')
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello 1.2.3"


def test_a_percent_encoded_base_url_survives_systemds_specifiers(tmp_path, sysupdate):
    """`my%20dir` would be read as the specifier `%2` by sysupdate's unit-file parser: the
    published transfer file must say `my%%20dir`, and the real sysupdate then finds it."""
    served = tmp_path / "srv"
    dest = served / "my dir"
    dest.mkdir(parents=True)
    with serve(served) as url:
        make_image(tmp_path, "hello", "1.0.0")
        base = release.parse_config(f'base_url = "{url}my%20dir/"', "release.toml").base_url
        publish_dir(tmp_path, dest, base)
        assert f"Path={url}my%%20dir/\n" in (dest / "hello.conf").read_text()
        root, defs = host(tmp_path, "hello", dest / "hello.conf")
        update(sysupdate, defs, root)
        assert current(root, "hello") == "hello-1.0.0-x86-64.raw"
